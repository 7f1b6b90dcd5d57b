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
edms_vs_dsslic.csv     EDMS against DSSLIC per data set (:func:`edms_vs_dsslic`): BD-rate (%)
                       and BD-PSNR (dB) of edms and edms_noenh with dsslic as the anchor, and
                       the mean encode / decode time ratios method/dsslic (header only when
                       either is missing)
metrics.json           BD figures, mean rate and quality per method, segmentation mIoU, the
                       EDMS-vs-DSSLIC figures (``dvc metrics show``)
plots/<method>.csv     the RD points of one method (``dvc plots show``: bpp vs psnr_rgb)
figures/rd_<d>.png     PSNR-RGB and MS-SSIM against bpp, every method, one figure per data set
=====================  ===================================================================

RD points follow CompressAI's convention: at each quality setting, bpp and PSNR are
averaged over the images of the data set. Bjontegaard deltas (:mod:`semlic.bd`) need four
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
import pyarrow.parquet as pq

from . import bd, results
from .errors import ConfigError
from .imageio import atomic_write_bytes

TIMING_COLUMNS = ("enc_s", "dec_s")
KEY_COLUMNS = ("dataset", "method", "image_id", "quality")
CURVE_COLUMNS = ("bpp", "bits_per_subpixel", "psnr_rgb", "psnr_channel_mean", "ms_ssim", "enc_s", "dec_s")
BD_SCHEMA = pa.schema([
    ("dataset", pa.string()), ("method", pa.string()), ("anchor", pa.string()), ("distortion", pa.string()),
    ("bd_method", pa.string()), ("bd_rate_pct", pa.float64()), ("bd_psnr_db", pa.float64()),
    ("points", pa.int32()), ("anchor_points", pa.int32()), ("note", pa.string()),
])
PLOT_COLUMNS = ("dataset", "method", "quality", "bpp", "psnr_rgb", "ms_ssim")
EDMS_METHODS = ("edms", "edms_noenh")
EDMS_ANCHOR = "dsslic"
EDMS_COLUMNS = ("dataset", "method", "anchor", "distortion", "bd_method", "bd_rate_pct", "bd_psnr_db",
                "enc_time_ratio", "dec_time_ratio", "points", "anchor_points", "note")


def _write_parquet(table: pa.Table, path: Path) -> None:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    atomic_write_bytes(path, buffer.getvalue())


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


def edms_vs_dsslic(curves: pd.DataFrame, distortion: str = "psnr_rgb", method: str = bd.DEFAULT_METHOD,
                   rows: pd.DataFrame | None = None) -> pd.DataFrame:
    """EDMS against DSSLIC on each data set that has both: one row per EDMS method present.

    ``bd_rate_pct`` / ``bd_psnr_db``: BD-rate at equal ``distortion`` and BD-delta of
    ``distortion`` of the method with dsslic as the anchor (:func:`bd_table`; the paper's EDMS
    saves 5% of the bits: about -5). ``enc_time_ratio`` / ``dec_time_ratio``: mean enc_s /
    dec_s of the method over the mean of dsslic's (the paper: 0.76 for encoding), over
    ``rows`` when given, else over the curves' points; NaN without timings.
    """
    subset = curves[curves["method"].isin((EDMS_ANCHOR, *EDMS_METHODS))]
    present = subset.groupby("dataset")["method"].agg(set)
    subset = subset[subset["dataset"].isin([d for d, m in present.items() if EDMS_ANCHOR in m and m - {EDMS_ANCHOR}])]
    table = bd_table(subset, anchor=EDMS_ANCHOR, distortion=distortion, method=method)
    times = (rows if rows is not None else curves).groupby(["dataset", "method"])[list(TIMING_COLUMNS)].mean()
    for column, timing in (("enc_time_ratio", "enc_s"), ("dec_time_ratio", "dec_s")):
        table[column] = [float(times.at[(d, m), timing] / times.at[(d, EDMS_ANCHOR), timing])
                         for d, m in zip(table["dataset"], table["method"])]
    return table[list(EDMS_COLUMNS)].reset_index(drop=True)


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
                 edms_rows: pd.DataFrame | None = None) -> dict:
    """The ``dvc metrics`` document: nested dataset -> method -> figures (NaN as null)."""
    doc: dict = {"bd": {}, "rd": {}}
    for row in (edms_rows if edms_rows is not None else pd.DataFrame()).itertuples(index=False):
        doc.setdefault("edms_vs_dsslic", {}).setdefault(row.dataset, {})[row.method] = {
            key: _finite(getattr(row, key)) for key in ("bd_rate_pct", "bd_psnr_db", "enc_time_ratio", "dec_time_ratio")}
    for row in bd_rows.itertuples(index=False):
        doc["bd"].setdefault(row.dataset, {})[row.method] = {
            "bd_rate_pct": _finite(row.bd_rate_pct), "bd_psnr_db": _finite(row.bd_psnr_db)}
    for (dataset, name), curve in curves.groupby(["dataset", "method"], sort=True):
        doc["rd"].setdefault(dataset, {})[name] = {
            "points": int(len(curve)), "mean_bpp": _finite(curve["bpp"].mean()),
            "mean_psnr_rgb": _finite(curve["psnr_rgb"].mean()), "mean_ms_ssim": _finite(curve["ms_ssim"].mean())}
    if segmentation:
        doc["segmentation"] = segmentation
    return doc


def plot_curves(curves: pd.DataFrame, dataset: str, path: Path, anchor: str | None = None) -> None:
    """PSNR-RGB and MS-SSIM against bpp, one line per method, written as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    data = curves[curves["dataset"] == dataset]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, curve in data.groupby("method", sort=True):
        curve = curve.sort_values("bpp")
        style = dict(marker="o", markersize=3, linewidth=2.2 if name == anchor else 1.4)
        axes[0].plot(curve["bpp"], curve["psnr_rgb"], label=name, **style)
        axes[1].plot(curve["bpp"], curve["ms_ssim"], label=name, **style)
    for ax, ylabel in zip(axes, ("PSNR-RGB (dB)", "MS-SSIM")):
        ax.set_xlabel("bits per pixel (whole file)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle(f"{dataset}: rate-distortion, mean over {int(data['images'].max()) if len(data) else 0} images")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())


def aggregate(rows_root: str | os.PathLike, out_dir: str | os.PathLike, *, timings: str | os.PathLike | None = None,
              segments_dir: str | os.PathLike | None = None, anchor: str = "hevc", distortion: str = "psnr_rgb",
              bd_method: str = bd.DEFAULT_METHOD) -> dict:
    """Write the files of the module docstring under ``out_dir``; return the metrics document."""
    out_dir = Path(out_dir)
    rows = load_rows(rows_root, timings)
    results.write_rows(rows.to_dict("records"), out_dir / "rd.parquet")
    curves = rd_curves(rows)
    _write_parquet(pa.Table.from_pandas(curves, preserve_index=False).replace_schema_metadata(None),
                   out_dir / "curves.parquet")
    bd_rows = bd_table(curves, anchor=anchor, distortion=distortion, method=bd_method)
    _write_parquet(pa.Table.from_pandas(bd_rows, schema=BD_SCHEMA, preserve_index=False).replace_schema_metadata(None),
                   out_dir / "bd.parquet")
    edms_rows = edms_vs_dsslic(curves, distortion=distortion, method=bd_method, rows=rows)
    atomic_write_bytes(out_dir / "edms_vs_dsslic.csv",
                       edms_rows.to_csv(index=False, float_format="%.6g", lineterminator="\n").encode())
    doc = metrics_dict(curves, bd_rows, segmentation_scores(segments_dir), edms_rows)
    atomic_write_bytes(out_dir / "metrics.json", (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())
    for name, curve in curves.groupby("method", sort=True):
        text = curve.sort_values(["dataset", "bpp"])[list(PLOT_COLUMNS)].to_csv(index=False, float_format="%.6g")
        atomic_write_bytes(out_dir / "plots" / f"{name}.csv", text.encode())
    for dataset in sorted(curves["dataset"].unique()):
        plot_curves(curves, dataset, out_dir / "figures" / f"rd_{dataset}.png", anchor=anchor)
    return doc
