"""The report library: every table and figure the reports show, computed once from the rows.

The front-ends choose and lay them out: the aggregate stage (:mod:`semlic.aggregate`: the Parquet
tables, metrics.json, plots), ``semlic report`` (:mod:`semlic.html_report`), ``semlic run-report``
(:mod:`semlic.run_report`: a pipeline run on real data) and ``semlic study-report``
(:mod:`semlic.study`: the GPU study). Nothing here writes a report; everything takes rows (the
section-6 schema of :mod:`semlic.results`) or what a stage left on disk and returns a table, a
figure's bytes or Markdown lines.

=====================  =========================================================================
part                   what
=====================  =========================================================================
rows                   :func:`load_rows` (a hive tree, timings joined), :func:`merge_rows` (several
                       sources, first wins), :func:`read_rows`, :func:`with_shared_base`
curves and BD          :func:`rd_curves` (CompressAI's convention: means at each quality),
                       :func:`bd_table` (one distortion), :func:`bd_tables` (every one of
                       :data:`DISTORTIONS`), :func:`pair_bd`, :func:`comparisons` (each method
                       against the method its paper compares it to)
layers                 :func:`layer_shares`, :func:`layer_share_columns`, :func:`row_counts`
segmentation           :func:`segmentation_scores` (per-image means), :func:`segmentation_table`
                       (confusion summed over a split)
training and speed     :func:`training_from_models` (the models' logs), :func:`training_from_logs`
                       (the GPU study's), :func:`speed_table`, :func:`timing_comparison`
names and anchors      :func:`label`, :func:`colour` (registered methods and codecs),
                       :func:`paper_points`, :func:`load_anchors` (published curves)
coding for machines    :func:`task_summary` (mIoU from summed confusions), :func:`task_table` (BD-rate
                       on mIoU, rates to 90/95 % of the uncompressed mIoU), :func:`rate_miou_figure`
figures                :func:`rd_figure`: every RD figure (PNG or SVG)
text                   :func:`fmt`, :func:`markdown_table`, :func:`bd_sections`, :func:`answer`
=====================  =========================================================================
"""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from . import bd, results
from .errors import ConfigError, import_extra
from .image_codecs import CODECS

# --- names, styles and published figures ---------------------------------------------------------
BASELINES = ("avif", "jxl", "webp", "jpeg2000", "jpeg")


ANCHOR = "hevc"


BASELINE_LABELS = {name: CODECS[name].label for name in (ANCHOR, *BASELINES)}   # each codec's declaration


DISTORTIONS = ("psnr_rgb", "psnr_channel_mean", "ms_ssim")


#: Published Kodak curves overlaid on the figures (files of ../shared/anchors/kodak, CompressAI).
ANCHOR_FILES = {"BPG 4:4:4 x265 (CompressAI)": "bpg_444_x265_ycbcr.json", "VTM (CompressAI)": "vtm.json",
                "JPEG 2000 (CompressAI)": "jpeg2000.json", "WebP (CompressAI)": "webp.json"}


BASELINE_COLOURS = {**{name: CODECS[name].colour for name in (ANCHOR, *BASELINES)},
                    "BPG 4:4:4 x265 (CompressAI)": "black",
                    "VTM (CompressAI)": "tab:olive", "JPEG 2000 (CompressAI)": "tab:pink",
                    "WebP (CompressAI)": "tab:brown"}


PAPER_MARKERS = ("*", "P", "X", "D", "v", "^")


def semantic_methods() -> tuple[str, ...]:
    """The registered coding methods (semlic.methods): what the study compares against HEVC."""
    from .methods import method_names

    return method_names()


def label(name: str) -> str:
    from .methods import get_method

    return get_method(name).label if name in semantic_methods() else BASELINE_LABELS.get(name, name)


def colour(name: str) -> str | None:
    from .methods import get_method

    return get_method(name).colour if name in semantic_methods() else BASELINE_COLOURS.get(name)


def paper_points(dataset: str | None = "Kodak") -> list[dict]:
    """Every registered method's published points on ``dataset`` (None: every data set; their axis: bits
    per sub-pixel, mean per-channel PSNR)."""
    from .methods import all_methods

    return [{"method": m.name, "source": p.source, "bits_per_subpixel": p.bits_per_subpixel, "psnr": p.psnr,
             "ms_ssim": p.ms_ssim, "quality": p.quality, "dataset": p.dataset, "setting": p.setting}
            for m in all_methods() for p in m.paper_points if dataset is None or p.dataset == dataset]


def paper_seconds(name: str, key: str) -> float:
    from .methods import get_method

    return get_method(name).paper_seconds.get(key, math.nan) if name in semantic_methods() else math.nan


def default_anchors_dir() -> Path | None:
    path = Path(__file__).resolve().parents[2] / "shared" / "anchors" / "kodak"
    return path if path.is_dir() else None


def load_anchor(path: str | os.PathLike) -> dict:
    """A CompressAI-style JSON curve: {name, bpp, psnr_rgb, ms_ssim (or None)}."""
    data = json.loads(Path(path).read_text())
    found = data["results"]
    ms = found.get("ms-ssim-rgb", found.get("ms-ssim"))
    return {"name": data.get("name", Path(path).stem), "bpp": np.asarray(found["bpp"], float),
            "psnr_rgb": np.asarray(found["psnr-rgb"], float), "ms_ssim": None if ms is None else np.asarray(ms, float)}


def load_anchors(anchors_dir: str | os.PathLike | None) -> dict[str, dict]:
    if anchors_dir is None or not Path(anchors_dir).is_dir():
        return {}
    return {label: load_anchor(Path(anchors_dir) / name) for label, name in ANCHOR_FILES.items()
            if (Path(anchors_dir) / name).is_file()}


# --- rows ----------------------------------------------------------------------------------------
TIMING_COLUMNS = ("enc_s", "dec_s")


KEY_COLUMNS = ("dataset", "method", "image_id", "quality")


CURVE_COLUMNS = ("bpp", "bits_per_subpixel", "psnr_rgb", "psnr_channel_mean", "ms_ssim", "lpips", "enc_s", "dec_s")


BD_SCHEMA = pa.schema([
    ("dataset", pa.string()), ("method", pa.string()), ("anchor", pa.string()), ("distortion", pa.string()),
    ("bd_method", pa.string()), ("bd_rate_pct", pa.float64()), ("bd_psnr_db", pa.float64()),
    ("points", pa.int32()), ("anchor_points", pa.int32()), ("note", pa.string()),
])


COMPARISON_COLUMNS = ("dataset", "method", "anchor", "distortion", "bd_method", "bd_rate_pct", "bd_psnr_db",
                "enc_time_ratio", "dec_time_ratio", "points", "anchor_points", "note")


#: The quality of a layered codec's base alone (no residual): one point of its curve in every report.
NO_RESIDUAL = -1.0


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


def merge_rows(sources: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """Rows of several result files or hive trees; a (dataset, method) pair comes from the first
    source that has it (so the device's rows win over, e.g., reports/calibration_rows.parquet)."""
    frames, seen = [], set()
    for source in sources:
        table = load_rows(source)
        pairs = set(zip(table["dataset"], table["method"]))
        keep = table[[(d, m) not in seen for d, m in zip(table["dataset"], table["method"])]]
        seen |= pairs
        frames.append(keep)
    if not frames:
        raise ConfigError("no result rows given")
    rows = pd.concat(frames, ignore_index=True)
    rows["layer_bits"] = [dict(v) for v in rows["layer_bits"]]
    return rows.sort_values(list(results.SORT_KEY), kind="stable").reset_index(drop=True)


def read_rows(rows_path: Path) -> pd.DataFrame:
    """The rows of a results tree or one Parquet file, sorted, ``layer_bits`` as dicts without empty layers."""
    rows = load_rows(rows_path) if rows_path.is_dir() else pd.read_parquet(rows_path)
    if rows.empty:
        raise ConfigError(f"{rows_path}: no result rows")
    rows["layer_bits"] = [{k: v for k, v in dict(b).items() if v is not None} for b in rows["layer_bits"]]
    return rows.sort_values(list(results.SORT_KEY), kind="stable").reset_index(drop=True)


def with_shared_base(rows: pd.DataFrame, shared: dict[str, str]) -> pd.DataFrame:
    """Add the base-alone rows (quality :data:`NO_RESIDUAL`) a variant shares with its twin (``shared``:
    {variant: twin}, e.g. a residual coded otherwise over the same base) when it lacks them."""
    extra = []
    for variant, twin in shared.items():
        for dataset in rows.loc[rows["method"] == variant, "dataset"].unique():
            mine = rows[(rows["dataset"] == dataset) & (rows["method"] == variant)]
            if (mine["quality"] == NO_RESIDUAL).any():
                continue
            base = rows[(rows["dataset"] == dataset) & (rows["method"] == twin) & (rows["quality"] == NO_RESIDUAL)
                        & rows["image_id"].isin(set(mine["image_id"]))]
            extra.append(base.assign(method=variant))
    if not extra:
        return rows
    rows = pd.concat([rows, *extra], ignore_index=True)
    return rows.sort_values(list(results.SORT_KEY), kind="stable").reset_index(drop=True)


# --- curves and Bjontegaard deltas ---------------------------------------------------------------
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


def bd_tables(curves: pd.DataFrame, anchor: str = ANCHOR) -> pd.DataFrame:
    """:func:`bd_table` for every distortion of :data:`DISTORTIONS`, stacked."""
    return pd.concat([bd_table(curves, anchor=anchor, distortion=d) for d in DISTORTIONS], ignore_index=True)


def ablation_table(curves: pd.DataFrame) -> pd.DataFrame:
    """The base-alone points (quality :data:`NO_RESIDUAL`) of every method whose paper reports that setting
    (:class:`~semlic.methods.base.PaperPoint` ``setting``: DSSLIC's Table 1, withSeg / noSeg / upComp), per
    data set, with the paper's figures on each data set it measured (``paper_<dataset>_*``)."""
    published: dict[str, list[dict]] = {}
    for point in paper_points(dataset=None):
        if point["setting"] and point["quality"] == NO_RESIDUAL:
            published.setdefault(point["method"], []).append(point)
    records = []
    for dataset in sorted(curves["dataset"].unique()):
        for method, points in published.items():
            at = curves[(curves["dataset"] == dataset) & (curves["method"] == method) & (curves["quality"] == NO_RESIDUAL)]
            if at.empty:
                continue
            p = at.iloc[0]
            record = {"dataset": dataset, "setting": points[0]["setting"], "method": method, "images": int(p["images"]),
                      "bpp": p["bpp"], "bits_per_subpixel": p["bits_per_subpixel"], "psnr_rgb": p["psnr_rgb"],
                      "psnr_channel_mean": p["psnr_channel_mean"], "ms_ssim": p["ms_ssim"]}
            for point in sorted(points, key=lambda q: q["dataset"]):
                key = point["dataset"].lower()
                record.update({f"paper_{key}_bits_per_subpixel": point["bits_per_subpixel"],
                               f"paper_{key}_psnr": point["psnr"], f"paper_{key}_ms_ssim": point["ms_ssim"]})
            records.append(record)
    return pd.DataFrame(records)


def pair_bd(curves: pd.DataFrame, method: str, anchor: str) -> pd.DataFrame:
    """BD of ``method`` against ``anchor`` on every data set and distortion where both have curves."""
    subset = curves[curves["method"].isin([method, anchor])]
    frames = [bd_table(subset, anchor=anchor, distortion=d) for d in DISTORTIONS]
    table = pd.concat(frames, ignore_index=True)
    return table[table["method"] == method].reset_index(drop=True)


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


# --- layers, segmentation, training, speed -------------------------------------------------------
def layer_shares(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, method, quality): each layer's bits over all the images' pixels (bpp) and its share."""
    records = []
    for (dataset, method, quality), group in rows.groupby(["dataset", "method", "quality"], sort=True):
        totals: dict[str, float] = {}
        for bits in group["layer_bits"]:   # a dict, or the (name, bits) pairs of a Parquet map column
            for name, value in dict(bits).items():
                totals[name] = totals.get(name, 0.0) + float(value)
        pixels = float((group["height"] * group["width"]).sum())
        all_bits = sum(totals.values())
        for name, value in sorted(totals.items()):
            records.append({"dataset": dataset, "method": method, "quality": quality, "layer": name,
                            "bpp": value / pixels, "share": value / all_bits if all_bits else math.nan,
                            "images": len(group)})
    return pd.DataFrame(records, columns=["dataset", "method", "quality", "layer", "bpp", "share", "images"])


def layer_share_columns(rows: pd.DataFrame) -> pd.DataFrame:
    """:func:`layer_shares` over every quality, one row per (dataset, method) of files with more than one
    layer and one column per layer: its mean bpp and its share of the method's bits, as "0.123 (45%)"."""
    records = []
    for (dataset, method), group in rows.groupby(["dataset", "method"], sort=True):
        shares = layer_shares(group.assign(quality=0.0))
        if len(shares) < 2:
            continue
        pixels = float((group["height"] * group["width"]).sum())
        record = {"dataset": dataset, "method": method, "total bpp": shares["bpp"].sum()}
        for layer in shares.sort_values("bpp", ascending=False).itertuples():
            record[layer.layer] = f"{layer.bpp:.4f} ({100 * layer.share:.0f}%)" if pixels else "-"
        records.append(record)
    return pd.DataFrame(records).fillna("-") if records else pd.DataFrame(columns=["dataset", "method", "total bpp"])


def row_counts(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, method): images, qualities and rows: what a reader checks against what was planned."""
    grouped = rows.groupby(["dataset", "method"], sort=True)
    return pd.DataFrame({"images": grouped["image_id"].nunique(), "qualities": grouped["quality"].nunique(),
                         "rows": grouped.size()}).reset_index()


def finite(value) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None


def segmentation_scores(segments_dir: str | os.PathLike | None) -> dict:
    """Mean per-image mIoU of each ``<dataset>/<split>.parquet`` under the segment stage's output."""
    scores: dict = {}
    if segments_dir is None or not Path(segments_dir).is_dir():
        return scores
    for path in sorted(Path(segments_dir).glob("*/*.parquet")):
        table = pd.read_parquet(path, columns=["miou", "pixel_accuracy"])
        scores.setdefault(path.parent.name, {})[path.stem] = {
            "images": int(len(table)), "miou": finite(table["miou"].mean()),
            "pixel_accuracy": finite(table["pixel_accuracy"].mean())}
    return scores


def segmentation_table(data_dir: Path, dataset: str, num_classes: int) -> pd.DataFrame:
    """mIoU and pixel accuracy of the segment stage's maps on each labelled split (confusion summed)."""
    from .imageio import load_label_map

    records = []
    for split_dir in sorted((data_dir / "segments" / dataset).glob("*")):
        labels_dir = data_dir / "prepared" / dataset / split_dir.name / "labels"
        if not split_dir.is_dir() or not labels_dir.is_dir():
            continue
        confusion = np.zeros((num_classes, num_classes), np.int64)
        images = 0
        for path in sorted(split_dir.glob("*.png")):
            label_path = labels_dir / path.name
            if not label_path.is_file():
                continue
            pred, truth = load_label_map(path).astype(np.int64), load_label_map(label_path).astype(np.int64)
            valid = truth < num_classes
            confusion += np.bincount(truth[valid] * num_classes + pred[valid].clip(0, num_classes - 1),
                                     minlength=num_classes ** 2).reshape(num_classes, num_classes)
            images += 1
        if not images:
            continue
        inter = np.diag(confusion).astype(float)
        union = confusion.sum(0) + confusion.sum(1) - inter
        present = confusion.sum(1) > 0
        iou = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
        records.append({"dataset": dataset, "split": split_dir.name, "images": images,
                        "miou": float(np.nanmean(iou[present])), "pixel_accuracy": float(inter.sum() / confusion.sum()),
                        **{f"iou_{i}": float(v) for i, v in enumerate(iou)}})
    return pd.DataFrame(records)


def training_from_models(models_dir: Path) -> pd.DataFrame:
    """One row per training log under ``models_dir``: how far each model got and how fast."""
    from .model_files import read_metadata

    records = []
    for log_path in sorted(models_dir.rglob("train_log.parquet")):
        log = pd.read_parquet(log_path)
        if log.empty:
            continue
        last = log.iloc[-1]
        folder = log_path.parent
        model_files = [p for p in sorted(folder.glob("*.safetensors")) if p.name != "train_state.safetensors"]
        meta = {}
        for path in model_files:
            try:
                meta = read_metadata(path)
                break
            except Exception:   # noqa: BLE001  (not a model file)
                continue
        planned = json.loads(meta["planned_iterations"]) if "planned_iterations" in meta else None
        losses = {k: float(last[k]) for k in log.columns
                  if k not in ("iteration", "seconds", "images_per_s", "lr", "epoch", "perceptual")
                  and isinstance(last[k], (float, np.floating)) and math.isfinite(last[k])}
        main_loss = next((losses[k] for k in ("g_total", "loss", "total", "rd_loss", "ce") if k in losses),
                         next(iter(losses.values()), math.nan))
        records.append({"model": str(folder.relative_to(models_dir)), "file": model_files[0].name if model_files else "-",
                        "iterations": int(last["iteration"]), "planned": planned,
                        "seconds": float(last["seconds"]), "images_per_s": float(log["images_per_s"].mean()),
                        "final_loss": main_loss,
                        "losses": ", ".join(f"{k} {v:.4g}" for k, v in sorted(losses.items()))})
    return pd.DataFrame(records)


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def training_from_logs(results_dir: Path) -> pd.DataFrame:
    """Images/s and GPU busy share of each training step, from the GPU study's logs (``results_dir/logs``)."""
    logs, records = results_dir / "logs", []
    for step in sorted(p.name[: -len("_chunks.jsonl")] for p in logs.glob("*_chunks.jsonl")):
        chunks = _read_jsonl(logs / f"{step}_chunks.jsonl")
        plan = json.loads((logs / f"{step}_plan.json").read_text()) if (logs / f"{step}_plan.json").is_file() else {}
        if not chunks:
            continue
        trained = [c for c in chunks if c["iterations"] > 0]
        images = sum(c["iterations"] * c["batch_size"] for c in trained)
        seconds = sum(c["train_s"] for c in trained)
        shares = [c["gpu_busy_share"] for c in trained if c.get("gpu_busy_share") is not None]
        records.append({"step": step, "iterations": trained[-1]["end_iteration"] if trained else 0,
                        "epochs": plan.get("epochs"), "epochs_wanted": plan.get("epochs_wanted"),
                        "train_s": seconds, "wall_s": sum(c["wall_s"] for c in chunks),
                        "images_per_s": images / seconds if seconds else math.nan,
                        "steady_images_per_s": float(np.nanmax([c["steady_images_per_s"] for c in trained]))
                        if trained and not all(math.isnan(c["steady_images_per_s"]) for c in trained) else math.nan,
                        "gpu_busy_share": float(np.mean(shares)) if shares else math.nan, "calls": len(chunks)})
    chunked = {r["step"] for r in records}
    for path in sorted(logs.glob("*_train_log.parquet")):  # the other trainings: one loop each, from its log
        step = path.name[: -len("_train_log.parquet")]     # e.g. segnet, smic_ssnet, hyperprior_q3, latent-seg_q3_gate
        if step in chunked:
            continue
        log = pd.read_parquet(path)
        plan = json.loads((logs / f"{step}_plan.json").read_text()) if (logs / f"{step}_plan.json").is_file() else {}
        records.append({"step": step, "iterations": int(log["iteration"].max()) if len(log) else 0,
                        "epochs": plan.get("epochs"), "epochs_wanted": None,
                        "train_s": float(log["seconds"].max()) if len(log) and "seconds" in log else math.nan,
                        "wall_s": math.nan,
                        "images_per_s": float(log["images_per_s"].mean()) if len(log) else math.nan,
                        "steady_images_per_s": float(log["images_per_s"].iloc[1:].median()) if len(log) > 1 else math.nan,
                        "gpu_busy_share": math.nan, "calls": None})
    return pd.DataFrame(records)


def speed_table(speed: pd.DataFrame) -> pd.DataFrame:
    """Mean seconds per image by (method, device), with the papers' figures beside them."""
    columns = ["enc_s", "enc_network_s", "enc_entropy_s", "dec_s", "dec_network_s", "dec_entropy_s"]
    present = [c for c in columns if c in speed.columns]
    grouped = speed.groupby(["method", "device"], sort=True)
    table = grouped[present].mean()
    table["images"] = grouped.size()
    table["decoder_matched"] = grouped["matches_encoder"].all() if "matches_encoder" in speed.columns else np.nan
    table = table.reset_index()
    table["paper_enc_s_gpu"] = [paper_seconds(m, "enc_gpu") if not d.startswith("cpu") else math.nan
                                for m, d in zip(table["method"], table["device"])]
    table["paper_dec_s"] = [paper_seconds(m, "dec_cpu" if d.startswith("cpu") else "dec_gpu")
                            for m, d in zip(table["method"], table["device"])]
    return table


def timing_comparison(rows: pd.DataFrame, methods: Sequence[str]) -> pd.DataFrame:
    """Mean bpp, PSNR and seconds of ``methods`` at the qualities (>= 0) they all share, with each figure's
    ratio to the first method's."""
    subset = rows[rows["method"].isin(methods) & (rows["quality"] >= 0)]
    records = []
    for dataset, group in subset.groupby("dataset", sort=True):
        shared = set.intersection(*[set(g["quality"]) for _, g in group.groupby("method")]) \
            if group["method"].nunique() == len(methods) else set()
        common = group[group["quality"].isin(shared)]
        for method, g in common.groupby("method", sort=False):
            records.append({"dataset": dataset, "method": method, "qps": len(shared), "images": g["image_id"].nunique(),
                            "bpp": g["bpp"].mean(), "psnr_rgb": g["psnr_rgb"].mean(), "enc_s": g["enc_s"].mean(),
                            "dec_s": g["dec_s"].mean()})
    table = pd.DataFrame(records)
    if len(table):
        base = table[table["method"] == methods[0]].set_index("dataset")
        for column in ("bpp", "enc_s", "dec_s"):
            table[f"{column}_vs_{methods[0]}"] = [row[column] / base.loc[row["dataset"], column]
                                                  if row["dataset"] in base.index else math.nan
                                                  for _, row in table.iterrows()]
    return table


# --- coding for machines: segmentation at the receiver against the bits it reads -------------------
DECODED = "decoded"          # the output: the segmenter on the decoded image
ORIGINAL = "original"        # the method name of the rows on the uncompressed images
TASK_ANCHOR = ("hevc", DECODED)
FRACTIONS = (0.90, 0.95)     # of the uncompressed images' mIoU: the rates to reach them


def confusion_scores(matrix: np.ndarray) -> tuple[float, float]:
    """(mIoU over the classes present in the ground truth or predicted, pixel accuracy) of a
    (K + 1) x (K + 1) confusion matrix (rows: ground truth, columns: prediction; the last row and
    column: void), summed or not (:func:`semlic.machines.confusion` makes one per image)."""
    m = np.asarray(matrix, dtype=np.float64)
    k = m.shape[0] - 1
    tp = np.diag(m)[:k]
    gt, predicted = m[:k].sum(1), m[:, :k].sum(0)
    union = gt + predicted - tp
    present = union > 0
    miou = float((tp[present] / union[present]).mean()) if present.any() else math.nan
    total = m[:k].sum()
    return miou, float(tp.sum() / total) if total else math.nan


def task_summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Coding for machines' task rows (:mod:`semlic.machines`) per (dataset, method, output, quality): images, mean bytes and bpp, mIoU and pixel accuracy
    from the summed confusion matrices, median dec_s."""
    out = []
    for key, group in rows.groupby(["dataset", "method", "output", "quality"], sort=True):
        matrices = np.stack([np.asarray(c, dtype=np.int64) for c in group["confusion"]])
        side = int(round(math.sqrt(matrices.shape[1])))
        miou, accuracy = confusion_scores(matrices.sum(0).reshape(side, side))
        out.append({**dict(zip(["dataset", "method", "output", "quality"], key)), "images": len(group),
                    "bytes": group["bytes"].mean(), "bpp": group["bpp"].mean(), "miou": miou,
                    "pixel_accuracy": accuracy, "dec_s": group["dec_s"].median()})
    return pd.DataFrame(out)


def operational_miou(points: pd.DataFrame) -> pd.DataFrame:
    """The points of one curve that no cheaper point matches in mIoU (sorted by rate; repeated rates
    kept once): the curve a receiver can operate on."""
    from .bd import operational as operational_points

    return operational_points(points, quality="miou")


def rate_at_miou(points: pd.DataFrame, target: float) -> tuple[float, str]:
    """(bpp where the operational curve reaches mIoU ``target``, how): linear in log-rate between
    the two points around it; ``"<="`` when the cheapest point already reaches it; NaN, "not reached"."""
    curve = operational_miou(points)
    if curve.empty or curve["miou"].max() < target:
        return math.nan, "not reached"
    rates, mious = curve["bpp"].to_numpy(), curve["miou"].to_numpy()
    if mious[0] >= target:
        return float(rates[0]), "<="
    i = int(np.argmax(mious >= target))
    t = (target - mious[i - 1]) / (mious[i] - mious[i - 1])
    return float(math.exp(math.log(rates[i - 1]) + t * (math.log(rates[i]) - math.log(rates[i - 1])))), "interpolated"


def task_table(table: pd.DataFrame, anchor: tuple[str, str] = TASK_ANCHOR,
               fractions: Sequence[float] = FRACTIONS) -> pd.DataFrame:
    """Per (dataset, method, output) of a :func:`task_summary`: points, the rate range, best mIoU, BD-rate
    on mIoU against ``anchor`` (NaN with the reason where it cannot be computed) and the bpp to reach
    each fraction of the ``original`` mIoU."""
    out = []
    for dataset, rows in table.groupby("dataset", sort=True):
        ceiling = rows.loc[rows["method"] == ORIGINAL, "miou"]
        ceiling = float(ceiling.iloc[0]) if len(ceiling) else math.nan
        anchor_curve = operational_miou(rows[(rows["method"] == anchor[0]) & (rows["output"] == anchor[1])])
        for (method, output), points in rows[rows["method"] != ORIGINAL].groupby(["method", "output"], sort=True):
            curve = operational_miou(points)
            record = {"dataset": dataset, "method": method, "output": output, "images": int(points["images"].max()),
                      "points": len(curve),
                      "bpp_min": points["bpp"].min(), "bpp_max": points["bpp"].max(), "miou_best": points["miou"].max(),
                      "original_miou": ceiling, "bd_rate_miou_pct": math.nan, "bd_note": ""}
            if (method, output) == tuple(anchor):
                record["bd_note"] = "anchor"
            elif anchor_curve.empty:
                record["bd_note"] = "no anchor rows"
            else:
                try:
                    record["bd_rate_miou_pct"] = bd.bd_rate(anchor_curve["bpp"], anchor_curve["miou"], curve["bpp"],
                                                            curve["miou"])
                except ConfigError as exc:   # too few points, no shared mIoU range: said, not computed
                    text = str(exc)
                    short = (f"the anchor has {len(anchor_curve)}" if text.startswith("anchor") else
                             f"{len(curve)}")
                    record["bd_note"] = (f"{short} operational point(s): BD-rate needs {bd.MIN_POINTS}"
                                         if "at least" in text else "no common mIoU range" if "overlap" in text
                                         else text)
            for fraction in fractions:
                rate, how = rate_at_miou(points, fraction * ceiling) if ceiling == ceiling else (math.nan, "no original")
                record[f"bpp_{round(fraction * 100)}pct"] = rate
                record[f"bpp_{round(fraction * 100)}pct_note"] = how
            out.append(record)
    return pd.DataFrame(out)


def rate_miou_figure(table: pd.DataFrame, dataset: str, fmt: str = "png") -> bytes:
    """The rate-mIoU figure of one data set of a :func:`task_summary` (every method and output; the original
    as a line), as ``fmt`` (png or svg) bytes."""
    matplotlib = import_extra("matplotlib", "report", "the rate-mIoU figure")

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    rows = table[table["dataset"] == dataset]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    palette = plt.get_cmap("tab20")   # more curves than tab10's ten colours
    ceiling = rows.loc[rows["method"] == ORIGINAL, "miou"]
    if len(ceiling):
        ax.axhline(float(ceiling.iloc[0]), color="black", lw=0.8, ls=":", label="uncompressed + segmenter")
    for (method, output), points in rows[rows["method"] != ORIGINAL].groupby(["method", "output"], sort=True):
        points = points.sort_values("bpp")
        style = "-" if output == DECODED else "--"
        ax.plot(points["bpp"], points["miou"], style, marker="o", ms=3, color=palette(len(ax.lines) % 20),
                label=method if output == DECODED else f"{method}: {output}")
    ax.set_xscale("log")
    ax.set_xlabel("bits per pixel (what the receiver reads)")
    ax.set_ylabel("mIoU")
    ax.set_title(f"{dataset}: segmentation at the receiver")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=110)
    plt.close(fig)
    return buffer.getvalue()



# --- figures -------------------------------------------------------------------------------------
def _style(method: str, anchor: str | None) -> dict:
    chosen = {"color": colour(method)} if colour(method) else {}
    if method == anchor:
        return dict(linewidth=2.4, marker="s", markersize=3.5, **chosen)
    if method in semantic_methods():
        return dict(linewidth=2.0, marker="o", markersize=4, **chosen)
    return dict(linewidth=1.2, marker=".", markersize=4, alpha=0.85, **chosen)


def rd_figure(curves: pd.DataFrame, dataset: str, *, anchor: str | None = ANCHOR, published: dict | None = None,
              subpixel: bool = False, fmt: str = "png", title_note: str = "") -> bytes:
    """The RD figure of ``dataset``: PSNR, MS-SSIM and (when any point has it) LPIPS against the rate,
    one line per method (its registered label and colour; ``anchor`` drawn boldest), on a log rate axis.

    ``published``: curves of :func:`load_anchors`, drawn dashed, and then also the papers' own points
    (:func:`paper_points`). ``subpixel``: the papers' axis (bits per sub-pixel, mean per-channel PSNR)
    instead of bpp of the whole file and PSNR-RGB. ``fmt``: png, or svg (the HTML report). The same
    curves give the same bytes.
    """
    matplotlib = import_extra("matplotlib", "report", "the reports' figures")
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    rate = "bits_per_subpixel" if subpixel else "bpp"
    psnr = "psnr_channel_mean" if subpixel else "psnr_rgb"
    scale = 1 / 3 if subpixel else 1.0
    data = curves[curves["dataset"] == dataset]
    panels = [(psnr, "PSNR, mean of R, G, B PSNRs (dB; the papers')" if subpixel else "PSNR-RGB (dB)"),
              ("ms_ssim", "MS-SSIM (RGB)")]
    if "lpips" in data and data["lpips"].notna().any():
        panels.append(("lpips", "LPIPS (AlexNet, lower is better)"))
    order = [m for m in semantic_methods() + (ANCHOR,) + BASELINES if m in set(data["method"])]
    order += sorted(set(data["method"]) - set(order))
    with matplotlib.rc_context({"svg.hashsalt": "semlic", "svg.fonttype": "none"}):
        figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels) + 2.5, 4.6))
        for method in order:
            curve = data[data["method"] == method].sort_values(rate)
            for ax, (column, _) in zip(axes, panels):
                ax.plot(curve[rate], curve[column], label=label(method), **_style(method, anchor))
        for name, found in (published or {}).items():
            style = dict(linestyle="--", linewidth=1.0, color=BASELINE_COLOURS.get(name, "0.5"),
                         label=f"published: {name}")
            axes[0].plot(found["bpp"] * scale, found["psnr_rgb"], **style)
            if found["ms_ssim"] is not None:
                axes[1].plot(found["bpp"] * scale, found["ms_ssim"], **style)
        if published:   # the papers' own points (their axis: bits per sub-pixel, mean per-channel PSNR)
            names = semantic_methods()
            for point in paper_points():
                x = point["bits_per_subpixel"] * (1 if subpixel else 3)
                text = f"{point['source']}: {label(point['method'])}" + ("" if subpixel else " (x3)")
                marker = PAPER_MARKERS[names.index(point["method"]) % len(PAPER_MARKERS)]
                style = dict(marker=marker, markersize=11, linestyle="none", color=colour(point["method"]),
                             markeredgecolor="black", label=text)
                axes[0].plot([x], [point["psnr"]], **style)
                axes[1].plot([x], [point["ms_ssim"]], **style)
        xlabel = ("bits per sub-pixel = file bits / (3 H W) (the papers' 'bpp')" if subpixel
                  else "bits per pixel = file bits / (H W)")
        for ax, (_, ylabel) in zip(axes, panels):
            ax.set_xscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
        axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
        images = int(data["images"].max()) if len(data) else 0
        figure.suptitle(f"{dataset}: mean over {images} images, every byte of each file counted{title_note}")
        figure.tight_layout()
        buffer = io.BytesIO()
        metadata = {"Software": None} if fmt == "png" else {"Date": None, "Creator": None}
        figure.savefig(buffer, format=fmt, dpi=100, metadata=metadata)
        plt.close(figure)
    return buffer.getvalue()


# --- text ----------------------------------------------------------------------------------------
def fmt(value, digits: int = 2, signed: bool = False) -> str:
    """A table cell: NaN and None as a dash, booleans as yes/no, floats to ``digits`` (``signed``: with +)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
    return str(value)


def markdown_table(frame: pd.DataFrame, digits: dict | None = None, signed: Iterable[str] = ()) -> str:
    """A Markdown table of ``frame``, each cell through :func:`fmt` (``digits`` per column, default 3)."""
    digits, signed = digits or {}, set(signed)
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    for row in frame.itertuples(index=False):
        cells = [fmt(v, digits.get(c, 3), c in signed) for c, v in zip(frame.columns, row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bd_sections(bd: pd.DataFrame, digits: int = 2) -> list[str]:
    """Markdown: one BD table against HEVC 4:4:4 per distortion of :data:`DISTORTIONS`."""
    out = []
    for distortion, title in (("psnr_rgb", "PSNR-RGB"), ("psnr_channel_mean", "the papers' mean per-channel PSNR"),
                              ("ms_ssim", "MS-SSIM (BD-PSNR column in MS-SSIM units)")):
        table = bd[bd["distortion"] == distortion][["dataset", "method", "bd_rate_pct", "bd_psnr_db", "points",
                                                     "anchor_points", "note"]]
        out += [f"## BD against HEVC 4:4:4, {title}", "Negative BD-rate / positive BD-PSNR: better than HEVC.", "",
                markdown_table(table, {"bd_rate_pct": digits, "bd_psnr_db": 3 if distortion != "ms_ssim" else 4},
                               signed=("bd_rate_pct", "bd_psnr_db")), ""]
    return out


def answer(bd: pd.DataFrame) -> list[str]:
    """One sentence per (dataset, semantic method): does it beat HEVC intra, by BD-rate on PSNR-RGB?"""
    lines = []
    main = bd[bd["distortion"] == "psnr_rgb"]
    for row in main[main["method"].isin(semantic_methods())].itertuples(index=False):
        name = label(row.method)
        if math.isfinite(row.bd_rate_pct):
            verdict = "beats" if row.bd_rate_pct < 0 else "does not beat"
            lines.append(f"{row.dataset}: {name} {verdict} HEVC intra 4:4:4: BD-rate {row.bd_rate_pct:+.1f} % "
                         f"(BD-PSNR {row.bd_psnr_db:+.2f} dB) over the rates both cover.")
        else:
            lines.append(f"{row.dataset}: {name}: no BD-rate ({row.note or 'no overlap'}).")
    return lines
