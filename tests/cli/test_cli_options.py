"""Every option of every command: docs/OPTIONS.md's table is the CLI's, one name means one thing,
each default is the library's, and old spellings keep working with one line saying the new one."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from styleforge.classify.data import DataSpec
from styleforge.classify.evaluate import EvalConfig
from styleforge.classify.train import TrainConfig
from styleforge.cli import main_group
from styleforge.cli.options import as_text, default_of, option
from styleforge.cli.optiontable import END, START, commands, markdown, rows
from styleforge.cli.optiontable import main as optiontable_main
from styleforge.runtime.errors import StyleforgeError
from styleforge.runtime.guard import number_text
from styleforge.style.fast import FastTrainConfig
from styleforge.style.fast.decoder_train import DecoderTrainConfig, train_decoders
from styleforge.style.gatys import StylizeConfig

NONE = (None, getattr(click.core, "UNSET", None))  # no default (Click 8.3+ says UNSET)
OPTIONS = Path(__file__).resolve().parents[2] / "docs" / "OPTIONS.md"

# Option names whose meaning differs between commands on purpose, and why (keep it short).
ALLOWED = {
    "--output": "each command writes its own kind of file",
    "--download": "classify: may download the dataset; weights: download these weights now",
}
# Commands that print only what they were asked for (no progress, no status lines): no -q.
NOTHING_TO_QUIET = {"classify models", "classify predict", "fast models", "summary", "visualize layers", "weights"}
CONFIGS = {"stylize": [StylizeConfig], "fast train": [FastTrainConfig], "fast train-decoders": [DecoderTrainConfig],
           "classify train": [TrainConfig, DataSpec], "classify grid": [TrainConfig, DataSpec],
           "classify preview": [DataSpec], "classify eval": [EvalConfig]}


@pytest.fixture(scope="module")
def table():
    return rows(main_group)


def test_the_options_table_is_the_clis(table):
    text = OPTIONS.read_text(encoding="utf-8")
    assert START in text and END in text, "docs/OPTIONS.md lost its table markers"
    current = text.split(START, 1)[1].split(END, 1)[0].strip()
    assert current == markdown(table), \
        "docs/OPTIONS.md out of date: run python -m styleforge.cli.optiontable --write docs/OPTIONS.md"


def test_the_table_writer_refuses_a_missing_file(tmp_path):
    missing = tmp_path / "OPTIONS.md"
    with pytest.raises(SystemExit, match="is not a file"):
        optiontable_main(["--write", str(missing)])
    assert not missing.exists()


def _meaning(help_text: str) -> str:
    """The first sentence: what the option is. Later sentences may add what it is in one command."""
    return re.split(r"(?<=\.)\s", help_text, maxsplit=1)[0]


def _kind(kind: str) -> str:
    """Type and unit, counting a comma list of X as X, a whole number as a number, any choice as a choice."""
    kind = re.sub(r"choice: \S+", "choice", kind.replace(" list", "")).replace("integer", "number")
    return re.sub(r" \([^)]*,[^)]*\)", "", kind)  # a list's syntax hint (W,W,...) is not a unit


def test_one_option_name_has_one_meaning_and_type_across_commands(table):
    seen = defaultdict(set)
    for r in table:
        if not r.old and r.name not in ALLOWED:
            seen[r.name].add((_kind(r.kind), _meaning(r.meaning)))
    clashes = {name: sorted(v) for name, v in seen.items() if len(v) > 1}
    assert not clashes


def test_every_visible_option_says_what_it_is_and_no_help_restates_a_default(table):
    for r in table:
        if r.old:
            continue
        assert r.meaning, f"{r.command} {r.option} has no help"
        assert not re.search(r"(?<!')\bdefault\b(?!')", r.meaning, re.I), (r.command, r.option, r.meaning)


def test_every_command_that_reports_progress_or_writes_files_takes_quiet():
    for path, cmd in commands(main_group):
        has_quiet = any("-q" in p.opts for p in cmd.params if isinstance(p, click.Option))
        assert has_quiet == (path not in NOTHING_TO_QUIET), path


def test_each_default_is_the_librarys():
    checked = 0
    for path, cmd in commands(main_group):
        for config in CONFIGS.get(path, []):
            fields = {f for f in config.__dataclass_fields__}
            for p in cmd.params:
                if p.name in fields and isinstance(p, click.Option) and not p.is_flag and p.default not in NONE:
                    want = default_of(config, p.name)
                    assert p.default == (as_text(want) if isinstance(want, (dict, list, tuple)) else want), \
                        (path, p.name)
                    checked += 1
    assert checked > 40


@pytest.mark.parametrize("value, text", [(1e6, "1e6"), (3e5, "3e5"), (350000.0, "350000"), (3e-4, "0.0003"),
                                         (1e-5, "1e-5"), (30.0, "30"), (0.25, "0.25"), (-3e5, "-3e5")])
def test_float_defaults_read_as_typed(value, text):
    assert number_text(value) == text


def test_help_shows_a_float_default_as_typed():
    out = CliRunner().invoke(main_group, ["fast", "train", "--help"], terminal_width=200).output
    assert "[default: 3e5]" in out and "300000" not in out


def test_help_shows_a_described_default_as_written_in_every_command():
    """A default given as words (`--size`: the input's) reads as written, without the parentheses
    click adds; every visible option goes through options.option, which does that."""
    described = 0
    for path, cmd in commands(main_group):
        out = CliRunner().invoke(main_group, [*path.split(), "--help"], terminal_width=400).output
        assert "[default: (" not in out, path
        for p in cmd.params:
            if isinstance(p, click.Option) and not p.hidden:
                assert type(p).__name__ == "_Option", (path, p.opts)
                if isinstance(p.show_default, str) and not p.show_default[:1].isdigit():
                    assert f"[default: {p.show_default}]" in out, (path, p.opts)
                    described += 1
    assert described > 20
    apply = CliRunner().invoke(main_group, ["fast", "apply", "--help"], terminal_width=400).output
    assert "[default: 0.8; 1 with --decoder cascade or hourglass]" in apply


def test_the_data_options_give_data_specs_defaults_and_eval_the_checkpoints(monkeypatch, tmp_path):
    """train, grid and preview build DataSpec(dataset) when no other data option is given (each
    default is DataSpec's); eval's data options are None: the checkpoint's settings."""
    import importlib

    import styleforge.cli.classify as cli_classify

    grid_mod, train_mod = (importlib.import_module(f"styleforge.classify.{m}") for m in ("grid", "train"))

    seen = {}

    def capture(name):
        def fake(cfg, *args, **kw):
            seen[name] = cfg
            raise StyleforgeError("captured")
        return fake

    monkeypatch.setattr(train_mod, "fit", capture("train"))
    monkeypatch.setattr(grid_mod, "grid", capture("grid"))
    monkeypatch.setattr(cli_classify, "preview", capture("preview"))
    monkeypatch.setattr(cli_classify, "evaluate", capture("eval"))
    out = str(tmp_path / "out.png")
    for args in (["train", "-o", out], ["grid", "-o", out, "--lr", "0.1,0.2"], ["preview", "-o", out]):
        result = CliRunner().invoke(main_group, ["classify", *args, "--dataset", "set"])
        assert "captured" in result.stderr, result.output
    assert seen["train"].data == seen["grid"].data == seen["preview"] == DataSpec("set")
    assert "captured" in CliRunner().invoke(main_group, ["classify", "eval", str(tmp_path)]).stderr
    assert seen["eval"] == EvalConfig(str(tmp_path))
    assert all(getattr(seen["eval"], f) is None for f in ("dataset", "data_root", "test_data", "classes",
                                                          "val_split", "test_split", "image_size"))


def test_old_spellings_work_and_say_the_new_one_once():
    runner = CliRunner()
    new = runner.invoke(main_group, ["summary", "gray1conv", "--input", "1x28x28", "--num-classes", "3"])
    old = runner.invoke(main_group, ["summary", "gray1conv", "--input", "1x28x28", "--classes", "3"])
    assert new.exit_code == old.exit_code == 0, old.output
    assert old.stdout == new.stdout and new.stderr == ""
    assert old.stderr.strip().splitlines() == ["warning: --classes is now --num-classes; the old name will go in a "
                                               "later version"]
    both = runner.invoke(main_group, ["summary", "gray1conv", "--classes", "3", "--num-classes", "4"])
    assert both.exit_code == 2 and "not both" in both.stderr
    assert "--classes" not in runner.invoke(main_group, ["summary", "--help"]).stdout  # hidden


@pytest.mark.parametrize("args, value", [([], 7), (["--new", "2"], 2), (["--old", "3"], 3),
                                          (["--old", "3", "--other", "1"], 3), (["--other", "1", "--old", "4"], 4)])
def test_an_old_spelling_fills_the_new_option_wherever_it_stands(args, value):
    @click.command()
    @option("--new", "name", type=int, default=7, old=("--old",))
    @click.option("--other", type=int)
    def cmd(name, other):
        click.echo(f"name={name}")

    result = CliRunner().invoke(cmd, args)
    assert result.exit_code == 0, result.output
    assert f"name={value}" in result.stdout
    assert ("--old is now --new" in result.stderr) == ("--old" in args)
    for order in (["--old", "1", "--new", "2"], ["--new", "2", "--old", "1"]):
        assert "not both" in CliRunner().invoke(cmd, order).stderr


def test_fast_train_decoders_refuses_an_earlier_runs_files(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    (out / "decoder-relu2_1.pth").write_bytes(b"earlier")
    with pytest.raises(StyleforgeError, match="already there: use --overwrite"):
        train_decoders(DecoderTrainConfig(data=str(tmp_path), output=str(out), levels=["relu2_1"]))
    assert (out / "decoder-relu2_1.pth").read_bytes() == b"earlier"
    with pytest.raises(StyleforgeError, match="exclude each other"):
        DecoderTrainConfig(data=".", output=str(out), overwrite=True, resume=True).validate()
