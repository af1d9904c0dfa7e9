"""User-facing errors: the CLI prints these as one line and exits non-zero."""


class StyleforgeError(Exception):
    """A problem with the user's input or environment, with a message that says what to do.

    Library code raises it for anything a user can fix (a missing file, a bad option, no
    weights offline). The CLI prints ``error: <message>`` and exits with status 2; any
    other exception is a bug and keeps its traceback.
    """
