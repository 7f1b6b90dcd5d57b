"""Segmentation in the learned compressed domain, trained on CamVid on the CPU: the paper's Tables 1-3.

    OMP_NUM_THREADS=2 .venv/bin/semlic prepare --dataset camvid --root ../shared/data/camvid \\
        --out runs/latent_seg/prep --size 360 480
    OMP_NUM_THREADS=2 .venv/bin/semlic train-hyperprior --data runs/latent_seg/prep \\
        --out runs/latent_seg/hyperprior --config reports/latent_seg/config.yaml
    OMP_NUM_THREADS=2 .venv/bin/semlic train-latent-seg --data runs/latent_seg/prep \\
        --hyperprior runs/latent_seg/hyperprior/hyperprior.safetensors --out runs/latent_seg/models \\
        --config reports/latent_seg/config.yaml
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/latent_seg_camvid.py --prepared runs/latent_seg/prep \\
        --hyperprior runs/latent_seg/hyperprior/hyperprior.safetensors --models runs/latent_seg/models

Measures, from real files, on the CamVid test split: mIoU and bpp of the pixel domain (decode,
then the teacher) and of every student (no gate, Module-Res, dynamic gate, static N) at each
hyperprior quality; encode and decode + task times; the MACs of the transform modules; and the
hyperprior's own rate-distortion on Kodak beside CompressAI's published curve and HEVC 4:4:4.
Writes to ``--out``: rows.parquet, summary.csv, macs.csv, rate_miou.png, metrics.json (as the
eval_latent_seg stage), kodak_rd.csv, kodak_rd.png, training.csv and measured.md (the tables,
the commands, the times), which reports/latent_seg.md quotes.
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

from semlic import reporting, bd, results  # noqa: E402
from semlic.baselines import run_baselines  # noqa: E402
from semlic.code_stage import CodingSample, MethodPlan, code_method  # noqa: E402
from semlic.fileio import atomic_write_text  # noqa: E402
from semlic.imageio import load_image  # noqa: E402
from semlic.methods.latent_seg import evaluate  # noqa: E402
from semlic.methods.latent_seg.commands import teacher_path  # noqa: E402
from semlic.model_files import load_model, read_metadata  # noqa: E402
from semlic.segnet.prepared import list_prepared  # noqa: E402

ANCHOR = Path(__file__).resolve().parent.parent.parent / "shared" / "anchors" / "kodak" / \
    "compressai-bmshj2018-hyperprior_mse_cuda.json"
HEVC_QPS = [44, 40, 37, 34, 31, 28]


def _md(frame: pd.DataFrame, digits: int = 3) -> str:
    def cell(v):
        if isinstance(v, float):
            return "-" if not math.isfinite(v) else f"{v:.{digits}f}"
        return str(v)

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def training_table(hyperprior_dir: Path, models_dir: Path) -> pd.DataFrame:
    """Every trained part: iterations done / planned, minutes, images/s, the last logged losses."""
    rows = []
    parts = [(f"hyperprior {p.name}", p) for p in sorted(hyperprior_dir.glob("q*"))]
    parts += [("teacher deeplabv3", models_dir / "teacher")]
    parts += [(f"{q.name} {s.name}", s) for q in sorted(models_dir.glob("q*")) for s in sorted(q.iterdir()) if s.is_dir()]
    for name, folder in parts:
        log_path = folder / "train_log.parquet"
        model = next((p for p in folder.glob("*.safetensors") if p.name != "train_state.safetensors"), None)
        if not log_path.is_file() or model is None:
            continue
        log, meta = pd.read_parquet(log_path), read_metadata(model)
        last = log.iloc[-5:]
        row = {"part": name, "iterations": int(json.loads(meta.get("iterations", "0"))),
               "planned": int(json.loads(meta.get("planned_iterations", "0"))),
               "minutes": float(log["seconds"].max()) / 60, "images_per_s": float(log["images_per_s"].median())}
        for column in ("loss", "bpp", "psnr", "ce", "kd", "selected"):
            if column in log:
                row[column] = float(last[column].mean())
        rows.append(row)
    return pd.DataFrame(rows)


def _bd_psnr(anchor_rate, anchor_psnr, rate, psnr) -> float:
    """BD-PSNR, NaN when a curve has under two points or the rates do not overlap."""
    try:
        return bd.bd_psnr(list(anchor_rate), list(anchor_psnr), list(rate), list(psnr))
    except Exception:  # noqa: BLE001  (too short, no overlap)
        return math.nan


def table1(summary: pd.DataFrame) -> pd.DataFrame:
    """Pixel vs compressed domain (no gate) at each quality: the same file, so the same bpp."""
    out = []
    for quality, group in summary.groupby("quality"):
        g = group.set_index("method")
        if "pixel" not in g.index or "no_gate" not in g.index:
            continue
        pixel, comp = g.loc["pixel"], g.loc["no_gate"]
        out.append({"quality": int(quality), "bpp": pixel.bpp, "miou_pixel": pixel.miou, "miou_compressed": comp.miou,
                    "gain_pct": 100 * (comp.miou / pixel.miou - 1) if pixel.miou > 0 else math.nan,
                    "psnr_decoded": pixel.psnr_rgb})
    return pd.DataFrame(out)


def channel_table(summary: pd.DataFrame) -> pd.DataFrame:
    order = {"pixel": 0, "no_gate": 1, "no_gate_res": 2, "dynamic": 3}
    frame = summary.assign(_o=summary["method"].map(lambda m: order.get(m, 4)), _c=-summary["channels"])
    frame = frame.sort_values(["quality", "_o", "_c"])
    return frame[["quality", "method", "channels", "bpp", "bpp_image", "miou", "pixel_accuracy"]]


def rate_saving(summary: pd.DataFrame, reference: str = "pixel") -> pd.DataFrame:
    """Bits each compressed-domain curve saves at the same mIoU as ``reference`` (log-rate interpolation
    over the qualities; only where the mIoU ranges overlap)."""
    out = []
    ref = summary[summary["method"] == reference].sort_values("miou")
    for method, curve in summary[summary["method"] != reference].groupby("method"):
        curve = curve.sort_values("miou")
        if len(curve) < 2 or len(ref) < 2:
            continue
        low, high = max(ref.miou.min(), curve.miou.min()), min(ref.miou.max(), curve.miou.max())
        if not high > low:
            out.append({"method": method, "miou_range": "-", "bits_saved_pct": math.nan})
            continue
        grid = np.linspace(low, high, 50)
        r_ref = np.interp(grid, ref.miou, np.log(ref.bpp))
        r_cur = np.interp(grid, curve.miou, np.log(curve.bpp))
        out.append({"method": method, "miou_range": f"{low:.3f}-{high:.3f}",
                    "bits_saved_pct": float(100 * (1 - np.exp(np.mean(r_cur - r_ref))))})
    return pd.DataFrame(out)


def kodak_rd(kodak: Path, bank_path: Path, qualities, workers: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows, curves) of the hyperprior and HEVC 4:4:4 on Kodak."""
    images = sorted(kodak.glob("kodim*.png"))
    plan = MethodPlan.from_section("hyperprior", {"qualities": list(qualities)})
    rows = code_method([CodingSample(p.stem, p) for p in images], plan, {"hyperprior": load_model(bank_path)},
                       dataset="kodak", progress=False)
    rows += run_baselines(images, ["hevc"], sweep={"hevc": HEVC_QPS}, dataset="kodak", workers=workers,
                          progress=False)
    frame = pd.DataFrame(rows)
    return frame, reporting.rd_curves(frame)


def plot_kodak(curves: pd.DataFrame, anchor: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.plot(anchor["bpp"], anchor["psnr-rgb"], "k--", marker="s", markersize=3,
            label="CompressAI bmshj2018-hyperprior (published, q1-8)")
    for method, curve in curves.groupby("method"):
        curve = curve.sort_values("bpp")
        ax.plot(curve["bpp"], curve["psnr_rgb"], marker="o", label=f"{method} (measured here)")
    ax.set_xlabel("bits per pixel (whole file)")
    ax.set_ylabel("PSNR-RGB (dB)")
    ax.set_xlim(0, 1.8)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("Kodak (24 images)")
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prepared", required=True)
    parser.add_argument("--hyperprior", required=True, help="the hyperprior bank (train-hyperprior's)")
    parser.add_argument("--models", required=True, help="train-latent-seg's output folder")
    parser.add_argument("--kodak", default=str(Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "kodak"))
    parser.add_argument("--out", default="reports/latent_seg")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, help="only the first N images")
    parser.add_argument("--workers", type=int, default=2, help="processes for the HEVC baseline")
    args = parser.parse_args(argv)
    out, models_dir, bank_path = Path(args.out), Path(args.models), Path(args.hyperprior)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    bank = load_model(bank_path, expect="hyperprior")
    teacher = load_model(teacher_path(models_dir), expect="deeplabv3")
    students = evaluate.load_students(models_dir)
    samples = [s for s in list_prepared(args.prepared, args.split) if s.label_path is not None][: args.limit or None]
    t = time.time()
    rows = evaluate.evaluate(samples, bank, teacher, students, dataset="camvid")
    eval_s = time.time() - t
    size = load_image(samples[0].image_path).shape[:2]
    evaluate.write_outputs(rows, out, students, size)
    summary = evaluate.summary(rows)
    macs = evaluate.transform_macs(students, *size)
    training = training_table(bank_path.parent, models_dir)
    training.to_csv(out / "training.csv", index=False, float_format="%.6g")
    t = time.time()
    kodak_rows, kodak_curves = kodak_rd(Path(args.kodak), bank_path, bank.config.qualities, args.workers)
    kodak_s = time.time() - t
    kodak_curves.to_csv(out / "kodak_rd.csv", index=False, float_format="%.6g")
    anchor = json.loads(ANCHOR.read_text())["results"]
    plot_kodak(kodak_curves, anchor, out / "kodak_rd.png")
    ours = kodak_curves[kodak_curves["method"] == "hyperprior"].sort_values("quality")
    hevc = kodak_curves[kodak_curves["method"] == "hevc"].sort_values("bpp")
    kodak_table = pd.DataFrame([{"quality": int(r.quality), "bpp": r.bpp, "psnr_rgb": r.psnr_rgb, "ms_ssim": r.ms_ssim,
                                 "published_bpp": anchor["bpp"][int(r.quality) - 1],
                                 "published_psnr": anchor["psnr-rgb"][int(r.quality) - 1]} for r in ours.itertuples()])
    versus_published = _bd_psnr(anchor["bpp"], anchor["psnr-rgb"], ours["bpp"], ours["psnr_rgb"])
    versus_hevc = _bd_psnr(hevc["bpp"], hevc["psnr_rgb"], ours["bpp"], ours["psnr_rgb"])
    time_table = summary.groupby("method", sort=False)[["enc_s", "task_s", "channels"]].median().reset_index()
    command = " ".join(shlex.quote(a) for a in [f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')}",
                                                 ".venv/bin/python", "benchmarks/latent_seg_camvid.py", *sys.argv[1:]])
    text = [f"- Measurement: `{command}` (git {results.git_revision()}; {len(samples)} CamVid {args.split} images at "
            f"{size[1]}x{size[0]}, evaluation {eval_s / 60:.1f} min; Kodak {kodak_s / 60:.1f} min; wall "
            f"{(time.time() - started) / 60:.1f} min; {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} CPUs, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')})",
            "", "### Training (2 CPU cores; budgets in minutes, iterations are how far each part got)", "",
            _md(training, 4), "",
            "### Table 1 shape: pixel domain vs compressed domain (no gate) at the same file", "",
            _md(table1(summary), 3), "",
            "### Fig. 5/6 shape: every student at each quality (bpp of the task's file; bpp_image adds the rest)", "",
            _md(channel_table(summary), 4), "",
            "### Bits saved against the pixel domain at equal mIoU (over the qualities)", "",
            _md(rate_saving(summary), 1), "",
            f"### Table 2 shape: transform modules (MACs for a {size[1]}x{size[0]} image)", "",
            _md(macs.merge(summary[["method", "quality", "bpp", "miou"]], on=["method", "quality"]), 3), "",
            "### Table 3 shape: median seconds per image over the qualities (2 CPU threads)", "",
            _md(time_table, 3), "",
            "### The hyperprior on Kodak beside CompressAI's published curve", "",
            _md(kodak_table, 3), "",
            f"BD-PSNR against CompressAI's published curve: {versus_published:.2f} dB; against HEVC 4:4:4 measured "
            f"here: {versus_hevc:.2f} dB (over the overlapping rates).", ""]
    atomic_write_text(out / "measured.md", "\n".join(text))
    kodak_rows_path = out / "kodak_rows.parquet"
    results.write_rows(kodak_rows.to_dict("records"), kodak_rows_path)
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
