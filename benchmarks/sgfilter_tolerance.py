"""HEVC + SG filter on another CPU: how far a decoder's picture drifts from the encoder's.

    .venv/bin/python benchmarks/sgfilter_tolerance.py --prepared PREPARED/camvid \\
        --segnet MODELS/segnet/segnet.safetensors --model WORK/derived/sgfilter.safetensors --limit 12

The method's decoder derives the map from the decoded HEVC picture (PSPNet) and runs the enhancement
network on it; nothing in the file depends on that map, so an encoder and a decoder on different
kernels never disagree on the bitstream, only on the picture: a pixel whose PSPNet scores are a near
tie may get another class, and every float of the network may round differently. This measures it.
An encoder process (this one, default kernels and threads) codes the first ``--limit`` test images
at every QP of the grid and keeps its reconstruction and map; then a decoder process per setting
(thread count, ``DNNL_MAX_CPU_ISA``, ``ATEN_CPU_CAPABILITY``) decodes each file from its bytes.
Per setting: the share of map pixels whose class differs, the largest pixel difference of the
output, the PSNR of the decoder's output against the encoder's reconstruction (inf: identical) and
the change of PSNR against the original. Writes ``<out>/sgfilter_tolerance.csv`` and ``.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SETTINGS = {   # name: (threads, environment)
    "threads1": (1, {}),
    "threads2": (2, {}),
    "avx2": (2, {"DNNL_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}),
    "sse41": (1, {"DNNL_MAX_CPU_ISA": "SSE41", "ATEN_CPU_CAPABILITY": "default"}),
}


def _models(args, method) -> dict:
    """The segmenter and the method's network (refused if the file holds another model)."""
    from semlic.model_files import load_model

    return {"pspnet": load_model(args.segnet, expect="pspnet"),
            method.network: load_model(args.model, expect=method.network)}


def encode(args, work: Path) -> list[dict]:
    """Code the images (encoder side); keep file, reconstruction, map and original per (image, QP)."""
    from semlic import metrics
    from semlic.imageio import load_image
    from semlic.methods import get_method
    from semlic.segnet.prepared import list_prepared

    method = get_method(args.method)
    models = _models(args, method)
    records = []
    for sample in list_prepared(args.prepared, "test")[: args.limit]:
        image = load_image(sample.image_path)
        results = method.encode_many(image, models, args.qps)
        for qp, result in zip(args.qps, results):
            stem = f"{sample.id}_qp{qp}"
            (work / f"{stem}.sem").write_bytes(result.data)
            maps = method.decode_with_maps_many([result.data], models)[0][2]
            labels = next(iter(maps.values())).labels if maps else np.zeros(image.shape[:2], np.uint8)
            np.savez(work / f"{stem}.enc.npz", image=result.reconstruction, labels=labels, original=image)
            records.append({"image_id": sample.id, "qp": qp, "stem": stem,
                            "enhanced": bool(result.extras.get("enhanced", False)),
                            "psnr_encoder": metrics.psnr_rgb(image, result.reconstruction)})
    return records


def decode(args, work: Path, setting: str) -> None:
    """Decoder side (a fresh process under one setting): decode every file, keep picture and map."""
    import torch

    from semlic.methods import get_method

    torch.set_num_threads(SETTINGS[setting][0])
    method = get_method(args.method)
    models = _models(args, method)
    for path in sorted(work.glob("*.sem")):
        image, _, maps, _ = method.decode_with_maps_many([path.read_bytes()], models)[0]
        labels = next(iter(maps.values())).labels if maps else np.zeros(image.shape[:2], np.uint8)
        np.savez(work / f"{path.stem}.{setting}.npz", image=image, labels=labels)


def compare(work: Path, records: list[dict], setting: str) -> list[dict]:
    from semlic import metrics

    rows = []
    for record in records:
        encoder = np.load(work / f"{record['stem']}.enc.npz")
        decoder = np.load(work / f"{record['stem']}.{setting}.npz")
        original, ours, theirs = encoder["original"], encoder["image"], decoder["image"]
        rows.append({"setting": setting, "image_id": record["image_id"], "qp": record["qp"],
                     "enhanced": record["enhanced"],
                     "map_pixels_differing": float((encoder["labels"] != decoder["labels"]).mean()),
                     "max_pixel_diff": int(np.abs(ours.astype(np.int16) - theirs.astype(np.int16)).max()),
                     "psnr_vs_encoder": metrics.psnr_rgb(ours, theirs) if not np.array_equal(ours, theirs)
                     else float("inf"),
                     "psnr_change_db": metrics.psnr_rgb(original, theirs) - record["psnr_encoder"]})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prepared", required=True, help="a prepared data set (its test split)")
    parser.add_argument("--segnet", required=True, help="the pipeline's PSPNet model file")
    parser.add_argument("--model", required=True, help="the enhancement network's model file")
    parser.add_argument("--method", default="sgfilter")
    parser.add_argument("--qps", nargs="+", type=int, default=[47, 42, 37, 32])
    parser.add_argument("--limit", type=int, default=12, help="the first N test images")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--out", default="reports/sgfilter")
    parser.add_argument("--decode-only", help=argparse.SUPPRESS)      # internal: the decoder process
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.decode_only:
        decode(args, Path(args.work), args.decode_only)
        return 0
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        records = encode(args, work)
        rows = []
        for setting in args.settings:
            threads, env = SETTINGS[setting]
            environment = {**os.environ, **env, "OMP_NUM_THREADS": str(threads)}
            command = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]),
                       "--decode-only", setting, "--work", str(work)]
            subprocess.run(command, env=environment, check=True)
            rows += compare(work, records, setting)
    frame = pd.DataFrame(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out / "sgfilter_tolerance.csv", index=False, float_format="%.6g")
    summary = frame.groupby("setting", sort=False).agg(
        files=("qp", "size"), enhanced=("enhanced", "mean"), map_pixels_differing_mean=("map_pixels_differing", "mean"),
        map_pixels_differing_max=("map_pixels_differing", "max"), max_pixel_diff=("max_pixel_diff", "max"),
        identical_files=("psnr_vs_encoder", lambda s: float(np.isinf(s).mean())),
        psnr_vs_encoder_min=("psnr_vs_encoder", "min"), psnr_change_db_min=("psnr_change_db", "min"),
        psnr_change_db_mean=("psnr_change_db", "mean")).reset_index()
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "benchmarks/sgfilter_tolerance.py",
                                                    *(argv if argv is not None else sys.argv[1:])])
    from semlic.fileio import atomic_write_text
    from semlic.results import git_revision

    text = ["# HEVC + SG filter: the decoder's picture on other kernels", "",
            f"`{command}` (git {git_revision()}; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
            f"{(time.time() - started) / 60:.1f} min). Encoder: this process, default kernels and threads; one decoder "
            "process per setting (threads, `DNNL_MAX_CPU_ISA`, `ATEN_CPU_CAPABILITY`).", "",
            "| " + " | ".join(summary.columns) + " |", "|" + "---|" * len(summary.columns)]
    for row in summary.itertuples(index=False):
        text.append("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row) + " |")
    atomic_write_text(out / "sgfilter_tolerance.md", "\n".join(text) + "\n")
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
