"""The report library: the tables every report front-end shares (aggregate's HTML report, `semlic report`,
`run-report`, `study-report`), computed once from the rows and laid out as each needs.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import pandas as pd


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
