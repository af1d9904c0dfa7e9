"""User-facing errors: the CLI prints these as one line and exits non-zero."""


class StyleforgeError(Exception):
    """A problem with the user's input or environment, with a message that says what to do.

    Library code raises it for anything a user can fix (a missing file, a bad option, no
    weights offline). The CLI prints ``error: <message>`` and exits with status 2; any
    other exception is a bug and keeps its traceback.
    """

    exit_code: int = 2  # the CLI's exit status (an interrupted stylize sets 130 or 143)
    stopped_by: str | None = None  # "interrupted" or "stopped by SIGTERM" where Ctrl-C or SIGTERM stopped a run


def first_line(exc: BaseException, limit: int = 120) -> str:
    """The gist of an exception's message for a one-line error: its first non-empty line,
    or the line after it where the first only introduces a list (``...:``, as torch's
    ``load_state_dict`` errors do); the exception's type name if the message is empty."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    line = lines[1] if len(lines) > 1 and lines[0].endswith(":") else lines[0]
    return line if len(line) <= limit else line[:limit].rsplit(" ", 1)[0] + " ..."  # cut between words


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation that failed (a model or input too large for memory), not a bug."""
    text = str(exc)
    return (isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"
            or "can't allocate memory" in text or "DefaultCPUAllocator" in text)


def too_large(exc: BaseException, what: str, hint: str) -> StyleforgeError:
    """The one-line error for an allocation that failed while building or running ``what``."""
    return StyleforgeError(f"{what} does not fit in memory ({first_line(exc, 80)}): {hint}")
