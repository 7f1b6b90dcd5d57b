"""The ``semlic`` command line: every stage's work runs here without any orchestration.

Each command lives with the code it drives; a module contributes its commands through a
``register_cli(subparsers)`` function that adds a sub-parser whose ``func(args) -> int``
runs it: the core modules below, then every method package that has one (its training and
the like; :func:`semlic.methods.method_packages`). ``main(argv)`` takes an explicit argv so
tests call it directly.

Exit codes: 0 success, 1 unexpected semlic error, 2 bad usage or configuration,
3 unusable input image, 4 corrupt or unreadable .sem file, 5 wrong or broken model,
6 missing codec plugin.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .errors import SemlicError

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="semlic",
        description="Semantic-segmentation-based image compression (the registered methods: semlic methods) "
                    "and classical baselines.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # the module itself is absent in this build
                continue
            raise
        module.register_cli(sub)
    from .methods import method_packages

    for package in method_packages():
        register = getattr(package, "register_cli", None)
        if register is not None:
            register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args) or 0)
    except SemlicError as exc:
        print(f"semlic {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"semlic {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
