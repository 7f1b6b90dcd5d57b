"""Decoding that holds on every machine, measured: reports/determinism.md (+ determinism_rows.csv).

For each set of models, every file is encoded in one process (default kernels, one thread) and
decoded in the five configurations of semlic.conformance.CONFIGURATIONS (1 and 2 threads, oneDNN's
SSE4.1 kernels, ATen's generic kernels, oneDNN off), each a fresh process:

* ``--models DIR``: the offline default's models (``make repro``: data/models), every method of
  params.yaml's code section at its qualities and options;
* ``--hyperprior DIR`` (repeatable, ``LABEL=DIR``): more hyperprior banks (e.g. one trained on CamVid).

The hyperprior's files are written twice, "before" (CompressAI's float h_s, no symbol check: the
files this project wrote until now) and "after" (the integer hyper-decoder with its symbol CRCs),
from the same y^: the two reconstructions are identical, so the rate cost of the integer model is
the ratio of the file sizes, and its decode time is measured beside the float one.

    .venv/bin/python benchmarks/determinism.py --models data/models --images ../shared/data/kodak \\
        --hyperprior camvid=RUN/hyperprior --out reports/determinism
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from semlic.conformance import CONFIGURATIONS  # noqa: E402


def run(args: list[str], env_add: dict[str, str]) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), **env_add}
    proc = subprocess.run([sys.executable, "-m", "semlic.conformance", *args], env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"semlic.conformance {' '.join(args[:1])} failed:\n{proc.stderr[-4000:]}")


def offline_plan(params_file: Path, models_dir: Path) -> tuple[list[str], dict, dict]:
    """(methods, qualities, options) of params.yaml's code section whose models are in ``models_dir``."""
    from semlic.methods import get_method, method_names
    from semlic.model_files import ModelStore

    store = ModelStore(dirs=[str(models_dir)])
    section = yaml.safe_load(params_file.read_text())["code"]["methods"]
    methods, qualities, options = [], {}, {}
    for name, entry in section.items():
        if entry is None or name not in method_names() or entry.get("method", name) != name:
            continue
        method = get_method(name)
        try:
            store.models(method.models + method.encoder_models)
        except Exception:  # noqa: BLE001  (a model the run did not train)
            continue
        methods.append(name)
        qualities[name] = entry.get("qualities") or list(method.default_qualities)
        options[name] = {k: v for k, v in entry.items() if k not in ("qualities", "method", "segmentation")}
    return methods, qualities, options


def measure(label: str, models: Path, images: list[str], work: Path, methods: list[str], qualities: dict,
            options: dict, parallel: int, others_limit: int | None = None) -> pd.DataFrame:
    """``others_limit``: the methods other than the hyperprior on the first N images only (their decoders
    compute no entropy parameters; they cost minutes per image over five configurations)."""
    frames = []
    groups = [("after", "hyperprior", {}, images), ("before", "hyperprior", {"hyper_decoder": "float"}, images),
              ("after", "others", {}, images[:others_limit])]
    for variant, group, extra, group_images in groups:
        chosen = [m for m in methods if (m == "hyperprior") == (group == "hyperprior")]
        if not chosen or not group_images:
            continue
        files = work / label / f"{variant}-{group}"
        opts = []
        for method in chosen:
            for key, value in {**options.get(method, {}), **(extra if method == "hyperprior" else {})}.items():
                opts += ["-o", f"{method}:{key}={value}"]
        started = time.perf_counter()
        run(["encode", *group_images, "--models", str(models), "--out", str(files), "--methods", ",".join(chosen),
             "--qualities", json.dumps({m: qualities[m] for m in chosen}), *opts], {"OMP_NUM_THREADS": "1"})
        print(f"{label}/{variant}/{group}: {len(group_images)} images encoded in {time.perf_counter() - started:.0f} s",
              flush=True)

        def decode(item):
            name, (env, no_mkldnn) = item
            out = work / label / f"{variant}-{group}-{name}.json"
            run(["decode", "--models", str(models), "--files", str(files), "--out", str(out)]
                + (["--no-mkldnn"] if no_mkldnn else []), env)
            return name, json.loads(out.read_text())

        with ThreadPoolExecutor(parallel) as pool:
            for name, records in pool.map(decode, CONFIGURATIONS.items()):
                frame = pd.DataFrame(records).assign(models=label, variant=variant, configuration=name)
                frames.append(frame)
                print(f"{label}/{variant}/{group}/{name}: {len(frame)} files", flush=True)
    return pd.concat(frames, ignore_index=True)


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    rows = rows.assign(desync=(rows["error"].isna() & (rows["max_abs"] > rows["tolerance"])),
                       raised=rows["error"].notna())
    return (rows.groupby(["models", "variant", "method", "configuration"], sort=True)
            .agg(files=("file", "size"), desynchronised=("desync", "sum"), raised=("raised", "sum"),
                 parameters_differ=("parameters_identical", lambda s: int((~s.astype(bool)).sum())),
                 max_abs=("max_abs", "max"), mean_abs=("mean_abs", "mean"),
                 min_psnr_vs_encoder=("psnr_vs_encoder", "min"), tolerance=("tolerance", "first"))
            .reset_index())


def rate_and_time(rows: pd.DataFrame) -> pd.DataFrame:
    """Per models and quality: integer ("after") against float ("before") hyperprior files: bytes and decode time."""
    hp = rows[(rows["method"] == "hyperprior") & (rows["configuration"] == "threads1")]
    out = []
    for (models, quality), group in hp.groupby(["models", "quality"]):
        after, before = group[group.variant == "after"], group[group.variant == "before"]
        if after.empty or before.empty:
            continue
        merged = after.merge(before, on="image", suffixes=("_int", "_float"))
        bpp_int = (8 * merged["bytes_int"] / merged["pixels_int"]).mean()
        bpp_float = (8 * merged["bytes_float"] / merged["pixels_float"]).mean()
        out.append({"models": models, "quality": int(quality), "images": len(merged), "bpp_float": bpp_float,
                    "bpp_integer": bpp_int, "rate_change_pct": 100 * (bpp_int / bpp_float - 1),
                    "check_bytes": 8, "dec_s_float": merged["dec_s_float"].mean(),
                    "dec_s_integer": merged["dec_s_int"].mean()})
    return pd.DataFrame(out)


def markdown(frame: pd.DataFrame, digits: dict | None = None) -> str:
    digits = digits or {}
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in frame.itertuples(index=False):
        cells = []
        for col, value in zip(cols, row):
            if isinstance(value, float):
                cells.append("inf" if np.isinf(value) else f"{value:.{digits.get(col, 3)}f}")
            else:
                cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", help="the offline default's models (data/models after make repro)")
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--hyperprior", action="append", default=[], metavar="LABEL=DIR")
    parser.add_argument("--images", default=str(REPO.parent / "shared" / "data" / "kodak"))
    parser.add_argument("--limit", type=int, help="the first N images only")
    parser.add_argument("--others-limit", type=int, help="the methods other than the hyperprior on the first N images")
    parser.add_argument("--work", default="runs/determinism")
    parser.add_argument("--parallel", type=int, default=2, help="decoding processes at once")
    parser.add_argument("--out", default=str(REPO / "reports" / "determinism"))
    args = parser.parse_args(argv)
    images = sorted(str(p) for p in Path(args.images).glob("*.png"))[:args.limit]
    if not images:
        raise SystemExit(f"no PNG images in {args.images}")
    work = Path(args.work).absolute()
    frames = []
    if args.models:
        methods, qualities, options = offline_plan(Path(args.params), Path(args.models))
        frames.append(measure("offline_default", Path(args.models), images, work, methods, qualities, options,
                              args.parallel, args.others_limit))
    for item in args.hyperprior:
        label, _, folder = item.partition("=")
        from semlic.model_files import load_model

        bank = load_model(next(Path(folder).rglob("hyperprior.safetensors")), expect="hyperprior")
        frames.append(measure(label, Path(folder), images, work, ["hyperprior"],
                              {"hyperprior": list(bank.config.qualities)}, {}, args.parallel))
    rows = pd.concat(frames, ignore_index=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows.to_csv(out.with_name(out.name + "_rows.csv"), index=False, float_format="%.6g")
    table = summarise(rows)
    cost = rate_and_time(rows)
    command = "`.venv/bin/python benchmarks/determinism.py " + " ".join(argv if argv is not None else sys.argv[1:]) + "`"
    desync = table[table.variant == "before"]
    per_method = rows.groupby("method")["image"].nunique().to_dict()
    lines = [
        "# Decoding that holds on every machine", "", command, "",
        f"{len(images)} images ({Path(args.images).name}; images per method: "
        + ", ".join(f"{m} {n}" for m, n in sorted(per_method.items())) + f"); every file encoded in one process (default kernels, one "
        "thread), decoded in fresh processes under: " + ", ".join(
            f"`{n}` ({' '.join(f'{k}={v}' for k, v in env.items())}{', oneDNN off' if off else ''})"
            for n, (env, off) in CONFIGURATIONS.items()) + ". `before`: the hyperprior's files as written until now "
        "(CompressAI's float h_s, no symbol check); `after`: the integer hyper-decoder with its symbol CRCs. "
        "Desynchronised: decoded with no error to an image farther from the encoder's reconstruction than the "
        "method's declared tolerance (grey levels). Raised: decoding refused with a typed error. Parameters "
        "differ: the decoder's entropy parameters (scales, table indexes) not bit-identical to the encoder's. "
        "Per-file rows: determinism_rows.csv.", "",
        "## Every method and configuration", "",
        markdown(table, {"mean_abs": 4, "min_psnr_vs_encoder": 2}), "",
        "## The integer hyper-decoder against the float one (same y^, same reconstruction)", "",
        "Rate: mean bpp of the same images at the same quality, every byte of the file (the 8 bytes of symbol "
        "checks included). Decode: mean seconds per file, one thread (`threads1`).", "",
        markdown(cost, {"bpp_float": 4, "bpp_integer": 4, "rate_change_pct": 3, "dec_s_float": 3,
                        "dec_s_integer": 3}) if len(cost) else "(no hyperprior)", "",
        f"Before: {int(desync.desynchronised.sum())} desynchronised and {int(desync.parameters_differ.sum())} files "
        f"with other entropy parameters, of {int(desync.files.sum())} decodes. After: "
        f"{int(table[table.variant == 'after'].desynchronised.sum())} desynchronised, "
        f"{int(table[table.variant == 'after'].raised.sum())} raised, "
        f"{int(table[table.variant == 'after'].parameters_differ.sum())} with other entropy parameters, of "
        f"{int(table[table.variant == 'after'].files.sum())} decodes.", "",
    ]
    out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
