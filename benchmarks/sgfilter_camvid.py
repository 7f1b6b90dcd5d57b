"""HEVC + SG filter trained on CamVid on the CPU, measured against HEVC 4:4:4 on CamVid test and Kodak.

    .venv/bin/python benchmarks/sgfilter_camvid.py --prepared data/prepared --segnet data/models/segnet/segnet.safetensors \\
        --work runs/sgfilter --out reports/sgfilter

Trains the enhancement network of each map source (``derived``: the map PSPNet derives from the
decoded image, the method; ``none``: the plain post-filter; ``sent``: the encoder's map sent
losslessly), the same network and the same number of steps each (an iteration budget: the result
does not depend on what else shares the CPU), on ``<prepared>/camvid``'s train split HEVC 4:4:4-coded
at the QP grid. Then codes every test image of CamVid and of Kodak (``<prepared>/kodak``, with the
CamVid-trained networks) with each method at each QP of the grid, one real file each, decoded from its
bytes, and with HEVC 4:4:4 at the same QPs (the baseline's files, which each method's image layer
repeats byte for byte). Every row carries PSNR-RGB, MS-SSIM and LPIPS (when the LPIPS weights are
there) and the encode and decode seconds. Writes to ``--out``: ``rows.parquet`` (every file), ``truth_rows.parquet`` (the ground-truth bound: HEVC's file, the
network given the labels; CamVid only),
``curves.csv`` (mean RD points), ``bd.csv`` (BD-rate and BD-distortion of each method against HEVC on
each metric), ``training.csv``, ``rd.png`` and ``measured.md`` (the tables, the command, the times).
Resumable: trained networks are kept in ``--work``, and a rerun trains on from their state; the rows of
each (data set, method) are kept there too (``rows/``, written every ``--chunk`` images), and a rerun
reads them back and codes only what is missing.
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

from semlic import reporting, bd, lpips, results  # noqa: E402
from semlic.baselines import run_baselines  # noqa: E402
from semlic.code_stage import CodingSample, MethodPlan, code_method  # noqa: E402
from semlic.errors import ConfigError  # noqa: E402
from semlic.fileio import atomic_write_text  # noqa: E402
from semlic.methods.sgfilter.training import NETWORKS, model_path, train_sgfilter  # noqa: E402
from semlic.model_files import load_model, read_metadata  # noqa: E402
from semlic.segnet.prepared import list_prepared  # noqa: E402

METHODS = {"derived": "sgfilter", "none": "sgfilter_nomap", "sent": "sgfilter_sent"}
TRUTH = "sgfilter_truth"   # the network given the ground truth: an upper bound, rate = HEVC's file
METRICS = (("psnr_rgb", 1.0, "dB"), ("ms_ssim", 1.0, ""), ("lpips", -1.0, ""))   # (column, sign: higher is better)


def truth_rows(samples, net, segnet, qps: list[int], dataset: str, with_lpips: bool) -> list[dict]:
    """HEVC 4:4:4 at each QP, then the network with the ground-truth classes (no codec: the map costs
    nothing here, so the rate is HEVC's file): the bound on what a map can add. Where the network would
    lower the PSNR, HEVC's picture is kept, as the methods' encoder flag does."""
    from semlic import metrics
    from semlic.baselines import code_image_bytes
    from semlic.imageio import load_image
    from semlic.methods.sgfilter.network import enhance
    from semlic.methods.sgfilter.training import truth_classes

    rows = []
    classes = int(segnet.config.num_classes)
    for sample in samples:
        image = load_image(sample.image_path)
        labels = truth_classes(sample, classes)
        reference = lpips.reference(image, "cpu", enabled=with_lpips)
        for qp in qps:
            coded = code_image_bytes(image, "hevc", qp)
            start = time.perf_counter()
            out = enhance(net, coded.reconstruction, labels, qp)
            if metrics.psnr_rgb(image, out) <= metrics.psnr_rgb(image, coded.reconstruction):
                out = coded.reconstruction   # the flag, as the method's encoder decides it
            seconds = time.perf_counter() - start
            h, w = image.shape[:2]
            rows.append({"dataset": dataset, "method": TRUTH, "image_id": sample.id, "quality": float(qp),
                         "bpp": 8 * len(coded.data) / (h * w), "bits_per_subpixel": 8 * len(coded.data) / (3 * h * w),
                         "psnr_rgb": metrics.psnr_rgb(image, out), "psnr_channel_mean": metrics.psnr_channel_mean(image, out),
                         "ms_ssim": metrics.ms_ssim_rgb(image, out), "lpips": reference.distance(out),
                         "enc_s": coded.enc_s, "dec_s": coded.dec_s + seconds})
    return rows


def layered_rows(samples, files_dir: Path, models_dir: Path, nets: dict, segnet, dataset: str,
                 folders=("dsslic", "edms")) -> list[dict]:
    """The enhancement after DSSLIC's and EDMS's reconstruction (their files as the reference run coded them,
    residual included): each file decoded from its bytes, then the network (QP input: the residual's QP;
    55 for a file without one). ``<folder>+<net>``: the enhanced picture, its rate the file plus one byte
    (the flag an encoder would send); the flag is set where the network lowers the error, as the method's
    encoder decides. Rows of the files themselves come with them, for the same images."""
    from semlic import format as fmt
    from semlic import metrics
    from semlic.imageio import load_image
    from semlic.layered_codec import segment_image
    from semlic.machines import coded_files
    from semlic.methods import get_method
    from semlic.methods.sgfilter.network import enhance
    from semlic.model_files import ModelStore

    store = ModelStore(dirs=[models_dir])
    rows = []
    for sample in samples:
        image = load_image(sample.image_path)
        h, w = image.shape[:2]
        for folder, versions in coded_files(files_dir / dataset, sample.id).items():
            if folder not in folders:
                continue
            for label, path in versions:
                data = path.read_bytes()
                method = get_method(fmt.unpack(data).method)
                models = store.models(method.models)
                decoded = method.decode(data, models)
                qp = method.describe(method.open(data, models)).get("residual_qp")
                qp = 55 if qp is None else int(qp)
                base = {"dataset": dataset, "image_id": sample.id, "quality": float(label) if label != "none" else -1.0}
                psnr = metrics.psnr_rgb(image, decoded)
                rows.append({**base, "method": folder, "bpp": 8 * len(data) / (h * w), "psnr_rgb": psnr,
                             "ms_ssim": metrics.ms_ssim_rgb(image, decoded)})
                for net_name, net in nets.items():
                    labels = segment_image(segnet, decoded) if net.uses_map else None
                    out = enhance(net, decoded, labels, min(qp, 51))
                    gain = metrics.psnr_rgb(image, out)
                    keep = gain > psnr
                    rows.append({**base, "method": f"{folder}+{net_name}", "bpp": 8 * (len(data) + 1) / (h * w),
                                 "psnr_rgb": gain if keep else psnr,
                                 "ms_ssim": metrics.ms_ssim_rgb(image, out if keep else decoded)})
    return rows


def bd_rows(curves: pd.DataFrame) -> pd.DataFrame:
    """BD-rate (%) and BD-distortion of every method against HEVC on each metric, per data set."""
    records = []
    for dataset, per in curves.groupby("dataset", sort=True):
        anchor = per[per["method"] == "hevc"].sort_values("bpp")
        for method, curve in per[per["method"] != "hevc"].groupby("method", sort=True):
            curve = curve.sort_values("bpp")
            record = {"dataset": dataset, "method": method, "points": len(curve)}
            for column, sign, _ in METRICS:
                if curve[column].isna().any() or anchor[column].isna().any():
                    record[f"bd_rate_{column}_pct"] = record[f"bd_{column}"] = math.nan
                    continue
                args = (anchor["bpp"], sign * anchor[column], curve["bpp"], sign * curve[column])
                try:
                    record[f"bd_rate_{column}_pct"] = bd.bd_rate(*args)
                    record[f"bd_{column}"] = sign * bd.bd_psnr(*args)
                except ConfigError:
                    record[f"bd_rate_{column}_pct"] = record[f"bd_{column}"] = math.nan
            records.append(record)
    return pd.DataFrame(records)


def per_qp(rows: pd.DataFrame) -> pd.DataFrame:
    """Per data set, method and QP: mean bpp, PSNR gain over HEVC at that QP, share of files enhanced."""
    hevc = rows[rows["method"] == "hevc"].set_index(["dataset", "image_id", "quality"])
    out = []
    for (dataset, method, quality), group in rows[rows["method"] != "hevc"].groupby(["dataset", "method", "quality"]):
        base = hevc.loc[[(dataset, i, quality) for i in group["image_id"]]]
        out.append({"dataset": dataset, "method": method, "qp": int(quality), "images": len(group),
                    "bpp": group["bpp"].mean(), "hevc_bpp": base["bpp"].mean(),
                    "psnr_gain_db": float((group["psnr_rgb"].to_numpy() - base["psnr_rgb"].to_numpy()).mean()),
                    "ms_ssim_gain": float((group["ms_ssim"].to_numpy() - base["ms_ssim"].to_numpy()).mean()),
                    "enhanced_share": float((group["psnr_rgb"].to_numpy() != base["psnr_rgb"].to_numpy()).mean()),
                    "dec_s": group["dec_s"].median(), "hevc_dec_s": base["dec_s"].median()})
    return pd.DataFrame(out)


def plot(curves: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    datasets = sorted(curves["dataset"].unique())
    figure, axes = plt.subplots(len(datasets), 2, figsize=(12, 4.4 * len(datasets)), squeeze=False)
    for row, dataset in zip(axes, datasets):
        for method, curve in curves[curves["dataset"] == dataset].groupby("method", sort=True):
            curve = curve.sort_values("bpp")
            for ax, column in zip(row, ("psnr_rgb", "ms_ssim")):
                ax.plot(curve["bpp"], curve[column], marker="o", markersize=4, label=method,
                        linewidth=2.2 if method == "sgfilter" else 1.2)
        for ax, label in zip(row, ("PSNR-RGB (dB)", "MS-SSIM")):
            ax.set_xlabel("bits per pixel (whole file)")
            ax.set_ylabel(label)
            ax.set_title(dataset)
            ax.grid(True, alpha=0.3)
        row[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(figure)


def _md(frame: pd.DataFrame, digits: int = 3) -> str:
    def cell(v):
        if isinstance(v, float):
            return "-" if not math.isfinite(v) else f"{v:.{digits}f}"
        return str(v)

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def kept(args, dataset: str, method: str, seconds: dict, code, samples) -> list[dict]:
    """The rows of one (data set, method): ``code(some samples)``'s, kept in ``--work`` (a rerun reads them
    back). Coded ``--chunk`` images at a time, each chunk's rows written as it ends, so an interrupted run
    loses at most one chunk; the chunks become one file when all are there. ``seconds``: the coding time
    of each (data set, method), summed over the chunks (kept with them, so a resumed run reports it all)."""
    folder = Path(args.work) / "rows"
    whole = folder / f"{dataset}-{method}.parquet"
    if whole.is_file():
        frame = pd.read_parquet(whole)
        seconds[(dataset, method)] = float(frame.attrs.get("coding_s", float("nan")))
        return frame.to_dict("records")
    folder.mkdir(parents=True, exist_ok=True)
    rows, spent, parts = [], 0.0, []
    for start in range(0, len(samples), args.chunk):
        chunk = samples[start:start + args.chunk]
        ids = sorted(s.id for s in chunk)
        part = folder / f"{dataset}-{method}.part{start:05d}.parquet"
        parts.append(part)
        if part.is_file():
            frame = pd.read_parquet(part)
            if sorted(frame["image_id"].unique()) == ids:   # the same images (same --limit and --chunk)
                rows += frame.drop(columns="chunk_s").to_dict("records")
                spent += float(frame["chunk_s"].iloc[0])
                continue
        started = time.time()
        got = code(chunk)
        elapsed = time.time() - started
        spent += elapsed
        tmp = part.with_suffix(".tmp")
        pd.DataFrame(got).assign(chunk_s=elapsed).to_parquet(tmp, index=False)
        tmp.replace(part)
        rows += got
    seconds[(dataset, method)] = spent
    frame = pd.DataFrame(rows)
    frame.attrs["coding_s"] = spent
    tmp = whole.with_suffix(".tmp")
    frame.to_parquet(tmp, index=False)
    tmp.replace(whole)
    for part in parts:
        part.unlink(missing_ok=True)
    return rows


def train_all(args, segnet) -> list[dict]:
    config = {"preset": args.preset, "qps": args.qps, "iterations": args.iterations, "batch_size": args.batch_size,
              "crop": args.crop, "lr": args.lr, "checkpoint_every": 100, "log_every": 20, "seed": 0,
              "limit": args.train_limit}
    records = []
    for source in args.variants:
        out = Path(args.work) / source
        started = time.time()
        result = train_sgfilter({**config, "map_source": source}, Path(args.prepared) / "camvid", out, segnet,
                                progress=not args.no_progress)
        if not result.completed:
            raise SystemExit(f"{source}: training stopped ({result.stopped_by})")
        log = pd.read_parquet(out / "train_log.parquet")
        meta = read_metadata(model_path(out, source))
        records.append({"network": NETWORKS[source][0], "map": source, "iterations": int(json.loads(meta["iterations"])),
                        "train_minutes": float(log["seconds"].max()) / 60, "images_per_s": float(log["images_per_s"].median()),
                        "first_mse": float(log["mse"].iloc[:3].mean()), "last_mse": float(log["mse"].iloc[-3:].mean()),
                        "this_call_s": time.time() - started})
    return records


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prepared", required=True, help="a prepared folder holding camvid/ (and kodak/)")
    parser.add_argument("--segnet", required=True, help="the pipeline's PSPNet model file")
    parser.add_argument("--work", default="runs/sgfilter", help="the trained networks (resumable)")
    parser.add_argument("--out", default="reports/sgfilter")
    parser.add_argument("--variants", nargs="+", default=[*METHODS, "truth"], choices=[*METHODS, "truth"],
                        help="map sources; truth: the ground truth, an upper bound measured without a codec")
    parser.add_argument("--qps", nargs="+", type=int, default=[47, 42, 37, 32])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--iterations", type=int, default=1250)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--datasets", nargs="+", default=["camvid", "kodak"])
    parser.add_argument("--limit", type=int, help="only the first N test images of each data set")
    parser.add_argument("--train-limit", type=int, help="only the first N train images (a quick check)")
    parser.add_argument("--layered", help="the reference run's coded folder (files/camvid/dsslic, edms): the "
                                          "enhancement after DSSLIC's and EDMS's reconstruction")
    parser.add_argument("--layered-models", help="the reference run's models folder (DSSLIC, SMapNet, PSPNet)")
    parser.add_argument("--layered-limit", type=int, help="only the first N CamVid test images for the layered part "
                                                          "(about 30 s per image on 2 cores)")
    parser.add_argument("--chunk", type=int, default=24, help="images coded between two writes of their rows "
                                                               "(an interrupted run resumes at its last chunk)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    segnet = load_model(args.segnet, expect="pspnet")
    training = train_all(args, segnet)
    trained_s = time.time() - started
    models = {"pspnet": segnet}
    for source in [v for v in args.variants if v in METHODS]:
        name = NETWORKS[source][0]
        models[name] = load_model(model_path(Path(args.work) / source, source), expect=name)
    with_lpips = lpips.get_model() is not None
    rows, bound, coding_s = [], [], {}
    for dataset in args.datasets:
        samples = list_prepared(Path(args.prepared) / dataset, "test")[: args.limit or None]
        if "truth" in args.variants and samples and samples[0].label_path is not None:
            truth = load_model(model_path(Path(args.work) / "truth", "truth"), expect=TRUTH)
            bound += kept(args, dataset, TRUTH, coding_s,
                          lambda chunk: truth_rows(chunk, truth, segnet, args.qps, dataset, with_lpips), samples)
        for source in [v for v in args.variants if v in METHODS]:
            plan = MethodPlan.from_section(METHODS[source], {"qualities": args.qps})
            rows += kept(args, dataset, METHODS[source], coding_s,
                         lambda chunk: code_method([CodingSample(s.id, s.image_path) for s in chunk], plan, models,
                                                   dataset=dataset, progress=not args.no_progress,
                                                   with_lpips=with_lpips), samples)
        rows += kept(args, dataset, "hevc", coding_s,
                     lambda chunk: run_baselines([s.image_path for s in chunk], ["hevc"], sweep={"hevc": args.qps},
                                                 dataset=dataset, progress=not args.no_progress, with_lpips=with_lpips),
                     samples)
    layered = []
    if args.layered:
        nets = {name: models[name] for name in ("sgfilter", "sgfilter_nomap") if name in models}
        samples = list_prepared(Path(args.prepared) / "camvid", "test")[: args.layered_limit or args.limit or None]
        layered = kept(args, "camvid", "layered", coding_s,
                       lambda chunk: layered_rows(chunk, Path(args.layered) / "files", Path(args.layered_models), nets,
                                                  segnet, "camvid"), samples)
        pd.DataFrame(layered).to_parquet(out / "layered_rows.parquet", index=False)
    results.write_rows(rows, out / "rows.parquet")
    if bound:
        pd.DataFrame(bound).to_parquet(out / "truth_rows.parquet", index=False)
    frame = pd.concat([pd.DataFrame(rows), pd.DataFrame(bound)], ignore_index=True)
    curves = reporting.rd_curves(frame)
    curves.to_csv(out / "curves.csv", index=False, float_format="%.6g")
    table = bd_rows(curves)
    if layered:
        layered_curves = pd.DataFrame(layered).groupby(["dataset", "method", "quality"], as_index=False)[
            ["bpp", "psnr_rgb", "ms_ssim"]].mean()
        layered_curves.to_csv(out / "layered_curves.csv", index=False, float_format="%.6g")
        hevc = curves[(curves["method"] == "hevc") & (curves["dataset"] == "camvid")]
        layered_bd = []
        for method, curve in layered_curves.groupby("method"):
            curve = curve[curve["quality"] >= 0]   # the residual's QPs (the base-alone point is far below HEVC's range)
            record = {"method": method, "points": len(curve)}
            for column in ("psnr_rgb", "ms_ssim"):
                try:
                    record[f"bd_rate_{column}_pct_vs_hevc"] = bd.bd_rate(hevc["bpp"], hevc[column], curve["bpp"], curve[column])
                except ConfigError as exc:
                    record[f"bd_rate_{column}_pct_vs_hevc"] = math.nan
            base = layered_curves[(layered_curves["method"] == method.split("+")[0]) & (layered_curves["quality"] >= 0)]
            record["bd_psnr_db_vs_itself"] = bd.bd_psnr(base["bpp"], base["psnr_rgb"], curve["bpp"], curve["psnr_rgb"]) \
                if method != method.split("+")[0] else 0.0
            layered_bd.append(record)
        layered_table = pd.DataFrame(layered_bd)
        layered_table.to_csv(out / "layered_bd.csv", index=False, float_format="%.6g")
    table.to_csv(out / "bd.csv", index=False, float_format="%.6g")
    qps = per_qp(frame)
    qps.to_csv(out / "per_qp.csv", index=False, float_format="%.6g")
    pd.DataFrame(training).to_csv(out / "training.csv", index=False, float_format="%.6g")
    plot(curves, out / "rd.png")
    enhanced = frame[frame["method"] != "hevc"]
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "benchmarks/sgfilter_camvid.py", *sys.argv[1:]])
    text = [f"- Measurement: `{command}` (git {results.git_revision()}; training {trained_s / 60:.1f} min this call, "
            f"wall {(time.time() - started) / 60:.1f} min; LPIPS {'on' if with_lpips else 'off (no weights)'}; "
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs)",
            "", "### Training (the same network and steps for each map source)", "", _md(pd.DataFrame(training), 4), "",
            "### BD against HEVC 4:4:4 over the same QPs (negative BD-rate: fewer bits)", "", _md(table, 3), "",
            "### Per QP: mean gain over HEVC at the same QP, decode seconds (median)", "", _md(qps, 3), "",
            *([f"### The enhancement after DSSLIC's and EDMS's reconstruction (CamVid, {len(set(r['image_id'] for r in layered))} "
               "test images; their files plus one byte)", "",
               _md(layered_table, 3), ""] if layered else []),
            f"- Files coded and decoded from their bytes: {len(enhanced)} (enhanced_share: the share whose picture the "
            f"network changed, the flag set); coding seconds per data set and method: "
            + ", ".join(f"{d}/{m} {s:.0f} s" for (d, m), s in coding_s.items()), ""]
    atomic_write_text(out / "measured.md", "\n".join(text) + "\n")
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
