"""Beyond the papers: DSSLIC-RD's changes one by one and together, on CamVid and Kodak, against HEVC and DSSLIC.

    .venv/bin/python benchmarks/beyond.py --root WORK --out reports/beyond

``WORK`` is a folder holding the reference run's outputs (``make repro-camvid``: ``data/prepared``
with camvid and kodak, ``data/segments``, ``data/models/dsslic`` and ``data/models/segnet``); the
params are params.yaml with the reference run's profile (``--profile camvid_cpu``), written to
``WORK/params.yaml``. Three steps, each a pipeline stage run as ``dvc repro`` runs it
(``python -m flows <stage>`` in WORK):

1. ``train_dsslic_rd`` as the profile says: the rate-aware base layer, every run starting from the
   reference DSSLIC model (``init: dsslic``), all runs at once within the same minutes each: the map
   sent losslessly at three lambdas, the lossy and the derived map at the middle one;
2. ``code``: on the same images as the reference rows (``code.sample``, ``code.also: [kodak]``),
   the variants of :data:`VARIANTS` (DSSLIC with the 10-bit residual; DSSLIC-RD per map, with the
   8-bit and the 10-bit residual);
3. the ablation: with the reference run's rows (``--reference``: HEVC 4:4:4 and DSSLIC with its
   4:4:4 residual, same images), BD-rate and BD-PSNR of every variant against HEVC and against
   DSSLIC, on each level's curve (one lambda, the residual QPs) and on the operational curve of
   all levels (the points no other point of the variant beats in both rate and PSNR); the layer
   shares at each point, encode/decode seconds. Writes ``ablation.csv``, ``curves.csv``,
   ``layers.csv``, ``training.csv`` and one RD plot per data set under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:   # flows.profile, run as a script from anywhere
    sys.path.insert(0, str(REPO))
ANCHOR, REFERENCE = "hevc", "dsslic_444"
QPS = [42, 35, 28, 21]


def variants(levels: int) -> dict[str, dict]:
    """The code stage's methods: each change alone and together."""
    grid = [[level, qp] for level in range(levels) for qp in [None, *QPS]]
    one = [[0, qp] for qp in [None, *QPS]]
    common = {"chroma": "444", "lossless": "best"}
    return {
        "dsslic_10bit": {"method": "dsslic", "qualities": QPS, "residual_depth": 10, **common},
        "dsslic_rd": {"qualities": grid, **common},
        "dsslic_rd_10bit": {"method": "dsslic_rd", "qualities": grid, "residual_depth": 10, **common},
        "dsslic_rd_lossy": {"qualities": one, **common},
        "dsslic_rd_lossy_10bit": {"method": "dsslic_rd_lossy", "qualities": one, "residual_depth": 10, **common},
        "dsslic_rd_derived": {"qualities": one, **common},
        "dsslic_rd_derived_10bit": {"method": "dsslic_rd_derived", "qualities": one, "residual_depth": 10, **common},
    }


#: what each variant changes against DSSLIC (4:4:4 residual): compact layer, residual, map
CHANGES = {
    "dsslic_444": ("lossless 8-bit", "8-bit scaled", "lossless"),
    "dsslic_10bit": ("lossless 8-bit", "10-bit offset", "lossless"),
    "dsslic_rd": ("entropy-coded", "8-bit scaled", "lossless"),
    "dsslic_rd_10bit": ("entropy-coded", "10-bit offset", "lossless"),
    "dsslic_rd_lossy": ("entropy-coded", "8-bit scaled", "subsampled"),
    "dsslic_rd_lossy_10bit": ("entropy-coded", "10-bit offset", "subsampled"),
    "dsslic_rd_derived": ("entropy-coded", "8-bit scaled", "derived"),
    "dsslic_rd_derived_10bit": ("entropy-coded", "10-bit offset", "derived"),
}


def stage(root: Path, params: Path, name: str, sets: list[str]) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "SEMLIC_RAY_ADDRESS", "RAY_ADDRESS")}
    env.update(PYTHONPATH=str(REPO), PREFECT_HOME=str(root / ".prefect"),
               OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}")
    start = time.perf_counter()
    args = [sys.executable, "-m", "flows", name, "--params", str(params)]
    for item in sets:
        args += ["-S", item]
    with (root / f"{name}.log").open("w") as log:
        rc = subprocess.run(args, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise SystemExit(f"{name} failed (rc {rc}): {(root / f'{name}.log').read_text()[-3000:]}")
    return time.perf_counter() - start


def level_of(method: str, quality: float) -> int | None:
    return int(quality // 100) if method.startswith("dsslic_rd") else None


def curves_of(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean points per (dataset, method, quality), with per-level and operational curves as methods of their own."""
    from semlic.reporting import rd_curves
    from semlic.bd import operational   # the points no other point beats in both rate and PSNR

    curves = rd_curves(rows)
    parts = [curves.assign(curve="all")]
    for (dataset, method), curve in curves.groupby(["dataset", "method"]):
        levels = sorted({level_of(method, q) for q in curve["quality"]} - {None})
        for level in levels:
            part = curve[(curve["quality"] // 100) == level]
            parts.append(part.assign(method=f"{method}@l{level}", curve=f"level {level}"))
        if levels:
            parts.append(operational(curve).assign(method=f"{method}@best", curve="operational"))
    return pd.concat(parts, ignore_index=True)


def ablation(curves: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    from semlic.reporting import bd_table

    wanted = curves[~curves["method"].isin([m for m in curves["method"].unique() if m.startswith("dsslic_rd")
                                            and "@" not in m])]
    vs_hevc = bd_table(wanted, anchor=ANCHOR)
    vs_ref = bd_table(wanted, anchor=REFERENCE)
    table = vs_hevc.merge(vs_ref, on=["dataset", "method"], suffixes=("_vs_hevc", "_vs_dsslic"), how="left")
    # each 10-bit variant against its 8-bit twin: the residual's change alone, over the PSNRs both reach
    twins = []
    for name in wanted["method"].unique():
        base, _, curve = name.partition("@")
        if base.endswith("_10bit"):
            twin = base.removesuffix("_10bit") + (f"@{curve}" if curve else "")
            twin = REFERENCE if twin == "dsslic" else twin
            pair = bd_table(wanted[wanted["method"].isin([name, twin])], anchor=twin)
            twins += [{"dataset": r["dataset"], "method": r["method"], "bd_rate_vs_8bit_pct": r["bd_rate_pct"],
                       "bd_psnr_vs_8bit_db": r["bd_psnr_db"]} for _, r in pair.iterrows()]
    if twins:
        table = table.merge(pd.DataFrame(twins), on=["dataset", "method"], how="left")
    times = rows.groupby(["dataset", "method"])[["enc_s", "dec_s"]].mean()
    records = []
    for _, r in table.iterrows():
        base = r["method"].split("@")[0]
        if base == ANCHOR:
            continue
        compact, residual, map_ = CHANGES.get(base, ("", "", ""))
        enc, dec = (times.loc[(r["dataset"], base)] if (r["dataset"], base) in times.index else (math.nan, math.nan))
        records.append({"dataset": r["dataset"], "variant": r["method"], "compact": compact, "residual": residual,
                        "map": map_, "bd_rate_vs_hevc_pct": r["bd_rate_pct_vs_hevc"],
                        "bd_psnr_vs_hevc_db": r["bd_psnr_db_vs_hevc"],
                        "bd_rate_vs_dsslic_pct": r.get("bd_rate_pct_vs_dsslic", math.nan),
                        "bd_psnr_vs_dsslic_db": r.get("bd_psnr_db_vs_dsslic", math.nan),
                        "bd_rate_vs_8bit_pct": r.get("bd_rate_vs_8bit_pct", math.nan),
                        "bd_psnr_vs_8bit_db": r.get("bd_psnr_vs_8bit_db", math.nan),
                        "points": r["points_vs_hevc"], "enc_s": enc, "dec_s": dec,
                        "note": "; ".join(n for n in (r["note_vs_hevc"], r.get("note_vs_dsslic", ""))
                                          if isinstance(n, str) and n)})
    return pd.DataFrame(records)


def layer_shares(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean bpp of each layer at each (dataset, method, quality)."""
    records = []
    for (dataset, method, quality), group in rows.groupby(["dataset", "method", "quality"]):
        pixels = (group["height"] * group["width"]).to_numpy()
        shares = {}
        for bits, px in zip(group["layer_bits"], pixels):
            for layer, value in dict(bits).items():
                shares[layer] = shares.get(layer, 0.0) + value / px / len(group)
        records.append({"dataset": dataset, "method": method, "quality": quality, "bpp": group["bpp"].mean(),
                        "psnr_rgb": group["psnr_rgb"].mean(), **{f"{k}_bpp": v for k, v in sorted(shares.items())}})
    return pd.DataFrame(records)


def plot(curves: pd.DataFrame, dataset: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    data = curves[curves["dataset"] == dataset]
    for method in sorted(data["method"].unique()):
        if method.startswith("dsslic_rd") and "@best" not in method:
            continue
        if method in ("dsslic",):
            continue
        curve = data[data["method"] == method].sort_values("bpp")
        style = {"hevc": dict(color="black", lw=2), "dsslic_444": dict(color="tab:blue", lw=2),
                 "dsslic_10bit": dict(color="tab:cyan", ls="--")}.get(method, {})
        if method.endswith("_10bit@best"):
            style = dict(ls="--")
        ax.plot(curve["bpp"], curve["psnr_rgb"], "o-", ms=3, label=method.replace("@best", ""), **style)
    ax.set(xlabel="bpp (every byte of the file)", ylabel="PSNR-RGB (dB)", title=f"{dataset}: DSSLIC-RD ablation",
           xlim=(0, None))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def merged(params: dict, profile: dict) -> dict:
    """params.yaml with a profile's keys (flows.profile's rule: mappings merge key by key, the rest replaces)."""
    out = dict(params)
    for key, value in profile.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="data folder with the reference run's outputs")
    parser.add_argument("--profile", default="camvid_cpu", help="the reference run's profile (profiles/NAME.yaml)")
    parser.add_argument("--reference", default=str(REPO / "reports" / "camvid_cpu" / "rows.parquet"))
    parser.add_argument("--set", "-S", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="more overrides of train_dsslic_rd (e.g. train_dsslic_rd.minutes=6)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["train", "code"], help="steps already done")
    parser.add_argument("--from-parts", action="store_true",
                        help="read the rows from the code stage's finished shard parts (a stage stopped before it "
                             "ended: only what it finished is measured)")
    parser.add_argument("--out", default=str(REPO / "reports" / "beyond"))
    args = parser.parse_args(argv)
    import yaml

    from flows.profile import load_profile
    from semlic import results

    root = Path(args.root).absolute()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    params = merged(yaml.safe_load((REPO / "params.yaml").read_text()), load_profile(args.profile))
    params_file = root / "params.yaml"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    record = {"git": results.git_revision(REPO), "profile": args.profile, "train_dsslic_rd": params["train_dsslic_rd"],
              "overrides": args.set}
    if "train" not in args.skip:
        record["train_s"] = stage(root, params_file, "train_dsslic_rd", args.set)
    levels = len(params["train_dsslic_rd"]["maps"]["lossless"])
    reference = pd.read_parquet(args.reference)
    sample = int(reference[reference["dataset"] == "camvid"]["image_id"].nunique())
    if "code" not in args.skip:
        record["code_s"] = stage(root, params_file, "code", [
            f"code.methods={json.dumps(variants(levels))}", "code.baselines=null", "code.lpips=false",
            f"code.sample={sample}", "code.also=[kodak]", "code.shard_size=6"])
    from semlic.reporting import load_rows

    if args.from_parts:   # the parts keep the measured times in the rows
        rows = pd.concat([results.read_table(p).to_pandas()
                          for p in sorted((root / "data" / ".staging" / "data__coded" / "parts").glob("*.parquet"))],
                         ignore_index=True)
        record["from_parts"] = True
    else:
        rows = load_rows(root / "data" / "coded" / "rows", root / "data" / "coded" / "timings.parquet")
    # the images every variant has (a stage stopped midway may have coded some images for some variants only)
    per_method = rows.groupby(["dataset", "method"])["image_id"].agg(set)
    ids = per_method.groupby(level="dataset").agg(lambda sets: set.intersection(*sets))
    ids = ids[ids.map(len) > 0]
    rows = rows[rows.apply(lambda r: r["image_id"] in ids.get(r["dataset"], set()), axis=1)]
    # DSSLIC's no-residual file does not depend on the residual's chroma: it is dsslic_444's first point
    base = reference[(reference["method"] == "dsslic") & (reference["quality"] == -1.0)].assign(method=REFERENCE)
    reference = pd.concat([reference[reference["method"].isin([ANCHOR, REFERENCE])], base], ignore_index=True)
    ref = reference[reference.apply(lambda r: r["image_id"] in ids.get(r["dataset"], set()), axis=1)]
    missing = {d: len(ids[d] - set(ref[ref["dataset"] == d]["image_id"])) for d in ids.index}
    if any(missing.values()):
        raise SystemExit(f"the reference rows lack images coded here: {missing}")
    rows = pd.concat([rows, ref[rows.columns]], ignore_index=True)
    # DSSLIC's 10-bit variant: its no-residual file is DSSLIC's (the same base, no residual layer)
    if "dsslic_10bit" in set(rows["method"]):
        base = rows[(rows["method"] == REFERENCE) & (rows["quality"] == -1.0)].assign(method="dsslic_10bit")
        rows = pd.concat([rows, base], ignore_index=True)
    curves = curves_of(rows)
    table = ablation(curves, rows)
    table.to_csv(out / "ablation.csv", index=False, float_format="%.4g")
    curves.to_csv(out / "curves.csv", index=False, float_format="%.5g")
    layer_shares(rows).to_csv(out / "layers.csv", index=False, float_format="%.5g")
    training = []
    for log in sorted((root / "data" / "models" / "dsslic_rd").glob("*/train_log.parquet")):
        frame = pd.read_parquet(log)
        tail = frame.tail(20)
        training.append({"run": log.parent.name, "iterations": int(frame["iteration"].max()),
                         "loss_first20": frame.head(20)["loss"].mean(), "loss_last20": tail["loss"].mean(),
                         "bpp_compact_last20": tail["bpp"].mean(), "psnr_last20": tail["psnr"].mean()})
    pd.DataFrame(training).to_csv(out / "training.csv", index=False, float_format="%.4g")
    for dataset in sorted(rows["dataset"].unique()):
        plot(curves, dataset, out / f"rd_{dataset}.png")
    record["images"] = {d: len(v) for d, v in ids.items()}
    (out / "run.json").write_text(json.dumps(record, indent=2) + "\n")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table[["dataset", "variant", "bd_rate_vs_hevc_pct", "bd_psnr_vs_hevc_db", "bd_rate_vs_dsslic_pct",
                     "bd_psnr_vs_dsslic_db", "bd_rate_vs_8bit_pct", "points", "enc_s", "dec_s"]].to_string(index=False))
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
