"""Calibrate semlic's baseline codecs on Kodak against published rate-distortion curves.

Codes the 24 Kodak images with every baseline of :mod:`semlic.baselines` over its default
sweep, averages per quality point as CompressAI does (mean of per-image bpp, PSNR-RGB and
MS-SSIM), and compares the curves with Bjontegaard deltas (:mod:`semlic.bd`, PCHIP and
VCEG-M33 cubic) against ../shared/anchors/kodak:

* every baseline, and HEVC in particular, against CompressAI's BPG 4:4:4 x265 curve
  (``bpg_444_x265_ycbcr.json``); HEVC is "BPG-equivalent" when |BD-PSNR| <= 0.3 dB;
* HEVC with the rate counted three ways: the whole HEIF file (what semlic counts), the bare
  HEVC stream (mdat payload + VPS/SPS/PPS, about what a BPG file holds), the mdat payload;
* JPEG, WebP and JPEG 2000 against CompressAI's own curves for those codecs.

Also measured: encode/decode seconds per image (wall clock inside 2 worker processes) and
whether each codec runs on one thread (CPU time / wall time of one encode and decode).

Writes reports/calibration.md, reports/calibration.csv (per codec per quality means),
reports/calibration_rd.png and reports/calibration_rows.parquet (every per-image row).
Usage: see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from semlic import baselines, bd, image_codecs, results  # noqa: E402
from semlic.imageio import load_image  # noqa: E402

BPG_ANCHOR = "bpg_444_x265_ycbcr.json"
OWN_ANCHORS = {"jpeg": "jpeg.json", "webp": "webp.json", "jpeg2000": "jpeg2000.json"}
TFC_BPG444 = "bpg444.txt"
BPG_EQUIVALENCE_DB = 0.3
MEAN_COLUMNS = ["bpp", "bits_per_subpixel", "psnr_rgb", "psnr_channel_mean", "ms_ssim", "enc_s", "dec_s"]


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kodak", default=str(REPO.parent / "shared" / "data" / "kodak"),
                        help="folder of kodim01..24.png (default ../shared/data/kodak)")
    parser.add_argument("--anchors", default=str(REPO.parent / "shared" / "anchors" / "kodak"),
                        help="folder of published curves (default ../shared/anchors/kodak)")
    parser.add_argument("--out", default=str(REPO / "reports"), help="report folder (default reports/)")
    parser.add_argument("--codec", action="append", choices=baselines.BASELINE_CODECS,
                        help="codecs to run (default all)")
    parser.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    parser.add_argument("--timing-images", type=int, default=3,
                        help="images of the sequential timing pass (default 3)")
    parser.add_argument("--limit", type=int, default=None, help="first N images only (smoke runs)")
    return parser.parse_args(argv)


# --- measurements ----------------------------------------------------------------------------
def code_kodak(images, codec_names, workers):
    """Rows for every image and quality, and per HEVC file its HEIF layout (bytes)."""
    with tempfile.TemporaryDirectory(prefix="semlic-calibration-") as coded_dir:
        rows = baselines.run_baselines(images, codec_names, out_dir=coded_dir, dataset="kodak", workers=workers)
        layouts, size_mismatches = {}, 0
        for row in rows:
            path = Path(coded_dir, row["method"], f"{row['image_id']}_{baselines.quality_label(row['quality'])}."
                        f"{baselines.FILE_EXTENSIONS[row['method']]}")
            size_mismatches += path.stat().st_size != row["bytes_total"]
            if row["method"] == "hevc":
                layouts[(row["image_id"], row["quality"])] = baselines.heif_layout(path.read_bytes())
    return rows, layouts, size_mismatches


def timing_pass(images, codec_names):
    """Encode and decode every sweep point of each codec, one at a time in this process.

    Returns per codec the mean wall and CPU seconds of one encode and one decode. CPU time
    counts every thread of the process: CPU/wall above 1 shows a codec working in parallel;
    below 1, the process waited for a core (other jobs on the machine).
    """
    timings = {}
    for name in codec_names:
        codec = image_codecs.get_codec(name)
        options = baselines.DEFAULT_OPTIONS.get(name, {})
        samples = []
        for image in images:
            codec.encode(image, codec.default_sweep[0], **options)  # warm-up: libraries loaded
            for quality in codec.default_sweep:
                wall, cpu = time.perf_counter(), time.process_time()
                data = codec.encode(image, quality, **options)
                enc_wall, enc_cpu = time.perf_counter() - wall, time.process_time() - cpu
                wall, cpu = time.perf_counter(), time.process_time()
                codec.decode(data)
                samples.append((enc_wall, enc_cpu, time.perf_counter() - wall, time.process_time() - cpu))
        timings[name] = np.mean(samples, axis=0)
    return timings


def mean_curves(rows, layouts):
    """Per (method, quality) means over the images, plus HEVC's HEIF byte split."""
    frame = pd.DataFrame(rows)
    if layouts:
        layout = pd.DataFrame([{"image_id": i, "quality": q, "method": "hevc", "heif_container_bytes": l.container_bytes,
                                "parameter_set_bytes": l.parameter_set_bytes, "mdat_payload_bytes": l.mdat_payload_bytes}
                               for (i, q), l in layouts.items()])
        frame = frame.merge(layout, on=["method", "image_id", "quality"], how="left")
        pixels = frame["height"] * frame["width"]
        frame["bpp_hevc_stream"] = (frame["mdat_payload_bytes"] + frame["parameter_set_bytes"]) * 8 / pixels
        frame["bpp_mdat_payload"] = frame["mdat_payload_bytes"] * 8 / pixels
    extra = [c for c in ("heif_container_bytes", "parameter_set_bytes", "bpp_hevc_stream", "bpp_mdat_payload")
             if c in frame]
    grouped = frame.groupby(["method", "quality_name", "quality"], sort=True)
    means = grouped[MEAN_COLUMNS + extra].mean().reset_index()
    means.insert(3, "n_images", grouped.size().to_numpy())
    return frame, means


def load_anchor(path):
    path = Path(path)
    if path.suffix == ".txt":
        values = np.loadtxt(path, delimiter=",")
        return {"name": path.stem, "bpp": values[:, 0], "psnr": values[:, 1]}
    data = json.loads(path.read_text())
    return {"name": data["name"], "bpp": np.asarray(data["results"]["bpp"]),
            "psnr": np.asarray(data["results"]["psnr-rgb"])}


def bd_row(label, anchor_label, anchor, bpp, psnr):
    row = {"test": label, "anchor": anchor_label, "points": len(bpp)}
    for method in bd.METHODS:
        row[f"bd_psnr_{method}"] = bd.bd_psnr(anchor["bpp"], anchor["psnr"], bpp, psnr, method=method)
        row[f"bd_rate_{method}"] = bd.bd_rate(anchor["bpp"], anchor["psnr"], bpp, psnr, method=method)
    row["common_bpp"] = f"{max(min(bpp), anchor['bpp'].min()):.3f}-{min(max(bpp), anchor['bpp'].max()):.3f}"
    return row


def bd_tables(means, anchors_dir):
    bpg = load_anchor(Path(anchors_dir, BPG_ANCHOR))
    rows = []
    for method, curve in means.groupby("method"):
        rows.append(bd_row(method, "CompressAI BPG 4:4:4", bpg, curve["bpp"], curve["psnr_rgb"]))
    hevc_rows = []
    if "hevc" in set(means["method"]):
        curve = means[means["method"] == "hevc"]
        tfc = load_anchor(Path(anchors_dir, TFC_BPG444))
        for label, column in (("hevc, whole HEIF file (counted)", "bpp"),
                              ("hevc, bare HEVC stream (mdat payload + parameter sets)", "bpp_hevc_stream"),
                              ("hevc, mdat payload only", "bpp_mdat_payload")):
            hevc_rows.append(bd_row(label, "CompressAI BPG 4:4:4", bpg, curve[column], curve["psnr_rgb"]))
        hevc_rows.append(bd_row("hevc, whole HEIF file (counted)", "tensorflow/compression BPG 4:4:4", tfc,
                                curve["bpp"], curve["psnr_rgb"]))
    own_rows = []
    for method, file_name in OWN_ANCHORS.items():
        if method in set(means["method"]):
            curve = means[means["method"] == method]
            anchor = load_anchor(Path(anchors_dir, file_name))
            own_rows.append(bd_row(method, f"CompressAI {anchor['name']}", anchor, curve["bpp"], curve["psnr_rgb"]))
    return pd.DataFrame(rows), pd.DataFrame(hevc_rows), pd.DataFrame(own_rows)


# --- outputs --------------------------------------------------------------------------------
def plot_rd(means, anchors_dir, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = dict(zip(baselines.BASELINE_CODECS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    anchor_curves = {"hevc": BPG_ANCHOR, **OWN_ANCHORS}
    figure, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    for ax, xmax in zip(axes, (None, 1.0)):
        for method, curve in means.groupby("method"):
            ax.plot(curve["bpp"], curve["psnr_rgb"], "o-", ms=3, color=colours[method], label=f"semlic {method}")
            if method in anchor_curves:
                anchor = load_anchor(Path(anchors_dir, anchor_curves[method]))
                ax.plot(anchor["bpp"], anchor["psnr"], "--", color=colours[method], alpha=0.7,
                        label=f"CompressAI {anchor['name']}")
        ax.set_xlabel("bpp (whole file bits / (H*W))")
        ax.set_ylabel("PSNR-RGB (dB)")
        ax.grid(alpha=0.3)
        if xmax is not None:
            ax.set_xlim(0, xmax)
            ax.set_ylim(22, 40)
            ax.set_title("Kodak, 24 images: low rates")
        else:
            ax.set_title("Kodak, 24 images: semlic baselines (solid) vs published (dashed)")
    axes[0].legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _run(command):
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=10, cwd=REPO).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def uncommitted_note():
    changed = sorted(line[3:] for line in _run(["git", "status", "--porcelain", "--", "semlic", "benchmarks"]).splitlines())
    return f" (plus uncommitted changes in: {', '.join(changed)})" if changed else ""


def machine_lines():
    import PIL
    import pillow_heif
    import torch
    from importlib.metadata import version
    from PIL import features

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")
    memory = next((line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), "0")
    heif = pillow_heif.libheif_info()
    return [
        f"- CPU: {cpu}; {len(os.sched_getaffinity(0))} cores usable by this process; "
        f"{int(memory) / 2**20:.1f} GiB memory; {platform.platform()}",
        f"- Python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}, "
        f"pytorch-msssim {version('pytorch-msssim')}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
        f"- Pillow {PIL.__version__} (libjpeg {features.version('jpg')}, libwebp {features.version('webp')}, "
        f"OpenJPEG {features.version('jpg_2000')}, libavif {features.version('avif')}); "
        f"pillow-heif {pillow_heif.__version__} (libheif {heif['libheif']}, {heif['HEIF']}); "
        f"pillow-jxl-plugin {version('pillow-jxl-plugin')}",
    ]


def markdown_table(frame, formats):
    columns = list(formats)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join(format(row[c], formats[c]) if formats[c] else str(row[c]) for c in columns) + " |")
    return lines


def write_report(path, context):
    c = context
    bd_formats = {"test": "", "anchor": "", "points": "d", "common_bpp": "", "bd_psnr_pchip": "+.3f",
                  "bd_rate_pchip": "+.2f", "bd_psnr_cubic": "+.3f", "bd_rate_cubic": "+.2f"}
    hevc_file = c["hevc_bd"].iloc[0] if len(c["hevc_bd"]) else None
    lines = [
        "# Calibration of the baseline codecs on Kodak",
        "",
        f"Generated by `benchmarks/calibrate_baselines.py` on {c['date']} (UTC), {c['wall_min']:.1f} min wall clock.",
        "Every figure below is measured by that run or read from ../shared/anchors/kodak; nothing is typed in.",
        "",
        "## Run",
        f"- Command (from the repository root): `{c['command']}`",
        f"- git revision: {c['git_rev']}{c['dirty']}",
        *machine_lines(),
        f"- Load average (1 min) at the start / at the timing pass / at the end: {c['load_before']:.2f} / "
        f"{c['timing_load']:.2f} / {c['load_after']:.2f} "
        "(the machine is shared with other jobs: timings are indicative)",
        f"- {c['n_images']} images, {c['n_rows']} coded files; files whose size on disk differs from the row's "
        f"bytes_total: {c['size_mismatches']}",
        "",
        "Conventions: bpp = whole file bits / (H*W); PSNR over the RGB MSE of 8-bit images; MS-SSIM on 8-bit RGB "
        "(data range 255); means over images per quality point (CompressAI). BD: PCHIP (default of semlic.bd) and "
        "VCEG-M33 cubic, rate in bpp, PSNR-RGB; negative BD-rate / positive BD-PSNR = better than the anchor.",
        "",
        "## HEVC (x265 4:4:4, psy-rd off) against CompressAI's BPG 4:4:4",
    ]
    if hevc_file is not None:
        verdict = ("within" if abs(hevc_file["bd_psnr_pchip"]) <= BPG_EQUIVALENCE_DB else "OUTSIDE")
        lines += [
            f"Counting the whole HEIF file, BD-PSNR = {hevc_file['bd_psnr_pchip']:+.3f} dB "
            f"(BD-rate {hevc_file['bd_rate_pchip']:+.2f} %): {verdict} the +-{BPG_EQUIVALENCE_DB} dB tolerance for "
            "calling it BPG-equivalent.",
            "",
            *markdown_table(c["hevc_bd"], bd_formats),
            "",
            f"HEIF container overhead (file size minus mdat payload), mean over all HEVC files: "
            f"{c['container_mean']:.1f} bytes (range {c['container_min']}-{c['container_max']}); of it, the HEVC "
            f"parameter sets (VPS/SPS/PPS in hvcC), which a raw stream needs too: {c['param_mean']:.1f} bytes. "
            f"At the lowest rate point this is {c['container_share_low']:.1f} % of the file, at the highest "
            f"{c['container_share_high']:.2f} %.",
            "",
        ]
    lines += ["## Every baseline against CompressAI's BPG 4:4:4", "", *markdown_table(c["bpg_bd"], bd_formats), ""]
    if len(c["own_bd"]):
        lines += ["## JPEG, WebP, JPEG 2000 against CompressAI's curves for the same codecs", "",
                  *markdown_table(c["own_bd"], bd_formats), ""]
    lines += [
        "## Encode / decode time per Kodak image (768x512), seconds",
        "Seconds of one `codec.encode` / `codec.decode` call (numpy <-> Pillow conversion included), mean over the "
        f"quality sweep. `*_wall_s`, `*_cpu_s`: a sequential pass over {c['timing_images']} image(s) in one process "
        "after the main run; CPU time counts all threads of the process, so CPU/wall above 1 would show a codec "
        "working in parallel (x265, libavif and libjxl are told to use one thread in semlic/image_codecs.py; Pillow's "
        "JPEG, WebP and OpenJPEG are given no thread option). `*_in_run`: wall clock inside the "
        f"{c['workers']} worker processes of the main run, over all images (inflated when the cores are busy).",
        "",
        *markdown_table(c["timing"], {"method": "", "enc_wall_s": ".3f", "enc_cpu_s": ".3f", "dec_wall_s": ".4f",
                                      "dec_cpu_s": ".4f", "enc_cpu_per_wall": ".2f", "dec_cpu_per_wall": ".2f",
                                      "enc_wall_s_in_run": ".3f", "dec_wall_s_in_run": ".4f"}),
        "",
        "## Mean rate-distortion points (also in calibration.csv)",
        "",
        *markdown_table(c["means"], {"method": "", "quality_name": "", "quality": "g", "n_images": "d", "bpp": ".4f",
                                     "psnr_rgb": ".3f", "psnr_channel_mean": ".3f", "ms_ssim": ".5f"}),
        "",
        "RD plot: calibration_rd.png. Per-image rows: calibration_rows.parquet (semlic.results schema).",
    ]
    Path(path).write_text("\n".join(lines) + "\n")


def timing_table(frame, timings):
    rows = []
    for method, group in frame.groupby("method"):
        enc_wall, enc_cpu, dec_wall, dec_cpu = timings[method]
        rows.append({
            "method": method, "enc_wall_s": enc_wall, "enc_cpu_s": enc_cpu, "dec_wall_s": dec_wall,
            "dec_cpu_s": dec_cpu, "enc_cpu_per_wall": enc_cpu / enc_wall, "dec_cpu_per_wall": dec_cpu / dec_wall,
            "enc_wall_s_in_run": group["enc_s"].mean(), "dec_wall_s_in_run": group["dec_s"].mean(),
        })
    return pd.DataFrame(rows)


def main(argv=None):
    args = parse_args(argv)
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    codec_names = args.codec or list(baselines.BASELINE_CODECS)
    images = sorted(Path(args.kodak).glob("kodim*.png"))[: args.limit]
    if not images:
        sys.exit(f"no kodim*.png in {args.kodak}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    rows, layouts, size_mismatches = code_kodak(images, codec_names, args.workers)
    timing_load = os.getloadavg()[0]
    timings = timing_pass([load_image(p) for p in images[: args.timing_images]], codec_names)
    results.write_rows(rows, out / "calibration_rows.parquet")
    frame, means = mean_curves(rows, layouts)
    means.to_csv(out / "calibration.csv", index=False, float_format="%.6f")
    bpg_bd, hevc_bd, own_bd = bd_tables(means, args.anchors)
    plot_rd(means, args.anchors, out / "calibration_rd.png")

    hevc = frame[frame["method"] == "hevc"]
    context = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "wall_min": (time.perf_counter() - started) / 60,
        "command": shlex.join([os.path.relpath(sys.executable, Path.cwd()), *sys.argv]),
        "git_rev": results.git_revision(REPO),
        "dirty": uncommitted_note(),
        "load_before": load_before, "load_after": os.getloadavg()[0],
        "n_images": len(images), "n_rows": len(rows), "size_mismatches": size_mismatches, "workers": args.workers,
        "bpg_bd": bpg_bd, "hevc_bd": hevc_bd, "own_bd": own_bd, "means": means,
        "timing": timing_table(frame, timings), "timing_images": min(args.timing_images, len(images)),
        "timing_load": timing_load,
    }
    if len(hevc):
        shares = hevc.groupby("quality")[["heif_container_bytes", "bytes_total"]].mean()
        share = shares["heif_container_bytes"] / shares["bytes_total"] * 100
        context.update(container_mean=hevc["heif_container_bytes"].mean(),
                       container_min=int(hevc["heif_container_bytes"].min()),
                       container_max=int(hevc["heif_container_bytes"].max()),
                       param_mean=hevc["parameter_set_bytes"].mean(),
                       container_share_low=share.loc[shares["bytes_total"].idxmin()],
                       container_share_high=share.loc[shares["bytes_total"].idxmax()])
    write_report(out / "calibration.md", context)
    print((out / "calibration.md").read_text())


if __name__ == "__main__":
    main()
