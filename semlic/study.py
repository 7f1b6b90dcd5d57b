"""The GPU study's report: does a semantic layered codec beat HEVC intra when every bit is counted?

:func:`study_report` reads what the study's device calls bring back (``study_results/``, made
by scripts/gpu_study/run.py ``pack``): the section-6 rows (``rows/``, a hive tree), the
clean timing pass (``speed/``), training logs (``logs/``) and segmentation scores, and writes
to ``out_dir``:

=========================  ===========================================================================
file                       content
=========================  ===========================================================================
study.md                   the answer, BD tables, layer shares, speed against the papers, training
rows.parquet               every per-image row (section-6 schema, sorted): ``semlic results --source``
bd.csv                     BD-rate / BD-PSNR of every method against HEVC 4:4:4 (the BPG equivalent),
                           per data set, for PSNR-RGB, the papers' per-channel-mean PSNR and MS-SSIM
curves.csv                 the mean RD point of each (dataset, method, quality) (CompressAI convention)
layer_share.csv            mean bits per pixel of each layer and its share of the file
speed.csv                  encode / decode seconds per Kodak image, network and entropy coding apart
training.csv               images/s and GPU busy share of each training step
rd_<dataset>.png           PSNR-RGB and MS-SSIM against bpp (whole file), published anchors overlaid
rd_<dataset>_subpixel.png  the same on the papers' axis: bits per sub-pixel, per-channel-mean PSNR
=========================  ===========================================================================

Tables and figures come from :mod:`semlic.reporting` (``rd_curves``, ``bd_tables``, ``rd_figure``);
rates are bpp of the whole file (BD-rate does not change with the rate's unit, so it is the
same on the bits-per-sub-pixel axis). Published figures (docs/REFERENCE.md, ../shared/anchors) are
other people's measurements, quoted as such.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Sequence

import pandas as pd

from . import results
from .fileio import atomic_write_bytes
from .reporting import (answer, bd_sections, bd_tables, default_anchors_dir, layer_shares, load_anchors, markdown_table,
                        merge_rows, paper_points, paper_seconds, rd_curves, rd_figure, row_counts, semantic_methods,
                        speed_table, training_from_logs)

#: The commands this module adds to ``semlic`` (read by semlic.cli without importing it).
COMMANDS = {
    "study-report": "the GPU study's report: BD against HEVC, RD figures with anchors, layer shares, speed",
}


def _steps_table(results_dir: Path) -> pd.DataFrame:
    """status.json's steps: done, wall seconds, why not done."""
    path = results_dir / "status.json"
    if not path.is_file():
        return pd.DataFrame()
    steps = json.loads(path.read_text()).get("steps", {})
    return pd.DataFrame([{"step": name, "done": bool(entry.get("done")), "wall_s": entry.get("wall_s", math.nan),
                          "note": entry.get("stopped") or ", ".join(f"{k}: {v}" for k, v in entry.items() if k in (
                              "methods_left_out", "minutes", "minutes_per_quality", "images_left"))}
                         for name, entry in steps.items() if name != "auto"])


# --- published curves and figures ---------------------------------------------------------------


# --- the report ---------------------------------------------------------------------------------


def study_report(results_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                 extra_rows: Sequence[str | os.PathLike] = (), anchors_dir: str | os.PathLike | None = None,
                 dry_run: bool = False, command: str | None = None) -> dict:
    """Write the files of the module docstring under ``out_dir``; return a summary dict."""
    results_dir, out_dir = Path(results_dir), Path(out_dir)
    sources = [results_dir / "rows"] if (results_dir / "rows").is_dir() else []
    rows = merge_rows(sources + [Path(p) for p in extra_rows])
    curves = rd_curves(rows)
    bd = bd_tables(curves)
    shares = layer_shares(rows)
    speed_path = results_dir / "speed" / "speed.parquet"
    speed = speed_table(pd.read_parquet(speed_path)) if speed_path.is_file() else pd.DataFrame()
    training = training_from_logs(results_dir)
    anchors = load_anchors(anchors_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results.write_rows(rows.to_dict("records"), out_dir / "rows.parquet")
    for name, frame in (("bd", bd), ("curves", curves), ("layer_share", shares), ("speed", speed),
                        ("training", training)):
        atomic_write_bytes(out_dir / f"{name}.csv", frame.to_csv(index=False, float_format="%.6g").encode())
    note = " (DRY RUN: tiny models, not results)" if dry_run else ""
    figures = []
    for dataset in sorted(curves["dataset"].unique()):
        published = anchors if dataset == "kodak" else {}
        for subpixel in (False, True):
            name = f"rd_{dataset}{'_subpixel' if subpixel else ''}.png"
            atomic_write_bytes(out_dir / name, rd_figure(curves, dataset, published=published, subpixel=subpixel,
                                                         title_note=note))
            figures.append(name)
    provenance = json.loads((results_dir / "provenance.json").read_text()) if (results_dir / "provenance.json").is_file() else {}
    text = _markdown(rows, curves, bd, shares, speed, training, results_dir, provenance, figures, extra_rows,
                     dry_run, command, anchors)
    atomic_write_bytes(out_dir / "study.md", text.encode())
    return {"rows": len(rows), "datasets": sorted(curves["dataset"].unique()), "answer": answer(bd),
            "files": sorted(p.name for p in out_dir.iterdir())}


def _segmentation_lines(results_dir: Path) -> list[str]:
    lines = []
    seg = results_dir / "segmentation"
    for name, label in (("camvid_test.parquet", "PSPNet on CamVid test (ground truth)"),
                        ("pairs.parquet", "PSPNet(up(c^)) against PSPNet(x), CamVid train (SMapNet's input)")):
        if (seg / name).is_file():
            table = pd.read_parquet(seg / name)
            lines.append(f"- {label}: mean per-image mIoU {table['miou'].mean():.3f} over {len(table)} images")
    return lines


def _markdown(rows, curves, bd, shares, speed, training, results_dir, provenance, figures, extra_rows, dry_run,
              command, anchors) -> str:
    out = ["# Semantic layered coding against HEVC intra, every bit counted" + (" (DRY RUN)" if dry_run else ""), ""]
    if dry_run:
        out += ["> **Dry run on a CPU with a few images and tiny, barely trained models.** It shows that every step",
                "> of the GPU study runs and that this report is made; **its numbers are not results** and say",
                "> nothing about DSSLIC, EDMS or the codecs.", ""]
    out += ["## Run", f"- Report: `{command or 'semlic study-report'}` (git {results.git_revision()})",
            f"- Rows from: `{results_dir}`" + "".join(f", `{p}` (pairs the run lacks)" for p in extra_rows)]
    if provenance:
        out.append(f"- Device run: git {provenance.get('git_rev')}, {provenance.get('gpu') or 'CPU'}, torch "
                   f"{provenance.get('torch')}, Python {provenance.get('python')}, {provenance.get('cpus')} CPUs, "
                   f"{provenance.get('written')}")
        codecs = provenance.get("codecs")
        if isinstance(codecs, dict):
            out.append("- Codecs: " + ", ".join(f"{k} {v}" for k, v in codecs.items()))
    out += ["- Conventions: bpp = every byte of each file x 8 / (H W); PSNR-RGB over the RGB MSE of 8-bit images; "
            "MS-SSIM on 8-bit RGB; RD points are means over the images at each quality setting; BD by PCHIP "
            "(semlic.bd) against HEVC 4:4:4 (x265, psy-rd off: the BPG equivalent, reports/calibration.md). The rows' "
            "enc_s/dec_s were measured with many coding processes sharing the machine; the speed section's figures "
            "come from a separate, single-process timing pass.", ""]
    out += ["## Answer", *[f"- {line}" for line in answer(bd)], ""]
    out += ["## Rows", markdown_table(row_counts(rows)), ""]
    out += bd_sections(bd)
    out += ["## Figures"]
    for name in figures:
        out.append(f"![{name}]({name})")
    if anchors:
        out.append(f"Kodak figures overlay published curves ({', '.join(anchors)}; ../shared/anchors/kodak, "
                   "other people's measurements) and the papers' own Kodak points (docs/REFERENCE.md); on the bpp "
                   "axis those points are their bits per sub-pixel x 3, without the bits they did not count.")
    out.append("")
    semantic = shares[shares["method"].isin(semantic_methods())]
    if len(semantic):
        wide = semantic.pivot_table(index=["dataset", "method", "quality"], columns="layer", values="share")
        order = [c for c in ("header",) if c in wide.columns]
        wide = wide[order + sorted(set(wide.columns) - set(order))].reset_index()
        wide.columns = [str(c) if c in ("dataset", "method", "quality") else f"{c} %" for c in wide.columns]
        for column in wide.columns[3:]:
            wide[column] = wide[column] * 100
        out += ["## Share of the bits in each layer", "Over all images of a data set at each quality "
                "(layer_bits; `header` is the file header, each layer's 10-byte header is in its layer).",
                "", markdown_table(wide, {c: 1 for c in wide.columns} | {"quality": 0}), ""]
    if len(speed):
        table = speed.copy()
        out += ["## Speed per Kodak image (seconds)",
                "Clean timing pass (one process, after the coding): encode = everything from the image to the file "
                "(the encoder's own segmentation included); `network` = the networks, `entropy` = coding the "
                "layers, as each method reports them. Decode: `entropy` = decoding the layers alone, timed apart on "
                "the same file; `network` = the rest. Papers: the published timings each method records "
                "(Method.paper_seconds: EDMS Table 1 on a V100 with their codec at BPG QP 32; DSSLIC's CPU decode).", "",
                markdown_table(table, {"images": 0}), ""]
        matched = []
        kodak = curves[curves["dataset"] == "kodak"]
        for point in paper_points():
            at = kodak[(kodak["method"] == point["method"]) & (kodak["quality"] == point["quality"])]
            if point["quality"] is None or at.empty:
                continue
            row = at.iloc[0]
            matched.append({"method": point["method"], "source": point["source"], "quality": point["quality"],
                            "bits_per_subpixel": row["bits_per_subpixel"], "paper_bits_per_subpixel":
                            point["bits_per_subpixel"], "psnr_channel_mean": row["psnr_channel_mean"],
                            "paper_psnr": point["psnr"], "ms_ssim": row["ms_ssim"], "paper_ms_ssim": point["ms_ssim"]})
        if matched:
            out += ["### Kodak at the papers' own settings (the papers' axis)", "",
                    markdown_table(pd.DataFrame(matched), {"quality": 0, "bits_per_subpixel": 3,
                                                           "paper_bits_per_subpixel": 3, "psnr_channel_mean": 2,
                                                           "paper_psnr": 2, "ms_ssim": 4, "paper_ms_ssim": 3}), ""]
    paper_cpu = results_dir / "speed" / "cpu_paper_size.parquet"
    if paper_cpu.is_file():
        table = pd.read_parquet(paper_cpu)
        summary = table.groupby(["method", "device"], sort=True)[["dec_s", "dec_network_s", "dec_entropy_s"]].mean()
        summary["images"] = table.groupby(["method", "device"], sort=True).size()
        summary = summary.reset_index()
        summary["parameters_m"] = [table[table["method"] == m]["parameters"].iloc[0] / 1e6 for m in summary["method"]]
        summary["paper_dec_s_cpu"] = [paper_seconds(m, "dec_cpu") for m in summary["method"]]
        first = table.iloc[0]
        out += [f"### CPU decode per Kodak image with the paper-size networks ({first['width']}x{first['height']}, "
                "random weights)",
                f"Measured on the machine that ran this step ({first['device']}), every network a method's decoder "
                "runs at the paper's size (parameters_m: their parameters, millions). A forward pass costs the same "
                "whatever the weights' values, so this is the decode time of trained models; the reconstructions "
                "are meaningless.", "",
                markdown_table(summary, {"images": 0, "paper_dec_s_cpu": 1, "parameters_m": 2}), ""]
    if len(training):
        out += ["## Training", "images/s of each training loop (bf16 autocast and channels-last on CUDA). The three "
                "lanes of the call train at the same time on the one GPU, so these rates are shares of it; the "
                "base-model table below times one training step alone. Steps named <step>_<part> are bounded by "
                "minutes (SMIC, the hyperprior's qualities, the compressed-domain teacher and students); the others "
                "fit their iterations to the budget from a probe. GPU busy share: NVML utilisation sampled every "
                "0.5 s.", "",
                markdown_table(training, {"iterations": 0, "calls": 0, "epochs": 1, "epochs_wanted": 1, "train_s": 0,
                                          "wall_s": 0, "images_per_s": 1, "steady_images_per_s": 1,
                                          "gpu_busy_share": 2}), ""]
    bench = results_dir / "speed" / "train_bench.json"
    if bench.is_file():
        doc = json.loads(bench.read_text())
        variants = pd.DataFrame([{k: v for k, v in r.items() if k != "top_ops"} for r in doc["variants"]])
        out += [f"### Base-model training step by setting (batch {doc['batch_size']}, {doc['iterations']} iterations; "
                f"{doc.get('gpu') or doc['device']})", "", markdown_table(variants, {"images_per_s": 1}), "",
                f"Fastest: {doc['best']} (measured after the trainings, alone on the GPU)."]
        top = next((r.get("top_ops") for r in doc["variants"] if r.get("top_ops")), None)
        if top:
            out += ["", "Where the GPU time of a training step goes (torch.profiler, default setting):", "",
                    markdown_table(pd.DataFrame(top), {"device_ms_per_iteration": 2, "share_of_kernel_time": 3,
                                                       "calls_per_iteration": 0})]
        out.append("")
    seg_lines = _segmentation_lines(results_dir)
    if seg_lines:
        out += ["## Segmentation", *seg_lines, ""]
    latent = results_dir / "segmentation" / "latent_seg.parquet"
    if latent.is_file():
        from .methods.latent_seg.evaluate import summary as latent_summary

        table = latent_summary(pd.read_parquet(latent))
        out += ["## Segmentation in the compressed domain",
                "DeepLabv3 on the decoded image (`pixel`: the whole hyperprior file) against the students that "
                "segment the latents the gate (or a static choice) sends (their bits only); CamVid test images "
                "carried, mIoU from the summed confusion (`semlic eval-latent-seg`).", "",
                markdown_table(table, {"quality": 0, "images": 0, "channels": 1, "bpp": 4, "bpp_image": 4,
                                       "psnr_rgb": 2, "miou": 3, "pixel_accuracy": 3, "enc_s": 4, "task_s": 4}), ""]
    steps = _steps_table(results_dir)
    if len(steps):
        out += ["## Steps of the call", "Every step of the one device call (scripts/gpu_study/run.py: three lanes at "
                "once, then the final steps), whether it finished, its wall time and, where it did not finish, why "
                "(status.json). A training bounded by minutes writes its model when the time runs out: its "
                "iterations are in the training table.", "", markdown_table(steps, {"wall_s": 0}), ""]
    utilisation = results_dir / "speed" / "gpu_utilisation.parquet"
    if utilisation.is_file():
        table = pd.read_parquet(utilisation)
        shares = ", ".join(f"{phase} {group['utilisation_pct'].mean():.0f}% over {len(group)} s"
                           for phase, group in table.groupby("phase", sort=False))
        out += [f"GPU busy (NVML utilisation, sampled every second through the call): {shares}.", ""]
    out += ["## Files", "rows.parquet (every per-image row; `semlic results --source rows.parquet \"select ...\"`), "
            "bd.csv, curves.csv, layer_share.csv, speed.csv, training.csv and the figures above, made by "
            "`semlic study-report` (semlic/study.py) from the rows the study's device calls brought back "
            "(scripts/gpu_study/README.md).", ""]
    return "\n".join(out)


# --- command line -------------------------------------------------------------------------------
def _cli(args) -> int:
    import shlex
    import sys

    command = "semlic study-report " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if len(sys.argv) > 2 else None
    summary = study_report(args.results, args.out, extra_rows=args.extra_rows or (),
                           anchors_dir=None if args.no_anchors else (args.anchors or default_anchors_dir()),
                           dry_run=args.dry_run, command=command)
    for line in summary["answer"]:
        print(line)
    print(f"{summary['rows']} rows -> {args.out}: {', '.join(summary['files'])}")
    return 0


def register_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "study-report", help=COMMANDS["study-report"],
        description="Read study_results/ (scripts/gpu_study/run.py pack) and write study.md, CSV tables and RD "
                    "figures (bpp and the papers' bits-per-sub-pixel axis) to --out.")
    parser.add_argument("--results", required=True, help="the unpacked study_results folder")
    parser.add_argument("--out", required=True, help="report folder, e.g. reports/study")
    parser.add_argument("--extra-rows", action="append", metavar="PARQUET",
                        help="more result rows for (dataset, method) pairs the run lacks, e.g. "
                             "reports/calibration_rows.parquet (Kodak baselines)")
    parser.add_argument("--anchors", help="published Kodak curves (default ../shared/anchors/kodak)")
    parser.add_argument("--no-anchors", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="label the report as a dry run (not results)")
    parser.set_defaults(func=_cli)
