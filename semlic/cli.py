"""The ``semlic`` command line: every stage's work runs here without any orchestration.

Each command lives with the code it drives; a module contributes its commands through a
``register_cli(subparsers)`` function that adds a sub-parser whose ``func(args) -> int``
runs it. ``main(argv)`` takes an explicit argv so tests call it directly.

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

# Modules that contribute sub-commands, in the order they appear in --help.
COMMAND_MODULES = (
    "semlic.commands",        # encode, decode, info, train-base
    "semlic.baselines",       # baselines
    "semlic.data.commands",   # prepare, download
    "semlic.segnet.commands", # train-segnet, segment
    "semlic.edms_commands",   # smap-pairs, train-smapnet, finetune-finenet
    "semlic.query",           # results
    "semlic.study",           # study-report
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="semlic",
        description="Semantic-segmentation-based image compression (DSSLIC, EDMS) and classical baselines.",
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
