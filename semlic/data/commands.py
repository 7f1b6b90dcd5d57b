"""``semlic prepare`` and ``semlic download``: the data stage's work on one machine."""

from __future__ import annotations

import argparse

from ..errors import DatasetRootError
from .datasets import DATASETS, get_spec
from .download import download_dataset
from .prepare import prepare_dataset

#: The commands this module adds to ``semlic`` (read by semlic.cli without importing it).
COMMANDS = {
    "prepare": "resize a data set into uniform PNGs plus manifest.parquet",
    "download": "download a public data set (kodak, camvid, ade20k) with checksum checks",
}


def run_prepare(args: argparse.Namespace) -> int:
    """``semlic prepare``: :func:`semlic.data.prepare.prepare_dataset` from the command line."""
    spec = get_spec(args.dataset)
    if args.root is None and spec.root_required:
        raise DatasetRootError(f"data set {args.dataset!r} needs --root DIR")
    manifest = prepare_dataset(
        args.dataset,
        args.root,
        args.out,
        train_size=tuple(args.size),
        splits=args.splits,
        workers=args.workers,
        limit=args.limit,
        resize_splits=tuple(args.resize_splits),
        show_progress=not args.no_progress,
    )
    for split, count in manifest.groupby("split", sort=True).size().items():
        print(f"{args.dataset} {split}: {count} images")
    print(f"manifest: {args.out}/manifest.parquet")
    return 0


def run_download(args: argparse.Namespace) -> int:
    """``semlic download``: :func:`semlic.data.download.download_dataset` from the command line."""
    root = download_dataset(args.name, args.root, keep_archive=args.keep_archive, show_progress=not args.no_progress)
    print(f"{args.name}: ready in {root}")
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``prepare`` and ``download`` sub-commands."""
    names = sorted(DATASETS)
    prepare = subparsers.add_parser(
        "prepare",
        help=COMMANDS["prepare"],
        description="Write OUT/<split>/images/<id>.png, OUT/<split>/labels/<id>.png and OUT/manifest.parquet. "
        "The resized splits (default: train) become HEIGHT x WIDTH; the others keep their size.",
    )
    prepare.add_argument("--dataset", required=True, choices=names, help="data set name")
    prepare.add_argument("--root", help="data set root directory (not needed for synthetic)")
    prepare.add_argument("--out", required=True, help="output directory")
    prepare.add_argument("--size", type=int, nargs=2, default=[256, 256], metavar=("HEIGHT", "WIDTH"),
                         help="size of the resized splits (default 256 256)")
    prepare.add_argument("--splits", nargs="+", help="splits to prepare (default: all of the data set's)")
    prepare.add_argument("--resize-splits", nargs="*", default=["train"], metavar="SPLIT",
                         help="splits resized to --size (default: train)")
    prepare.add_argument("--limit", type=int, help="only the first N ids of each split")
    prepare.add_argument("--workers", type=int, default=2, help="worker threads (default 2)")
    prepare.add_argument("--no-progress", action="store_true", help="no progress bar")
    prepare.set_defaults(func=run_prepare)

    download = subparsers.add_parser(
        "download",
        help=COMMANDS["download"],
        description="Resumable, verified, atomic download. Cityscapes needs an account: the error says where "
        "to put its files.",
    )
    download.add_argument("name", choices=names, help="data set name")
    download.add_argument("--root", required=True, help="directory that becomes the data set root")
    download.add_argument("--keep-archive", action="store_true", help="keep the downloaded archive")
    download.add_argument("--no-progress", action="store_true", help="no progress bar")
    download.set_defaults(func=run_download)
