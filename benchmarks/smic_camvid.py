"""SMIC trained on CamVid on the CPU, measured on the CamVid test split against the classical codecs.

    OMP_NUM_THREADS=2 .venv/bin/semlic prepare --dataset camvid --root ../shared/data/camvid \\
        --out runs/smic/prep --size 360 480
    OMP_NUM_THREADS=2 .venv/bin/semlic train-smic --data runs/smic/prep --out runs/smic/models \\
        --config reports/smic/train_smic.yaml
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/smic_camvid.py --prepared runs/smic/prep \\
        --models runs/smic/models --out reports/smic

Codes every image of the test split (native 480x360) with SMIC over its factor x map-QP grid
and with JPEG, JPEG 2000, WebP and HEVC 4:4:4 over their low-rate settings (one real file
each; bpp = every byte / (H W)); every row carries PSNR-RGB, MS-SSIM and LPIPS (AlexNet, the
published weights: semlic convert-lpips). Scores SS-Net's map against the ground truth (mIoU,
pixel accuracy), raw and after the map's HEVC coding at each QP. Writes to ``--out``:
``rows.parquet`` (every row), ``curves.csv`` (mean RD points), ``segmentation.csv``,
``rd.png`` (PSNR, MS-SSIM and LPIPS against bpp) and ``measured.md`` (the tables, the command,
the times), which reports/smic.md quotes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from semlic import reporting, lpips, results  # noqa: E402
from semlic.baselines import run_baselines  # noqa: E402
from semlic.code_stage import CodingSample, MethodPlan, code_method  # noqa: E402
from semlic.fileio import atomic_write_text  # noqa: E402
from semlic.model_files import ModelStore, read_metadata  # noqa: E402
from semlic.segnet.prepared import list_prepared  # noqa: E402

BASELINE_SWEEPS = {"jpeg": [5, 10, 15, 20, 30], "jpeg2000": [400, 240, 160, 100, 64, 40],
                   "webp": [0, 5, 10, 20, 35], "hevc": [51, 48, 45, 42, 39, 36]}
SMIC_GRID = [[16, 40], [16, 28], [8, 40], [8, 28], [4, 40], [4, 28]]
LOW_RATE = 0.3   # bpp: the paper's regime (its ~0.07 bits per sub-pixel is ~0.2 bpp)


def segmentation_scores(samples, models, qps, chroma) -> pd.DataFrame:
    """mIoU / pixel accuracy of SS-Net's map against the labels: raw, and decoded at each map QP."""
    import torch

    from semlic.image_codecs import get_codec
    from semlic.imageio import load_image, load_label_map
    from semlic.methods.smic.codec import draw_map
    ssnet = models["smic_ssnet"]
    k = ssnet.config.num_classes
    hevc = get_codec("hevc")
    # rows: true class (void pixels ignored); columns: predicted class, k = predicted void (always wrong)
    confusions = {label: np.zeros((k, k + 1), np.int64) for label in ["raw"] + [f"qp{q}" for q in qps]}
    for sample in samples:
        drawn = draw_map(ssnet, load_image(sample.image_path))
        truth = torch.from_numpy(load_label_map(sample.label_path))
        maps = {"raw": drawn, **{f"qp{q}": hevc.decode(hevc.encode(drawn, q, chroma=chroma), 3) for q in qps}}
        for label, colours in maps.items():
            unit = torch.from_numpy(colours).permute(2, 0, 1)[None].float() / 127.5 - 1
            predicted = ssnet.labels(unit)[0].numpy()
            valid = truth.numpy() < k
            confusions[label] += np.bincount(truth.numpy()[valid].astype(np.int64) * (k + 1) + predicted[valid],
                                             minlength=k * (k + 1)).reshape(k, k + 1)
    rows = []
    for label, confusion in confusions.items():
        tp = np.diag(confusion[:, :k]).astype(float)
        union = confusion.sum(1) + confusion[:, :k].sum(0) - tp
        present = confusion.sum(1) > 0
        rows.append({"map": label, "miou": float(np.mean(tp[present] / union[present])),
                     "pixel_accuracy": float(tp.sum() / confusion.sum()), "images": len(samples)})
    return pd.DataFrame(rows)


def equal_rate_table(curves: pd.DataFrame, method: str = "smic") -> pd.DataFrame:
    """At each SMIC point: each baseline's PSNR, MS-SSIM and LPIPS at the same bpp (log-bpp interpolation)."""
    records = []
    for point in curves[curves["method"] == method].sort_values("bpp").itertuples():
        record = {"smic_quality": point.quality, "bpp": point.bpp, "smic_psnr": point.psnr_rgb,
                  "smic_ms_ssim": point.ms_ssim, "smic_lpips": point.lpips}
        for codec in BASELINE_SWEEPS:
            curve = curves[curves["method"] == codec].sort_values("bpp")
            x = np.log(curve["bpp"].to_numpy())
            inside = len(curve) >= 2 and x.min() <= math.log(point.bpp) <= x.max()
            for column, short in (("psnr_rgb", "psnr"), ("ms_ssim", "ms_ssim"), ("lpips", "lpips")):
                record[f"{codec}_{short}"] = (float(np.interp(math.log(point.bpp), x, curve[column].to_numpy()))
                                              if inside else math.nan)
        records.append(record)
    return pd.DataFrame(records)


def plot(curves: pd.DataFrame, path: Path, limit: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    for method, curve in curves.groupby("method", sort=True):
        curve = curve[curve["bpp"] <= limit].sort_values("bpp")
        style = dict(marker="o", markersize=4, linewidth=2.2 if method == "smic" else 1.3)
        for ax, column in zip(axes, ("psnr_rgb", "ms_ssim", "lpips")):
            if method == "smic":  # one line per factor: the map QP moves along it
                for factor, part in curve.groupby(curve["quality"] // 100):
                    ax.plot(part["bpp"], part[column], label=f"smic f{int(factor)}", **style)
            else:
                ax.plot(curve["bpp"], curve[column], label=method, **style)
    for ax, label in zip(axes, ("PSNR-RGB (dB)", "MS-SSIM", "LPIPS (AlexNet; lower is better)")):
        ax.set_xlabel("bits per pixel (whole file)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.axvline(LOW_RATE, color="0.6", linestyle=":", linewidth=1)
    axes[2].legend(fontsize=7)
    figure.suptitle(f"CamVid test, mean over the images at each setting (rates up to {limit} bpp)")
    figure.tight_layout()
    figure.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(figure)


def _md(frame: pd.DataFrame, digits: int = 3) -> str:
    def cell(v):
        return "-" if isinstance(v, float) and not math.isfinite(v) else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def training_summary(models_dir: Path) -> list[dict]:
    out = []
    for name, part in (("smic_ssnet", "ssnet"), ("smic_recnet", "recnet")):
        path = models_dir / part / f"{name}.safetensors"
        log = pd.read_parquet(models_dir / part / "train_log.parquet")
        meta = read_metadata(path)
        out.append({"model": name, "iterations": int(json.loads(meta.get("iterations", "0"))),
                    "planned": int(json.loads(meta.get("planned_iterations", "0"))),
                    "minutes": float(log["seconds"].max()) / 60, "images_per_s": float(log["images_per_s"].median()),
                    "first_l1": float(log["l1"].iloc[:5].mean()), "last_l1": float(log["l1"].iloc[-5:].mean()),
                    "parameters_m": sum(t.numel() for t in ModelStore(files=[path]).get(name).parameters()) / 1e6})
    return out


def arguments(description: str) -> argparse.ArgumentParser:
    """The arguments the SMIC benchmarks share: the prepared data, train-smic's models, where to write."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--prepared", required=True)
    parser.add_argument("--models", required=True, help="train-smic's output folder (ssnet/, recnet/)")
    parser.add_argument("--out", default="reports/smic")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, help="only the first N images")
    return parser


def main(argv=None) -> int:
    parser = arguments(__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="processes for the baselines")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    samples = list_prepared(args.prepared, args.split)[: args.limit or None]
    if lpips.get_model() is None:
        raise SystemExit("LPIPS weights missing: run `semlic convert-lpips` (make weights) first")
    store = ModelStore(dirs=[args.models])
    plan = MethodPlan.from_section("smic", {"qualities": SMIC_GRID})
    models = store.models(plan.method.models + plan.method.encoder_models)
    t = time.time()
    rows = code_method([CodingSample(s.id, s.image_path) for s in samples], plan, models, dataset="camvid")
    smic_s = time.time() - t
    t = time.time()
    rows += run_baselines([s.image_path for s in samples], list(BASELINE_SWEEPS), sweep=BASELINE_SWEEPS,
                          dataset="camvid", workers=args.workers)
    baselines_s = time.time() - t
    results.write_rows(rows, out / "rows.parquet")
    frame = pd.DataFrame(rows)
    curves = reporting.rd_curves(frame)
    curves.to_csv(out / "curves.csv", index=False, float_format="%.6g")
    segmentation = segmentation_scores(samples, models, sorted({q for _, q in SMIC_GRID}), "420")
    segmentation.to_csv(out / "segmentation.csv", index=False, float_format="%.6g")
    plot(curves, out / "rd.png", limit=0.6)
    equal = equal_rate_table(curves[curves["bpp"] <= 0.6])
    training = training_summary(Path(args.models))
    low = curves[curves["bpp"] <= LOW_RATE].sort_values(["method", "bpp"])
    command = " ".join(shlex.quote(a) for a in [f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')}",
                                                 ".venv/bin/python", "benchmarks/smic_camvid.py", *sys.argv[1:]])
    text = [f"- Measurement: `{command}` (git {results.git_revision()}; {len(samples)} images; SMIC coding "
            f"{smic_s / 60:.1f} min, baselines {baselines_s / 60:.1f} min, wall {(time.time() - started) / 60:.1f} min; "
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs)",
            "", "### Training", "", _md(pd.DataFrame(training), 3), "",
            "### SS-Net's map against the ground truth (CamVid test, 11 classes, void ignored)", "",
            _md(segmentation, 3), "",
            f"### Mean RD points below {LOW_RATE} bpp", "",
            _md(low[["method", "quality", "bpp", "psnr_rgb", "ms_ssim", "lpips", "images"]], 3), "",
            "### At SMIC's rates: each baseline interpolated to the same bpp (log-bpp, within its measured range)", "",
            _md(equal, 3), ""]
    atomic_write_text(out / "measured.md", "\n".join(text) + "\n")
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
