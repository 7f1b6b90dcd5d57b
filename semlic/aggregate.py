"""The study's results from the coded rows: RD table, Bjontegaard deltas, metrics, plots.

:func:`aggregate` reads the section-6 rows written by the code stage (a hive tree
``method=<m>/dataset=<d>/part-0.parquet`` or one file), joins the measured encode/decode
times kept beside them, and writes to ``out_dir``:

=====================  ===================================================================
file                   content
=====================  ===================================================================
rd.parquet             every row (section-6 schema), sorted: what ``semlic results`` queries
curves.parquet         one RD point per (dataset, method, quality): means over the images
bd.parquet             BD-rate (%) and BD-PSNR (dB) of every method against the anchor
                       (default HEVC 4:4:4, the BPG equivalent) on each data set
comparisons.csv        each method against the method its paper measures it against
                       (``Method.compare_to``: EDMS against DSSLIC), per data set
                       (:func:`comparisons`): BD-rate (%) and BD-PSNR (dB) with that method as
                       the anchor, and the mean encode / decode time ratios (header only when
                       no pair is present)
metrics.json           the headline figures, a handful of ``dvc metrics show`` / ``dvc exp show``
                       columns (:func:`headline_metrics`): BD-rate of every method against
                       the anchor, of each method against its paper's reference method, and
                       PSPNet's mIoU per split (the detail is in the Parquet and CSV files)
plots/<method>.csv     the RD points of one method (``dvc plots show``: bpp vs psnr_rgb)
figures/rd_<d>.png     PSNR-RGB, MS-SSIM and (when measured) LPIPS against bpp, every method,
                       one figure per data set
=====================  ===================================================================

RD points follow CompressAI's convention: at each quality setting, bpp and PSNR are
averaged over the images of the data set (so are MS-SSIM and LPIPS; their NaNs, below
161 px or without LPIPS weights, are skipped, and a point with none measured is NaN). Bjontegaard deltas (:mod:`semlic.bd`) need four
points per curve and overlapping ranges; a pair that has neither gets NaN and the reason
in ``bd.parquet``'s ``note`` column. Every file has the same bytes for the same rows and
timings; rd.parquet, curves.parquet and the time ratios depend on the measured timings.

The tables and figures are :mod:`semlic.reporting`'s (the one report library); this stage picks
which to write and in what layout.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from . import bd, results
from .fileio import atomic_write_bytes, write_parquet
from .reporting import (BD_SCHEMA, bd_table, comparisons, finite, load_rows, rd_curves, rd_figure,
                        segmentation_scores)

PLOT_COLUMNS = ("dataset", "method", "quality", "bpp", "psnr_rgb", "ms_ssim", "lpips")


def metrics_dict(curves: pd.DataFrame, bd_rows: pd.DataFrame, segmentation: dict,
                 comparison_rows: pd.DataFrame | None = None) -> dict:
    """The ``dvc metrics`` document: nested dataset -> method -> figures (NaN as null)."""
    doc: dict = {"bd": {}, "rd": {}}
    for row in (comparison_rows if comparison_rows is not None else pd.DataFrame()).itertuples(index=False):
        doc.setdefault("comparisons", {}).setdefault(row.dataset, {})[row.method] = {
            "anchor": row.anchor,
            **{key: finite(getattr(row, key)) for key in ("bd_rate_pct", "bd_psnr_db", "enc_time_ratio",
                                                            "dec_time_ratio")}}
    for row in bd_rows.itertuples(index=False):
        doc["bd"].setdefault(row.dataset, {})[row.method] = {
            "bd_rate_pct": finite(row.bd_rate_pct), "bd_psnr_db": finite(row.bd_psnr_db)}
    for (dataset, name), curve in curves.groupby(["dataset", "method"], sort=True):
        doc["rd"].setdefault(dataset, {})[name] = {
            "points": int(len(curve)), "mean_bpp": finite(curve["bpp"].mean()),
            "mean_psnr_rgb": finite(curve["psnr_rgb"].mean()), "mean_ms_ssim": finite(curve["ms_ssim"].mean()),
            "mean_lpips": finite(curve["lpips"].mean())}
    if segmentation:
        doc["segmentation"] = segmentation
    return doc


def headline_metrics(doc: dict, anchor: str = "hevc") -> dict:
    """metrics.json: ``bd_rate_vs_<anchor>.<dataset>.<method>`` (%), ``bd_rate_vs_reference.<dataset>.
    <method>_vs_<reference>`` (%) and ``miou.<dataset>.<split>``, rounded for reading (the full
    figures: bd.parquet, comparisons.csv, curves.parquet; :func:`metrics_dict`)."""
    def rounded(value, digits):
        return None if value is None else round(value, digits)

    out: dict = {f"bd_rate_vs_{anchor}": {
        dataset: {name: rounded(figures["bd_rate_pct"], 2) for name, figures in methods.items()}
        for dataset, methods in doc["bd"].items()}}
    if doc.get("comparisons"):
        out["bd_rate_vs_reference"] = {
            dataset: {f"{name}_vs_{figures['anchor']}": rounded(figures["bd_rate_pct"], 2)
                      for name, figures in methods.items()} for dataset, methods in doc["comparisons"].items()}
    if doc.get("segmentation"):
        out["miou"] = {dataset: {split: rounded(figures["miou"], 4) for split, figures in splits.items()}
                       for dataset, splits in doc["segmentation"].items()}
    return out


def aggregate(rows_root: str | os.PathLike, out_dir: str | os.PathLike, *, timings: str | os.PathLike | None = None,
              segments_dir: str | os.PathLike | None = None, anchor: str = "hevc", distortion: str = "psnr_rgb",
              bd_method: str = bd.DEFAULT_METHOD) -> dict:
    """Write the files of the module docstring under ``out_dir``; return every figure (:func:`metrics_dict`;
    metrics.json holds its :func:`headline_metrics`)."""
    out_dir = Path(out_dir)
    rows = load_rows(rows_root, timings)
    results.write_rows(rows.to_dict("records"), out_dir / "rd.parquet")
    curves = rd_curves(rows)
    write_parquet(curves, out_dir / "curves.parquet")
    bd_rows = bd_table(curves, anchor=anchor, distortion=distortion, method=bd_method)
    write_parquet(bd_rows, out_dir / "bd.parquet", schema=BD_SCHEMA)
    comparison_rows = comparisons(curves, distortion=distortion, method=bd_method, rows=rows)
    atomic_write_bytes(out_dir / "comparisons.csv",
                       comparison_rows.to_csv(index=False, float_format="%.6g", lineterminator="\n").encode())
    doc = metrics_dict(curves, bd_rows, segmentation_scores(segments_dir), comparison_rows)
    atomic_write_bytes(out_dir / "metrics.json",
                       (json.dumps(headline_metrics(doc, anchor), indent=2, sort_keys=True) + "\n").encode())
    for name, curve in curves.groupby("method", sort=True):
        text = curve.sort_values(["dataset", "bpp"])[list(PLOT_COLUMNS)].to_csv(index=False, float_format="%.6g")
        atomic_write_bytes(out_dir / "plots" / f"{name}.csv", text.encode())
    for dataset in sorted(curves["dataset"].unique()):
        atomic_write_bytes(out_dir / "figures" / f"rd_{dataset}.png", rd_figure(curves, dataset, anchor=anchor))
    return doc
