"""Every option of every command, as the Markdown table of docs/OPTIONS.md.

``python -m styleforge.cli.optiontable`` prints it; ``--write docs/OPTIONS.md`` replaces the table
between the file's markers. A test fails when the file's copy differs from the CLI.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import click

from ..runtime.guard import number_text

_UNSET = getattr(click.core, "UNSET", None)  # Click 8.3+: an option without a default
START, END = "<!-- every-option:start -->", "<!-- every-option:end -->"


@dataclass(frozen=True)
class Row:
    command: str    # "fast train"
    option: str     # "-o/--output"
    kind: str       # type and unit: "integer (PX)", "choice: max|avg", "flag", "path (FILE)"
    default: str
    meaning: str    # the help text
    name: str       # the long spelling, the key the consistency test groups on
    old: str = ""   # the new spelling, for a hidden old spelling


def commands(group: click.Group, ctx: click.Context | None = None, path: str = ""):
    """(command path, command) for every command below ``group``, loading lazy ones."""
    ctx = ctx or click.Context(group, info_name="styleforge")
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        full = f"{path} {name}".strip()
        if isinstance(cmd, click.Group):
            yield from commands(cmd, click.Context(cmd, info_name=name, parent=ctx), full)
        else:
            yield full, cmd


def rows(group: click.Group) -> list[Row]:
    out = []
    for path, cmd in commands(group):
        for p in cmd.params:
            if isinstance(p, click.Option) and "--help" not in p.opts:
                out.append(_row(path, p))
    return out


def _row(command: str, p: click.Option) -> Row:
    long = next((o for o in p.opts if o.startswith("--")), p.opts[0])
    spelling = "/".join(p.opts + p.secondary_opts)
    old = p.help.removeprefix("Old spelling of ").rstrip(".") if p.hidden and p.help else ""
    return Row(command, spelling, kind(p), default_text(p), " ".join((p.help or "").split()), long, old)


def kind(p: click.Option) -> str:
    if p.is_flag:
        return "flag"
    t = p.type
    text = f"choice: {'|'.join(t.choices)}" if isinstance(t, click.Choice) else \
        "path" if isinstance(t, click.Path) else t.name
    unit = p.metavar if p.metavar and p.metavar not in ("TEXT", "PATH") else ""
    text += f" ({unit})" if unit else ""
    return f"{text}, repeatable" if p.multiple else text


def default_text(p: click.Option) -> str:
    """The default as typed (in backticks), or in words (what the library works out; "required")."""
    if p.required:
        return "required"
    if isinstance(p.show_default, str):
        return p.show_default
    if p.is_flag and p.secondary_opts:
        return "" if p.default is None else f"`{(p.opts if p.default else p.secondary_opts)[0]}`"
    if p.is_flag or p.default is None or p.default == () or p.default is _UNSET:
        return ""
    return f"`{number_text(p.default)}`" if isinstance(p.default, float) else f"`{p.default}`"


def markdown(table: list[Row]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| command | option | type (unit) | default | meaning |", "|---|---|---|---|---|"]
    lines += [f"| `{r.command}` | `{r.option}` | {cell(r.kind)} | {cell(r.default)} | {cell(r.meaning)} |"
              for r in table if not r.old]
    old = [r for r in table if r.old]
    if old:
        lines += ["", "Old spellings, still accepted (each prints one line naming the new one):", "",
                  "| command | old | new |", "|---|---|---|"]
        lines += [f"| `{r.command}` | `{r.option}` | `{r.old}` |" for r in old]
    return "\n".join(lines)


def replace_between_markers(text: str, table: str) -> str:
    head, start, rest = text.partition(START)
    _, end, tail = rest.partition(END)
    if not start or not end:
        raise SystemExit(f"no {START} ... {END} section to replace")
    return f"{head}{START}\n{table}\n{END}{tail}"


def main(argv: list[str] | None = None) -> None:
    from . import main_group

    argv = sys.argv[1:] if argv is None else argv
    table = markdown(rows(main_group))
    if argv[:1] == ["--write"] and len(argv) == 2:
        path = Path(argv[1])
        if not path.is_file():
            raise SystemExit(f"{path} is not a file: give the file that holds the table (docs/OPTIONS.md)")
        path.write_text(replace_between_markers(path.read_text(encoding="utf-8"), table), encoding="utf-8")
    elif not argv:
        print(table)
    else:
        raise SystemExit("usage: python -m styleforge.cli.optiontable [--write docs/OPTIONS.md]")


if __name__ == "__main__":
    main()
