"""The command line starts without importing torch: `styleforge --help`/`--version` stay fast."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from styleforge.cli import main_group
from styleforge.cli.lazy import top_level_commands

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "torchvision", "numpy", "PIL", "matplotlib", "tqdm")


def _python(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env).stdout


def test_importing_the_cli_and_the_package_imports_no_heavy_module():
    out = _python("import sys, styleforge, styleforge.cli\n"
                  "from styleforge.cli import main_group\n"
                  f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))")
    assert out.strip() == "[]"


def test_top_level_help_and_version_run_without_torch():
    code = ("import sys\nfrom styleforge.cli import main_group\n"
            "for args in (['--help'], ['--version']):\n"
            "    try:\n        main_group.main(args, prog_name='styleforge')\n"
            "    except SystemExit as e:\n        assert e.code == 0, e.code\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO TORCH')")
    out = _python(code)
    assert "Commands:" in out and "version" in out and out.strip().endswith("NO TORCH")


def test_lazy_help_lists_every_command_as_the_loaded_commands_describe_themselves():
    names = list(top_level_commands())
    assert sorted(names) == ["classify", "fast", "stylize", "summary", "visualize", "weights"]
    show = "main_group.main(['--help'], prog_name='styleforge', standalone_mode=False)"
    lazy = _python(f"from styleforge.cli import main_group\n{show}")
    # Every command loaded first: then the help comes from the commands themselves.
    loaded = _python("import importlib, pkgutil, styleforge.cli as cli\n"
                     "for m in pkgutil.iter_modules(cli.__path__):\n"
                     "    importlib.import_module(f'styleforge.cli.{m.name}')\n"
                     f"assert sorted(cli.main_group.commands) == {sorted(names)!r}\n"
                     f"main_group = cli.main_group\n{show}")
    assert lazy == loaded and all(f"  {name} " in lazy for name in names)
    assert CliRunner().invoke(main_group, ["weights", "--help"]).exit_code == 0  # loads on demand


def test_public_names_import_on_first_use():
    import styleforge
    from styleforge import StylizeConfig, stylize
    from styleforge.style.gatys import stylize as direct

    assert stylize is direct and StylizeConfig().size > 0 and "stylize" in dir(styleforge)


def test_without_sources_every_command_is_still_found(monkeypatch):
    """Installed as .pyc only, the group cannot read the sources: it imports the modules instead."""
    import styleforge.cli.lazy as lazy

    monkeypatch.setattr(lazy, "top_level_commands", lambda: {})
    assert CliRunner().invoke(main_group, ["weights", "--help"]).exit_code == 0
    names = main_group.list_commands(None)
    assert {"classify", "fast", "stylize", "summary", "visualize", "weights"} <= set(names)
