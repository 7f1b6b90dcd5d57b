"""Same study before and after a change of the code: rows and layer payloads compared.

    make repro && .venv/bin/python benchmarks/method_interface_equivalence.py
    # another "before": snapshot the rows and layers of a run at an earlier revision, then compare
    .venv/bin/python benchmarks/method_interface_equivalence.py --snapshot DIR --rd OLD/data/results/rd.parquet \
        --files OLD/data/coded/files
    .venv/bin/python benchmarks/method_interface_equivalence.py --before DIR --before-label "revision X" --out FILE

The "before" side is what `dvc repro` of the offline default produced at revision 397fdf4
(reports/method_interface/rd_before.parquet: aggregate's rd rows; layers_before.csv: every
layer of every .sem file of data/coded, with the SHA-256 of its payload). The "after" side is
the current data/results/rd.parquet and data/coded/files. For every (dataset, method, image,
quality): PSNR-RGB, per-channel PSNR and MS-SSIM must be equal, every layer's payload must
have the same bytes, and the file sizes may differ only by the header (format version 2
adds one byte to a DSSLIC or EDMS header). Writes reports/method_interface/equivalence.md.
"""

from __future__ import annotations

import argparse
import hashlib
import shlex
import shutil
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from semlic import format as fmt  # noqa: E402
from semlic.methods import get_method  # noqa: E402

KEY = ["dataset", "method", "image_id", "quality"]
METRICS = ["psnr_rgb", "psnr_channel_mean", "ms_ssim", "lpips"]


def layers_of(files_root: Path) -> pd.DataFrame:
    records = []
    for path in sorted(files_root.rglob("*.sem")):
        sem = fmt.unpack(path.read_bytes())
        method = get_method(sem.method)
        image, quality = path.stem.rsplit("_", 1)
        for layer in sem.layers:
            records.append({"dataset": path.parts[-3], "method": sem.method, "image_id": image, "quality": quality,
                            "role": method.role_name(layer.role), "codec": layer.codec_name,
                            "payload_bytes": len(layer.payload),
                            "payload_sha256": hashlib.sha256(layer.payload).hexdigest()[:16],
                            "header_bytes": sem.header_bytes})
    return pd.DataFrame(records)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default="reports/method_interface")
    parser.add_argument("--rd", default="data/results/rd.parquet")
    parser.add_argument("--files", default="data/coded/files")
    parser.add_argument("--out", default="reports/method_interface/equivalence.md")
    parser.add_argument("--before-label", default="`dvc repro` at revision 397fdf4 (format version 1)",
                        help="what the before side is, for the report's heading")
    parser.add_argument("--title", default="The offline default before and after the method interface")
    parser.add_argument("--snapshot", metavar="DIR",
                        help="write --rd's rows and --files' layers to DIR as a before side (rd_before.parquet, "
                             "layers_before.csv), then stop")
    args = parser.parse_args(argv)
    if args.snapshot:
        Path(args.snapshot).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args.rd, Path(args.snapshot) / "rd_before.parquet")
        layers_of(Path(args.files)).to_csv(Path(args.snapshot) / "layers_before.csv", index=False)
        return 0
    before = pd.read_parquet(Path(args.before) / "rd_before.parquet")
    after = pd.read_parquet(args.rd)
    metrics = [m for m in METRICS if m in before.columns and m in after.columns]
    joined = before.merge(after, on=KEY, how="outer", suffixes=("_before", "_after"), indicator=True)
    only = joined[joined["_merge"] != "both"]
    both = joined[joined["_merge"] == "both"]
    metric_diff = {m: float((both[f"{m}_before"] - both[f"{m}_after"]).abs().max()) for m in metrics}
    metric_equal = {m: bool(((both[f"{m}_before"] == both[f"{m}_after"])
                             | (both[f"{m}_before"].isna() & both[f"{m}_after"].isna())).all()) for m in metrics}
    size_diff = (both["bytes_total_after"] - both["bytes_total_before"]).groupby(both["method"]).agg(["min", "max"])
    layers_before = pd.read_csv(Path(args.before) / "layers_before.csv", dtype={"quality": str})
    layers_after = layers_of(Path(args.files))
    lkey = ["dataset", "method", "image_id", "quality", "role"]
    lj = layers_before.merge(layers_after, on=lkey, how="outer", suffixes=("_before", "_after"), indicator=True)
    payload_equal = bool((lj["_merge"] == "both").all() and (lj["payload_sha256_before"] == lj["payload_sha256_after"]).all())
    header = layers_after.groupby("method")["header_bytes"].agg(["min", "max"])
    ok = only.empty and all(metric_equal.values()) and payload_equal
    command = "make repro && .venv/bin/python benchmarks/method_interface_equivalence.py " + shlex.join(argv or sys.argv[1:])
    lines = [f"# {args.title}", "", f"`{command.strip()}`", "",
             f"Before: {args.before_label}. After: the current tree. Rows compared: "
             f"{len(both)} (only before or only after: {len(only)}); layers compared: {int((lj['_merge'] == 'both').sum())}"
             f" (unmatched: {int((lj['_merge'] != 'both').sum())}).", "",
             "| figure | equal for every row | largest difference |", "|---|---|---|"]
    lines += [f"| {m} | {'yes' if metric_equal[m] else 'NO'} | {metric_diff[m]:.3g} |" for m in metrics]
    lines += ["", f"Every layer payload has the same bytes: {'yes' if payload_equal else 'NO'}.", "",
              "File size after minus before (bytes), per method: the container's header change only.", "",
              "| method | min | max | header bytes after |", "|---|---|---|---|"]
    for method, row in size_diff.iterrows():
        head = header.loc[method, "max"] if method in header.index else "-"
        lines.append(f"| {method} | {int(row['min'])} | {int(row['max'])} | {head} |")
    lines += ["", "Verdict: " + ("the same study, bit for bit in every payload and metric." if ok
                                 else "DIFFERENT: see the tables above."), ""]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
