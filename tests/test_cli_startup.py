"""The command line lists its commands without importing them, and a command imports only its provider."""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from semlic import cli

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "compressai", "semlic.methods", "semlic.segnet", "pandas")


def _imported_after(argv: list[str]) -> tuple[list[str], str]:
    """The heavy modules a fresh process has imported after building the parser for ``argv``, and the
    help text of the parser (what ``semlic ... --help`` prints)."""
    script = ("import json, sys\nfrom semlic import cli\n"
              f"parser = cli.build_parser({argv!r})\n"
              f"heavy = sorted({{m.split('.')[0] if not m.startswith('semlic') else '.'.join(m.split('.')[:2]) "
              f"for m in sys.modules if m.startswith({HEAVY!r})}})\n"
              "print(json.dumps([heavy, parser.format_help()]))\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True)
    heavy, text = json.loads(out.stdout)
    return heavy, text


def test_every_provider_declares_exactly_the_commands_it_registers():
    """COMMANDS (read from the source without importing it) equals what register_cli adds, help included."""
    table = cli.command_table()
    assert len(table) >= len(cli.COMMAND_MODULES)
    names = [name for _, commands in table for name in commands]
    assert len(names) == len(set(names)), "two providers declare the same command"
    for provider, commands in table:
        parser = argparse.ArgumentParser()
        sub = parser.add_subparsers()
        importlib.import_module(provider).register_cli(sub)
        registered = {action.dest: action.help for action in sub._choices_actions}
        assert registered == commands, provider


def test_help_lists_every_command_without_importing_torch_or_a_method():
    heavy, text = _imported_after(["--help"])
    assert heavy == []
    full = cli.build_parser()   # every provider imported: the commands with all their arguments
    commands = next(a for a in full._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(commands) >= {"encode", "results", "train-dsslic", "train-sgfilter", "eval-latent-seg"}
    for name in commands:
        assert f"    {name}" in text, name


def test_a_command_imports_only_the_module_that_provides_it():
    heavy, text = _imported_after(["results", "select 1"])
    assert heavy == [] and "results" in text
    heavy, _ = _imported_after(["-v", "train-sgfilter", "--data", "D", "--out", "O"])
    assert "semlic.methods" in heavy   # the method package's own command brings its code


def test_a_mistyped_command_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["encdoe"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'encdoe'" in err and "'train-smic'" in err and "'results'" in err


def test_a_provider_without_commands_declared_is_refused(tmp_path):
    (tmp_path / "m.py").write_text("def register_cli(sub):\n    sub.add_parser('x')\n")
    with pytest.raises(LookupError, match="declares COMMANDS"):
        cli.declared_commands(tmp_path / "m.py")
    (tmp_path / "n.py").write_text("COMMANDS = {'x': 1}\n")
    with pytest.raises(TypeError, match="strings"):
        cli.declared_commands(tmp_path / "n.py")
