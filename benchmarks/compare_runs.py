"""What changed between two runs of the reference profile, per system, from their committed rows alone.

    .venv/bin/python benchmarks/compare_runs.py --old reports/camvid_cpu/previous/rows.parquet \\
        --new reports/camvid_cpu/rows.parquet --out reports/camvid_cpu/changes.csv

For every (data set, method) both runs coded: the BD-rate and BD-PSNR against HEVC 4:4:4 (PSNR-RGB, BD by
PCHIP as in the reports) of the old run, of the new run on all its images, and of the new run on the
old run's images only, on the qualities both runs coded (like for like: the same images, the same
curve); and the base layer at each method's base-alone point (no residual) where it has one: its bpp,
the bpp of each layer, and its PSNR. The ``--out`` CSV holds every figure; a Markdown table is printed.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from semlic.reporting import bd_table, layer_shares, markdown_table, rd_curves, with_shared_base  # noqa: E402
from semlic.run_report import SHARED_BASE  # noqa: E402


def bd_of(rows: pd.DataFrame) -> pd.DataFrame:
    table = bd_table(rd_curves(with_shared_base(rows, SHARED_BASE)))
    return table.set_index(["dataset", "method"])[["bd_rate_pct", "bd_psnr_db", "points"]]


def base_layer(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (data set, method): the base-alone point's bpp, layers and PSNR (quality < 0: no residual)."""
    base = with_shared_base(rows, SHARED_BASE)
    base = base[base["quality"] < 0]
    if base.empty:
        return pd.DataFrame(columns=["dataset", "method"]).set_index(["dataset", "method"])
    shares = layer_shares(base).pivot_table(index=["dataset", "method"], columns="layer", values="bpp")
    shares.columns = [f"base_{c}_bpp" for c in shares.columns]
    curves = rd_curves(base).set_index(["dataset", "method"])[["bpp", "psnr_rgb"]]
    return curves.rename(columns={"bpp": "base_bpp", "psnr_rgb": "base_psnr"}).join(shares)


def compare(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    both = set(old["method"]) & set(new["method"])
    old, new = old[old["method"].isin(both)], new[new["method"].isin(both)]
    # like for like: the old images, and per method the qualities both runs coded
    keys = old[["dataset", "method", "quality"]].drop_duplicates().merge(
        new[["dataset", "method", "quality"]].drop_duplicates())
    same_images = new.merge(old[["dataset", "image_id"]].drop_duplicates())
    like = same_images.merge(keys)
    old_like = old.merge(keys).merge(same_images[["dataset", "image_id"]].drop_duplicates())
    out = bd_of(old).add_prefix("old_").join(bd_of(new).add_prefix("new_"), how="outer")
    out = out.join(bd_of(old_like).add_prefix("old_same_").join(bd_of(like).add_prefix("new_same_"), how="outer"),
                   how="outer")
    out = out.join(base_layer(old).add_prefix("old_"), how="left").join(base_layer(new).add_prefix("new_"), how="left")
    counts = pd.DataFrame({"old_images": old.groupby(["dataset", "method"])["image_id"].nunique(),
                           "new_images": new.groupby(["dataset", "method"])["image_id"].nunique(),
                           "same_images": like.groupby(["dataset", "method"])["image_id"].nunique()})
    return counts.join(out).reset_index()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", required=True)
    parser.add_argument("--new", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    table = compare(pd.read_parquet(args.old), pd.read_parquet(args.new))
    table.to_csv(args.out, index=False, float_format="%.6g")
    shown = table[["dataset", "method", "same_images", "old_same_bd_rate_pct", "new_same_bd_rate_pct",
                   "old_bd_rate_pct", "new_bd_rate_pct", "old_base_bpp", "new_base_bpp", "old_base_psnr",
                   "new_base_psnr"]]
    shown = shown[~shown["method"].isin(["hevc"])]
    print(markdown_table(shown, {c: 3 if "base" in c else 1 for c in shown.columns},
                         signed=[c for c in shown.columns if "bd_rate" in c]))
    missing = [m for m in table["method"] if isinstance(m, float) and math.isnan(m)]
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
