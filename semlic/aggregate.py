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
"""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from . import bd, results
from .errors import ConfigError, import_extra
from .fileio import atomic_write_bytes, write_parquet

TIMING_COLUMNS = ("enc_s", "dec_s")
KEY_COLUMNS = ("dataset", "method", "image_id", "quality")
CURVE_COLUMNS = ("bpp", "bits_per_subpixel", "psnr_rgb", "psnr_channel_mean", "ms_ssim", "lpips", "enc_s", "dec_s")
BD_SCHEMA = pa.schema([
    ("dataset", pa.string()), ("method", pa.string()), ("anchor", pa.string()), ("distortion", pa.string()),
    ("bd_method", pa.string()), ("bd_rate_pct", pa.float64()), ("bd_psnr_db", pa.float64()),
    ("points", pa.int32()), ("anchor_points", pa.int32()), ("note", pa.string()),
])
PLOT_COLUMNS = ("dataset", "method", "quality", "bpp", "psnr_rgb", "ms_ssim", "lpips")
COMPARISON_COLUMNS = ("dataset", "method", "anchor", "distortion", "bd_method", "bd_rate_pct", "bd_psnr_db",
                "enc_time_ratio", "dec_time_ratio", "points", "anchor_points", "note")


def load_rows(rows_root: str | os.PathLike, timings: str | os.PathLike | None = None) -> pd.DataFrame:
    """The coded rows, with ``enc_s``/``dec_s`` taken from the ``timings`` Parquet if given."""
    table = results.read_table(rows_root).to_pandas()
    if timings is not None and Path(timings).is_file():
        measured = pd.read_parquet(timings)
        missing = set(KEY_COLUMNS + TIMING_COLUMNS) - set(measured.columns)
        if missing:
            raise ConfigError(f"{timings}: not a timings table, missing columns {sorted(missing)}")
        table = table.drop(columns=list(TIMING_COLUMNS)).merge(
            measured[list(KEY_COLUMNS + TIMING_COLUMNS)], on=list(KEY_COLUMNS), how="left")
    return table


def rd_curves(rows: pd.DataFrame) -> pd.DataFrame:
    """One point per (dataset, method, quality): the means of :data:`CURVE_COLUMNS`, and ``images``."""
    grouped = rows.groupby(["dataset", "method", "quality"], sort=True)
    curves = grouped[list(CURVE_COLUMNS)].mean()
    curves["images"] = grouped.size()
    return curves.reset_index()


def bd_table(curves: pd.DataFrame, anchor: str = "hevc", distortion: str = "psnr_rgb",
             method: str = bd.DEFAULT_METHOD) -> pd.DataFrame:
    """BD-rate and BD-PSNR (in units of ``distortion``) of each method against ``anchor``, per data set."""
    if distortion not in CURVE_COLUMNS:
        raise ConfigError(f"distortion must be one of {CURVE_COLUMNS}, got {distortion!r}")
    records = []
    for dataset, per_dataset in curves.groupby("dataset", sort=True):
        reference = per_dataset[per_dataset["method"] == anchor]
        for name, curve in per_dataset.groupby("method", sort=True):
            if name == anchor:
                continue
            record = {"dataset": dataset, "method": name, "anchor": anchor, "distortion": distortion,
                      "bd_method": method, "bd_rate_pct": math.nan, "bd_psnr_db": math.nan,
                      "points": len(curve), "anchor_points": len(reference), "note": ""}
            if reference.empty:
                record["note"] = f"no {anchor} rows for {dataset}"
            else:
                args = (reference["bpp"], reference[distortion], curve["bpp"], curve[distortion])
                notes = []
                for key, function in (("bd_rate_pct", bd.bd_rate), ("bd_psnr_db", bd.bd_psnr)):
                    try:
                        record[key] = float(function(*args, method=method))
                    except ConfigError as exc:
                        notes.append(f"{key}: {exc}")
                record["note"] = "; ".join(notes)
            records.append(record)
    return pd.DataFrame(records, columns=BD_SCHEMA.names)


def reference_pairs() -> dict[str, str]:
    """{method: the method it is compared to} for every registered method that names one."""
    from .methods import all_methods

    return {m.name: m.compare_to for m in all_methods() if m.compare_to}


def comparisons(curves: pd.DataFrame, distortion: str = "psnr_rgb", method: str = bd.DEFAULT_METHOD,
                rows: pd.DataFrame | None = None, pairs: dict[str, str] | None = None) -> pd.DataFrame:
    """Each method against its reference method on each data set that has both.

    ``bd_rate_pct`` / ``bd_psnr_db``: BD-rate at equal ``distortion`` and BD-delta of
    ``distortion`` with the reference as the anchor (:func:`bd_table`; EDMS's paper saves 5% of
    the bits against DSSLIC: about -5). ``enc_time_ratio`` / ``dec_time_ratio``: mean enc_s /
    dec_s of the method over the reference's (EDMS's paper: 0.76 for encoding), over ``rows``
    when given, else over the curves' points; NaN without timings. ``pairs`` defaults to
    :func:`reference_pairs`.
    """
    pairs = reference_pairs() if pairs is None else pairs
    tables = []
    times = (rows if rows is not None else curves).groupby(["dataset", "method"])[list(TIMING_COLUMNS)].mean()
    for name, anchor in sorted(pairs.items()):
        subset = curves[curves["method"].isin((name, anchor))]
        present = subset.groupby("dataset")["method"].agg(set)
        subset = subset[subset["dataset"].isin([d for d, m in present.items() if m == {name, anchor}])]
        if subset.empty:
            continue
        table = bd_table(subset, anchor=anchor, distortion=distortion, method=method)
        for column, timing in (("enc_time_ratio", "enc_s"), ("dec_time_ratio", "dec_s")):
            table[column] = [float(times.at[(d, m), timing] / times.at[(d, anchor), timing])
                             for d, m in zip(table["dataset"], table["method"])]
        tables.append(table)
    if not tables:
        return pd.DataFrame(columns=list(COMPARISON_COLUMNS))
    return pd.concat(tables, ignore_index=True)[list(COMPARISON_COLUMNS)].sort_values(
        ["dataset", "method"], kind="stable").reset_index(drop=True)


def _finite(value) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None


def segmentation_scores(segments_dir: str | os.PathLike | None) -> dict:
    """Mean per-image mIoU of each ``<dataset>/<split>.parquet`` under the segment stage's output."""
    scores: dict = {}
    if segments_dir is None or not Path(segments_dir).is_dir():
        return scores
    for path in sorted(Path(segments_dir).glob("*/*.parquet")):
        table = pd.read_parquet(path, columns=["miou", "pixel_accuracy"])
        scores.setdefault(path.parent.name, {})[path.stem] = {
            "images": int(len(table)), "miou": _finite(table["miou"].mean()),
            "pixel_accuracy": _finite(table["pixel_accuracy"].mean())}
    return scores


def metrics_dict(curves: pd.DataFrame, bd_rows: pd.DataFrame, segmentation: dict,
                 comparison_rows: pd.DataFrame | None = None) -> dict:
    """The ``dvc metrics`` document: nested dataset -> method -> figures (NaN as null)."""
    doc: dict = {"bd": {}, "rd": {}}
    for row in (comparison_rows if comparison_rows is not None else pd.DataFrame()).itertuples(index=False):
        doc.setdefault("comparisons", {}).setdefault(row.dataset, {})[row.method] = {
            "anchor": row.anchor,
            **{key: _finite(getattr(row, key)) for key in ("bd_rate_pct", "bd_psnr_db", "enc_time_ratio",
                                                            "dec_time_ratio")}}
    for row in bd_rows.itertuples(index=False):
        doc["bd"].setdefault(row.dataset, {})[row.method] = {
            "bd_rate_pct": _finite(row.bd_rate_pct), "bd_psnr_db": _finite(row.bd_psnr_db)}
    for (dataset, name), curve in curves.groupby(["dataset", "method"], sort=True):
        doc["rd"].setdefault(dataset, {})[name] = {
            "points": int(len(curve)), "mean_bpp": _finite(curve["bpp"].mean()),
            "mean_psnr_rgb": _finite(curve["psnr_rgb"].mean()), "mean_ms_ssim": _finite(curve["ms_ssim"].mean()),
            "mean_lpips": _finite(curve["lpips"].mean())}
    if segmentation:
        doc["segmentation"] = segmentation
    return doc


def rd_figure(curves: pd.DataFrame, dataset: str, anchor: str | None = None, fmt: str = "png") -> bytes:
    """PSNR-RGB, MS-SSIM and (when any row has it) LPIPS against bpp, one line per method, as
    ``fmt`` (png, or svg for the HTML report) bytes; the same curves give the same bytes."""
    matplotlib = import_extra("matplotlib", "report", "the aggregate stage's plots")
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    data = curves[curves["dataset"] == dataset]
    panels = [("psnr_rgb", "PSNR-RGB (dB)"), ("ms_ssim", "MS-SSIM")]
    if "lpips" in data and data["lpips"].notna().any():
        panels.append(("lpips", "LPIPS (AlexNet, lower is better)"))
    with matplotlib.rc_context({"svg.hashsalt": "semlic", "svg.fonttype": "none"}):
        figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2))
        for name, curve in data.groupby("method", sort=True):
            curve = curve.sort_values("bpp")
            style = dict(marker="o", markersize=3, linewidth=2.2 if name == anchor else 1.4)
            for ax, (column, _) in zip(axes, panels):
                ax.plot(curve["bpp"], curve[column], label=name, **style)
        for ax, ylabel in zip(axes, (label for _, label in panels)):
            ax.set_xlabel("bits per pixel (whole file)")
            ax.set_ylabel(ylabel)
            ax.grid(True, alpha=0.3)
        axes[0].legend(fontsize=8)
        figure.suptitle(f"{dataset}: rate-distortion, mean over "
                        f"{int(data['images'].max()) if len(data) else 0} images")
        figure.tight_layout()
        buffer = io.BytesIO()
        metadata = {"Software": None} if fmt == "png" else {"Date": None, "Creator": None}
        figure.savefig(buffer, format=fmt, dpi=100, metadata=metadata)
        plt.close(figure)
    return buffer.getvalue()


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


def plot_curves(curves: pd.DataFrame, dataset: str, path: Path, anchor: str | None = None) -> None:
    """:func:`rd_figure` as a PNG file."""
    atomic_write_bytes(path, rd_figure(curves, dataset, anchor=anchor))


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
        plot_curves(curves, dataset, out_dir / "figures" / f"rd_{dataset}.png", anchor=anchor)
    return doc
