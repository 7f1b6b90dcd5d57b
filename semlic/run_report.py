"""The report of a pipeline run on real data (``semlic run-report``; reports/camvid_cpu/ is one).

Reads what ``dvc repro`` / ``make repro-camvid`` left under ``data/`` (the aggregate stage's
rd.parquet with the measured times joined, the training logs and model files under
``models/``, the segmentation maps and labels) and writes to ``out_dir``:

=========================  ===========================================================================
file                       content
=========================  ===========================================================================
report.md                  the tables below, the figures, the run's command, wall time and revision
rows.parquet               every per-image row (section-6 schema, with enc_s/dec_s)
bd.csv                     BD-rate / BD-PSNR of every method against HEVC 4:4:4, per data set and
                           distortion (PSNR-RGB, the papers' per-channel PSNR, MS-SSIM)
curves.csv                 the mean RD point of each (dataset, method, quality)
layer_share.csv            bits per pixel and share of each layer
ablation.csv               DSSLIC's Table 1 (no residual): upComp, noSeg, withSeg, beside the paper's
chroma.csv                 the residual in 4:2:0 against 4:4:4 (BD-rate of one against the other)
edms_vs_dsslic.csv         bits, encode and decode seconds of EDMS (with and without SMapNet) and DSSLIC
                           at the same residual QPs
training.csv               each trained model: iterations reached of those planned, seconds, images/s,
                           final losses (the budgets in minutes say how far each got)
segmentation.csv           PSPNet mIoU (confusion summed over the split) on every labelled split
rd_<dataset>[_subpixel].png  RD figures, published Kodak anchors and the papers' points overlaid
=========================  ===========================================================================

Given only ``rows`` (e.g. the committed reports/camvid_cpu/rows.parquet), every RD table and
figure is recomputed from them; the training and segmentation tables need the run's ``data/``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from . import results
from .errors import ConfigError
from .fileio import atomic_write_bytes
from .reporting import (ANCHOR, BASELINES, ablation_table, answer, bd_sections, bd_tables, default_anchors_dir,
                        layer_shares, load_anchors, markdown_table, pair_bd, rd_curves, rd_figure, read_rows, row_counts,
                        segmentation_table, timing_comparison, training_from_models, with_shared_base)

#: The commands this module adds to ``semlic`` (read by semlic.cli without importing it).
COMMANDS = {
    "run-report": "a pipeline run's report: BD against HEVC, ablation, chroma, EDMS vs DSSLIC, training",
}

#: A layered codec's curve is its base alone (no residual) plus its residual QPs, one definition in
#: every report. A variant that differs from another only in how its residual is coded has the
#: same base-alone file, byte for byte (tests/test_run_report.py): where a run coded that file
#: once, the variant's curve takes that point from the other's rows.
SHARED_BASE = {"dsslic_444": "dsslic"}
#: EDMS (with and without SMapNet) against DSSLIC at the residual QPs all three coded: edms_vs_dsslic.csv.
EDMS_TIMING = ("dsslic", "edms", "edms_noenh")


def run_report(out_dir: str | os.PathLike, *, rows: str | os.PathLike | None = None,
               data_dir: str | os.PathLike | None = None, anchors_dir: str | os.PathLike | None = None,
               command: str | None = None, wall_s: float | None = None, note: str = "") -> dict:
    """Write the files of the module docstring; return a summary (rows, BD lines)."""
    out_dir = Path(out_dir)
    data = Path(data_dir) if data_dir else None
    rows_path = Path(rows) if rows else (data / "results" / "rd.parquet" if data else None)
    if rows_path is None or not rows_path.exists():
        raise ConfigError(f"no rows: give --rows or a --data folder holding results/rd.parquet (got {rows_path})")
    measured = read_rows(rows_path)
    table = with_shared_base(measured, SHARED_BASE)
    curves = rd_curves(table)
    bd = bd_tables(curves)
    shares = layer_shares(table)
    ablation = ablation_table(curves)
    chroma = pair_bd(curves, "dsslic_444", "dsslic") if {"dsslic", "dsslic_444"} <= set(curves["method"]) \
        else pd.DataFrame()
    timing = timing_comparison(table, EDMS_TIMING)
    training = training_from_models(data / "models") if data and (data / "models").is_dir() else pd.DataFrame()
    segmentation = pd.DataFrame()
    if data and (data / "segments").is_dir():
        from .data.datasets import get_spec

        frames = [segmentation_table(data, d.name, get_spec(d.name).num_classes)
                  for d in sorted((data / "segments").iterdir()) if d.is_dir() and get_spec(d.name).num_classes]
        segmentation = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    out_dir.mkdir(parents=True, exist_ok=True)
    if rows_path.resolve() != (out_dir / "rows.parquet").resolve():
        results.write_rows(measured.to_dict("records"), out_dir / "rows.parquet")
    tables = {"bd": bd, "curves": curves, "layer_share": shares, "ablation": ablation, "chroma": chroma,
              "edms_vs_dsslic": timing, "training": training, "segmentation": segmentation}
    for name, frame in tables.items():
        if len(frame) or not (out_dir / f"{name}.csv").is_file():   # recomputing from rows keeps the run's tables
            atomic_write_bytes(out_dir / f"{name}.csv", frame.to_csv(index=False, float_format="%.6g").encode())
    anchors = load_anchors(anchors_dir)
    figures = []
    for dataset in sorted(curves["dataset"].unique()):
        for subpixel in (False, True):
            name = f"rd_{dataset}{'_subpixel' if subpixel else ''}.png"
            figure = rd_figure(curves, dataset, published=anchors if dataset == "kodak" else {}, subpixel=subpixel)
            atomic_write_bytes(out_dir / name, figure)
            figures.append(name)
    shared = sorted(f"`{v}` from `{t}`" for v, t in SHARED_BASE.items()
                    if len(table[table["method"] == v]) > len(measured[measured["method"] == v]))
    text = _markdown(table, bd, shares, ablation, chroma, timing, _read_csv(out_dir, "training", training),
                     _read_csv(out_dir, "segmentation", segmentation), figures, command, wall_s, note, shared)
    atomic_write_bytes(out_dir / "report.md", text.encode())
    return {"rows": len(measured), "shared_rows": len(table) - len(measured), "answer": answer(bd),
            "files": sorted(p.name for p in out_dir.iterdir())}


def _read_csv(out_dir: Path, name: str, frame: pd.DataFrame) -> pd.DataFrame:
    path = out_dir / f"{name}.csv"
    if len(frame) or not path.is_file() or path.stat().st_size <= 1:
        return frame
    return pd.read_csv(path)


def _markdown(rows, bd, shares, ablation, chroma, timing, training, segmentation, figures, command, wall_s,
              note, shared=()) -> str:
    fmt = markdown_table
    out = ["# The reference run on real data", ""]
    if note:
        out += [note, ""]
    out += ["## Run",
            f"- Command: `{command or 'semlic run-report'}`",
            f"- Revision: {sorted(set(rows['git_rev']))}" + (f"; wall time {wall_s / 60:.1f} min" if wall_s else ""),
            "- bpp = every byte of each file x 8 / (H W); PSNR-RGB over the RGB MSE; MS-SSIM on 8-bit RGB; RD points "
            "are means over the images at each setting; BD by PCHIP against HEVC 4:4:4 (x265, the BPG equivalent).",
            "- A layered codec's curve is every point it was coded at: its base alone (no residual) where the run "
            "coded it, then its residual QPs." + (" A variant that differs only in how its residual is coded has the "
                                                  "same base-alone file, byte for byte: " + ", ".join(shared)
                                                  + " (base-alone rows taken from the twin)." if shared else ""),
            "", "## Answer", *[f"- {line}" for line in answer(bd)], "",
            "## Rows", fmt(row_counts(rows)), ""]
    out += bd_sections(bd, digits=1)
    if len(chroma):
        out += ["## The residual in 4:4:4 against 4:2:0 (DSSLIC, same model and base layer)",
                "BD of `dsslic_444` with `dsslic` (4:2:0, the paper's libbpg default) as the anchor: negative BD-rate "
                "= 4:4:4 needs fewer bits for the same quality.", "",
                fmt(chroma[["dataset", "distortion", "bd_rate_pct", "bd_psnr_db", "points"]],
                    {"bd_rate_pct": 1, "bd_psnr_db": 3}, signed=("bd_rate_pct", "bd_psnr_db")), ""]
    if len(ablation):
        cols = ["dataset", "setting", "images", "bpp", "bits_per_subpixel", "psnr_channel_mean", "ms_ssim",
                "paper_kodak_bits_per_subpixel", "paper_kodak_psnr", "paper_kodak_ms_ssim",
                "paper_ade20k_bits_per_subpixel", "paper_ade20k_psnr", "paper_ade20k_ms_ssim"]
        out += ["## DSSLIC's ablation (paper Table 1, no residual)",
                "upComp: x' = up(c) (no RecNet, no map in the file); noSeg: CompNet and RecNet trained without the map "
                "(same budget, at the same time); withSeg: DSSLIC. Our rates count the whole file; the paper's "
                "`bits_per_subpixel` is its 'bpp' (bits / 3HW) and its PSNR the mean of the channels' PSNRs, as "
                "our `psnr_channel_mean`.", "",
                fmt(ablation[[c for c in cols if c in ablation.columns]],
                    {"images": 0, "bpp": 3, "bits_per_subpixel": 3, "psnr_channel_mean": 2, "ms_ssim": 3}), ""]
    if len(timing):
        out += ["## EDMS against DSSLIC at the same residual QPs",
                "Means over the images and the QPs all three share; seconds measured in the code stage (two "
                "coding processes on 2 cores; encode includes the encoder's PSPNet; decode is from the file, with "
                "x' computed once per image and counted in each file's time).", "",
                fmt(timing, {"qps": 0, "images": 0, "bpp": 3, "psnr_rgb": 2, "enc_s": 3, "dec_s": 3,
                             "bpp_vs_dsslic": 3, "enc_s_vs_dsslic": 2, "dec_s_vs_dsslic": 2}), ""]
    out += ["## Figures", *[f"![{name}]({name})" for name in figures],
            "Kodak figures overlay published curves (../shared/anchors/kodak) and the papers' own Kodak points "
            "(their bits per sub-pixel x 3 on the bpp axis).", ""]
    semantic = shares[~shares["method"].isin((ANCHOR,) + BASELINES)]
    if len(semantic):
        wide = semantic.pivot_table(index=["dataset", "method", "quality"], columns="layer", values="bpp")
        wide = wide.reset_index()
        wide.columns = [str(c) if c in ("dataset", "method", "quality") else f"{c} bpp" for c in wide.columns]
        out += ["## Bits per pixel in each layer", "Over all the images of a data set at each setting.", "",
                fmt(wide, {c: 3 for c in wide.columns} | {"quality": 0}), ""]
    if len(segmentation):
        cols = [c for c in ("dataset", "split", "images", "miou", "pixel_accuracy") if c in segmentation.columns]
        out += ["## PSPNet", "mIoU from the confusion matrix summed over each split (the segment stage's maps "
                "against the labels; unlabelled pixels ignored).", "",
                fmt(segmentation[cols], {"images": 0, "miou": 3, "pixel_accuracy": 3}), ""]
    if len(training):
        out += ["## Training", "Each model's log: iterations reached (`planned`: what the schedule was set for; a model "
                "stopped by its budget in minutes has fewer), seconds, mean images/s, the last window's losses.", "",
                fmt(training, {"iterations": 0, "planned": 0, "seconds": 0, "images_per_s": 1, "final_loss": 4}), ""]
    out += ["## Files", "rows.parquet (`semlic results --source rows.parquet \"select ...\"`), bd.csv, curves.csv, "
            "layer_share.csv, ablation.csv, chroma.csv, edms_vs_dsslic.csv, training.csv, segmentation.csv and the "
            "figures, by `semlic run-report` (semlic/run_report.py). "
            "`semlic run-report --rows rows.parquet --out DIR` recomputes every BD figure from the rows alone.", ""]
    return "\n".join(out)


# --- command line -------------------------------------------------------------------------------
def _cli(args) -> int:
    import shlex
    import sys

    command = args.command or ("semlic run-report " + " ".join(shlex.quote(a) for a in sys.argv[2:]))
    note = Path(args.note).read_text() if args.note else ""
    summary = run_report(args.out, rows=args.rows, data_dir=args.data,
                         anchors_dir=None if args.no_anchors else (args.anchors or default_anchors_dir()),
                         command=command, wall_s=args.wall_s, note=note)
    for line in summary["answer"]:
        print(line)
    shared = f" (+{summary['shared_rows']} shared base-alone rows)" if summary["shared_rows"] else ""
    print(f"{summary['rows']} rows{shared} -> {args.out}: {', '.join(summary['files'])}")
    return 0


def register_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "run-report", help=COMMANDS["run-report"],
        description="Read a run's data/ folder (or only its rows) and write report.md, CSV tables and RD figures.")
    parser.add_argument("--data", help="the run's data folder (results/rd.parquet, models/, segments/, prepared/)")
    parser.add_argument("--rows", help="result rows instead of <data>/results/rd.parquet (e.g. a committed rows.parquet)")
    parser.add_argument("--out", required=True, help="report folder, e.g. reports/camvid_cpu")
    parser.add_argument("--anchors", help="published Kodak curves (default ../shared/anchors/kodak)")
    parser.add_argument("--no-anchors", action="store_true", help="no published curves on the figures")
    parser.add_argument("--command", help="the command that made the run, for the report")
    parser.add_argument("--wall-s", type=float, help="the run's wall time in seconds, for the report")
    parser.add_argument("--note", help="a markdown file whose text goes under the title (the reading of the results)")
    parser.set_defaults(func=_cli)
