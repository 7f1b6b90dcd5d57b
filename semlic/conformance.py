"""Decoding that holds on every machine: encode in one process configuration, decode in others.

A file is only useful if every decoder reads it back. This module codes a set of images with
every registered method in one process (``encode``), then decodes the files in other processes
(``decode``), each started by the caller with another configuration: another thread count,
oneDNN's kernels of another instruction set (``DNNL_MAX_CPU_ISA``), ATen's generic kernels
(``ATEN_CPU_CAPABILITY=default``) or oneDNN off (``--no-mkldnn``), as a file moving between
machines would meet them. Per file it records:

* whether the decoder's entropy parameters (:meth:`semlic.methods.Method.entropy_parameters`: what
  it computes from the file to choose its probability models) are bit-identical to the encoder's;
* whether decoding raised (a typed error, e.g. :class:`~semlic.errors.EntropyModelMismatchError`)
  or returned an image, and that image's largest and mean absolute difference from the encoder's
  reconstruction and its PSNR against it (a desynchronised file decodes to garbage: a PSNR far
  below the method's tolerance);
* the decode time.

tests/test_conformance.py runs it in ``make test`` on Kodak (or the synthetic set) with tiny
models; benchmarks/determinism.py with trained models for reports/determinism.md.

    python -m semlic.conformance encode --models DIR --out DIR IMAGE... [--methods M,...] [-o METHOD:KEY=VALUE]
    python -m semlic.conformance decode --models DIR --files DIR --out JSON [--no-mkldnn]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

#: the configurations a file meets on other machines: name -> (environment added, --no-mkldnn)
CONFIGURATIONS: dict[str, tuple[dict[str, str], bool]] = {
    "threads1": ({"OMP_NUM_THREADS": "1"}, False),
    "threads2": ({"OMP_NUM_THREADS": "2"}, False),
    "sse41": ({"DNNL_MAX_CPU_ISA": "SSE41", "OMP_NUM_THREADS": "1"}, False),
    "aten_default": ({"ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "1"}, False),
    "no_mkldnn": ({"OMP_NUM_THREADS": "1"}, True),
}


def _threads() -> None:
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))


def encode(models_dir: str | os.PathLike, images: list[str], out_dir: str | os.PathLike,
           methods: list[str] | None = None, qualities: dict[str, list] | None = None,
           options: dict[str, dict] | None = None) -> list[dict]:
    """Every method (or ``methods``) at ``qualities[method]`` (default: its first and last default quality)
    on every image: ``<out>/<method>_<image>_<quality>.sem`` with the encoder's reconstruction (.npy)
    and entropy parameters (.npz); returns one record per file (also in ``<out>/files.json``)."""
    from .imageio import load_image
    from .methods import all_methods, get_method
    from .model_files import ModelStore

    _threads()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    store = ModelStore(dirs=[str(models_dir)])
    chosen = [get_method(m) for m in methods] if methods else all_methods()
    records = []
    for method in chosen:
        models = store.models(method.models + method.encoder_models)
        grid = (qualities or {}).get(method.name) or [method.default_qualities[0], method.default_qualities[-1]]
        for path in images:
            image = load_image(path)
            for quality in grid:
                quality = method.parse_quality(quality)
                result = method.encode(image, models, quality, **(options or {}).get(method.name, {}))
                stem = f"{method.name}_{Path(path).stem}_{method.quality_label(quality)}"
                (out / f"{stem}.sem").write_bytes(result.data)
                np.save(out / f"{stem}.npy", result.reconstruction)
                np.savez(out / f"{stem}.npz", **method.entropy_parameters(result.data, models))
                records.append({"file": f"{stem}.sem", "method": method.name, "image": Path(path).stem,
                                "quality": method.quality_value(quality), "bytes": len(result.data),
                                "pixels": int(image.shape[0] * image.shape[1]), "tolerance": method.decode_tolerance})
    (out / "files.json").write_text(json.dumps(records, indent=1))
    return records


def decode(models_dir: str | os.PathLike, files_dir: str | os.PathLike, mkldnn: bool = True) -> list[dict]:
    """Decode every file of ``files_dir`` (written by :func:`encode`) here; one record per file."""
    import torch

    from . import format as fmt
    from .errors import SemlicError
    from .methods import get_method
    from .model_files import ModelStore

    _threads()
    torch.backends.mkldnn.enabled = mkldnn
    files = Path(files_dir)
    store = ModelStore(dirs=[str(models_dir)])
    out = []
    for record in json.loads((files / "files.json").read_text()):
        data = (files / record["file"]).read_bytes()
        method = get_method(fmt.unpack(data).method)
        models = store.models(method.models)
        stem = record["file"].removesuffix(".sem")
        expected = np.load(files / f"{stem}.npy")
        entry = {**record, "error": None}
        with np.load(files / f"{stem}.npz") as encoder_params:
            mine = method.entropy_parameters(data, models)
            entry["parameters_identical"] = set(mine) == set(encoder_params.files) and all(
                np.array_equal(mine[k], encoder_params[k]) for k in mine)
        started = time.perf_counter()
        try:
            decoded = method.decode(data, models)
        except SemlicError as exc:
            entry.update(error=f"{type(exc).__name__}: {exc}", dec_s=time.perf_counter() - started)
            out.append(entry)
            continue
        entry["dec_s"] = time.perf_counter() - started
        difference = np.abs(decoded.astype(np.int16) - expected.astype(np.int16))
        mse = float((difference.astype(np.float64) ** 2).mean())
        entry.update(max_abs=int(difference.max()), mean_abs=float(difference.mean()),
                     psnr_vs_encoder=math.inf if mse == 0 else 10 * math.log10(255 ** 2 / mse))
        out.append(entry)
    return out


def desynchronised(record: dict) -> bool:
    """A file that decoded to an image farther from the encoder's than its method's tolerance allows."""
    return record["error"] is None and record["max_abs"] > record["tolerance"]


def _cli(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m semlic.conformance", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    enc = sub.add_parser("encode")
    enc.add_argument("images", nargs="+")
    enc.add_argument("--models", required=True)
    enc.add_argument("--out", required=True)
    enc.add_argument("--methods", help="comma-separated (default: every registered method)")
    enc.add_argument("--qualities", help="JSON: method -> list of qualities")
    enc.add_argument("-o", "--option", action="append", default=[], metavar="METHOD:KEY=VALUE")
    dec = sub.add_parser("decode")
    dec.add_argument("--models", required=True)
    dec.add_argument("--files", required=True)
    dec.add_argument("--out", required=True, help="JSON records")
    dec.add_argument("--no-mkldnn", action="store_true", help="torch.backends.mkldnn.enabled = False")
    args = parser.parse_args(argv)
    if args.command == "encode":
        options: dict[str, dict] = {}
        for item in args.option:
            method, _, pair = item.partition(":")
            key, _, value = pair.partition("=")
            options.setdefault(method, {})[key] = value
        records = encode(args.models, args.images, args.out, args.methods.split(",") if args.methods else None,
                         json.loads(args.qualities) if args.qualities else None, options)
        print(f"{len(records)} files -> {args.out}")
    else:
        records = decode(args.models, args.files, mkldnn=not args.no_mkldnn)
        Path(args.out).write_text(json.dumps(records, indent=1))
        print(f"{len(records)} files decoded -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(_cli())
