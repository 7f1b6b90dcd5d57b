"""The ``semlic`` command line: every stage's work runs here without any orchestration.

Each command lives with the code it drives. A module that contributes commands declares them in a
module-level literal ``COMMANDS = {name: one-line help}`` and adds their sub-parsers in
``register_cli(subparsers)`` (each with a ``func(args) -> int`` that runs it): the core modules of
``COMMAND_MODULES``, then every method package's ``commands`` module (its training and the like;
the package's ``register_cli`` adds them). The command line reads the ``COMMANDS`` literals from the
modules' source without importing them, so ``semlic --help`` lists every command at once, and a
command imports only the module that provides it (torch and the method packages come in with the
commands that use them). ``main(argv)`` takes an explicit argv so tests call it directly.

Exit codes: 0 success, 1 unexpected semlic error, 2 bad usage or configuration,
3 unusable input image, 4 corrupt or unreadable .sem file, 5 wrong or broken model,
6 missing codec plugin.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import logging
import sys
from functools import lru_cache
from pathlib import Path

from .errors import SemlicError
from .registry import METHODS_PACKAGE

# Core modules that contribute sub-commands, in the order they appear in --help.
COMMAND_MODULES = (
    "semlic.commands",        # encode, decode, info, methods, model-info, convert-model
    "semlic.compare",         # compare
    "semlic.baselines",       # baselines
    "semlic.data.commands",   # prepare, download
    "semlic.segnet.commands", # train-segnet, segment, convert-segnet
    "semlic.query",           # results
    "semlic.study",           # study-report
    "semlic.run_report",      # run-report
    "semlic.html_report",     # report
    "semlic.lpips",           # convert-lpips
    "semlic.segnet.efficientnet",  # convert-efficientnet
    "semlic.weights",         # weights
)
#: semlic's folder, and the folder of the package whose subpackages are the systems (found by listing it).
_PACKAGE_DIR = Path(__file__).resolve().parent
_METHODS_DIR = _PACKAGE_DIR.parent.joinpath(*METHODS_PACKAGE.split("."))


def declared_commands(path: Path) -> dict[str, str]:
    """The ``COMMANDS = {name: help}`` literal of a module's source file, read without importing it."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == "COMMANDS" for t in targets) and node.value is not None:
            value = ast.literal_eval(node.value)
            if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
                raise TypeError(f"{path}: COMMANDS must be a literal {{name: help}} of strings")
            return value
    raise LookupError(f"{path}: a module that contributes commands declares COMMANDS = {{name: help}}")


@lru_cache(maxsize=1)
def command_table() -> tuple[tuple[str, dict[str, str]], ...]:
    """(importable provider, its commands) in --help order: the core modules, then each method package
    (imported as a package: its ``register_cli`` adds what its ``commands`` module declares)."""
    table = []
    for name in COMMAND_MODULES:
        path = _PACKAGE_DIR.parent.joinpath(*name.split(".")).with_suffix(".py")
        if path.is_file():   # a module absent in this build contributes nothing
            table.append((name, declared_commands(path)))
    for folder in sorted(p for p in _METHODS_DIR.iterdir() if (p / "__init__.py").is_file()):
        if (folder / "commands.py").is_file():
            table.append((f"{METHODS_PACKAGE}.{folder.name}", declared_commands(folder / "commands.py")))
    return tuple(table)


def _command_in(argv: list[str]) -> str | None:
    """The sub-command ``argv`` names (its first word that is not a global option), if any."""
    for word in argv:
        if word in ("-h", "--help"):
            return None
        if not word.startswith("-"):
            return word
    return None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser. Without ``argv``: every command with all its arguments (every provider imported).
    With ``argv``: only the provider of the command it names is imported; the other commands are
    listed by name and help (enough for ``--help`` and for a mistyped command's error)."""
    parser = argparse.ArgumentParser(
        prog="semlic",
        description="Semantic-segmentation-based image compression (the registered methods: semlic methods) "
                    "and classical baselines.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    chosen = _command_in(argv) if argv is not None else None
    for provider, commands in command_table():
        if argv is None or chosen in commands:
            importlib.import_module(provider).register_cli(sub)
            missing = set(commands) - set(sub.choices)
            if missing:
                raise LookupError(f"{provider} declares {sorted(missing)} in COMMANDS but does not register them")
        else:
            for name, text in commands.items():
                sub.add_parser(name, help=text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()   # here, so that a reader gone early is met by the handler below, not at exit
        return code
    except SemlicError as exc:
        print(f"semlic {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"semlic {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:   # the reader stopped early (`semlic methods | head`): not an error of ours
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())   # Python's exit-time flush would fail on the closed pipe again
        return 141   # 128 + SIGPIPE, as a shell reports a command killed by it


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
