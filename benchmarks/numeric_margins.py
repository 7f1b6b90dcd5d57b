"""How far each figure of a `numeric` test moves across CPU kernels, thread counts and seeds.

A test marked `numeric` asserts a figure made by training or float inference through the
``bound`` fixture (tests/conftest.py). This script runs those tests once per setting, each in a
fresh pytest process with the setting in its environment (oneDNN reads DNNL_MAX_CPU_ISA and
ATen ATEN_CPU_CAPABILITY when the process starts), collects every recorded figure and writes:

- reports/numeric_margins.csv: one row per (setting, test, figure): value, operator, limit;
- reports/numeric_margins.md: per figure, its limit, the range measured over all settings, the
  smallest margin (distance to the limit over the limit's scale) and the settings that failed.

    .venv/bin/python benchmarks/numeric_margins.py [--settings default,avx2,...] [--seeds 0,1,2]

A setting that fails a test still contributes its figures (the fixture records before it
asserts). Run it after changing a numeric test or a threshold, and set the threshold outside
the measured range with a margin.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]

# name -> environment added to the pytest process
SETTINGS: dict[str, dict[str, str]] = {
    "default": {},
    "threads1": {"SEMLIC_TEST_THREADS": "1", "OMP_NUM_THREADS": "1"},
    "avx2": {"DNNL_MAX_CPU_ISA": "AVX2"},
    "avx512_core": {"DNNL_MAX_CPU_ISA": "AVX512_CORE"},
    "sse41": {"DNNL_MAX_CPU_ISA": "SSE41"},
    "aten_default": {"ATEN_CPU_CAPABILITY": "default"},
}


def run_setting(name: str, env_add: dict[str, str], seed: int, out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "2", **env_add, "SEMLIC_TEST_SEED": str(seed),
           "SEMLIC_MARGINS_OUT": str(out)}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "numeric", "-p", "no:cacheprovider",
                           "-o", "addopts=", "tests"], cwd=REPO, env=env, capture_output=True, text=True)
    summary = (proc.stdout.strip().splitlines() or [""])[-1]
    return {"setting": name, "seed": seed, "returncode": proc.returncode, "summary": summary,
            "seconds": round(time.perf_counter() - start, 1)}


def margin(value: float, op: str, limit: float) -> float:
    """Signed distance to the limit, positive when the check passes, relative to max(|limit|, 1e-3)."""
    scale = max(abs(limit), 1e-3)
    return ((limit - value) if op in ("<", "<=") else (value - limit)) / scale


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    rows = rows.assign(margin=[margin(v, o, lim) for v, o, lim in zip(rows.value, rows.op, rows.limit)])
    table = []
    for (test, name), group in rows.groupby(["test", "name"], sort=True):
        worst = group.loc[group.margin.idxmin()]
        import operator

        ops = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
        failed = group[[not ops[o](v, lim) for v, o, lim in zip(group.value, group.op, group.limit)]]
        spread = group.value.max() - group.value.min()
        distance = abs(worst.limit - worst.value)
        table.append({"test": test, "figure": name, "check": f"{worst.op} {worst.limit:g}",
                      "min": group.value.min(), "max": group.value.max(), "runs": len(group),
                      "spreads": (distance / spread) if spread > 0 else float("inf"),
                      "worst_margin": worst.margin, "worst_setting": f"{worst.setting}/seed{worst.seed}",
                      "failed": ", ".join(f"{s}/seed{d}" for s, d in zip(failed.setting, failed.seed)) or "-"})
    return pd.DataFrame(table)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated, from: " + ", ".join(SETTINGS))
    parser.add_argument("--seeds", default="0", help="seeds run under every setting")
    parser.add_argument("--extra-seeds", default="1,2", help="seeds run under the default setting only")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "numeric_margins")
    args = parser.parse_args(argv)
    plan = [(s, int(seed)) for s in args.settings.split(",") for seed in args.seeds.split(",")]
    plan += [("default", int(seed)) for seed in args.extra_seeds.split(",") if seed and ("default", int(seed)) not in plan]
    unknown = sorted({s for s, _ in plan} - set(SETTINGS))
    if unknown:
        parser.error(f"unknown settings {unknown}; known: {sorted(SETTINGS)}")

    records, runs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, seed) in enumerate(plan, 1):
            out = Path(tmp) / f"{name}-{seed}.jsonl"
            run = run_setting(name, SETTINGS[name], seed, out)
            runs.append(run)
            print(f"[{i}/{len(plan)}] {name} seed {seed}: {run['summary']} ({run['seconds']} s)", flush=True)
            if out.is_file():
                for line in out.read_text().splitlines():
                    records.append({"setting": name, "seed": seed, **json.loads(line)})
    if not records:
        print("no figure was recorded: are the numeric tests collected?", file=sys.stderr)
        return 1
    rows = pd.DataFrame(records)
    table = summarise(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows.to_csv(args.out.with_suffix(".csv"), index=False, float_format="%.6g")
    lines = [
        "# Numeric test thresholds against the spread measured across CPUs",
        "",
        "`.venv/bin/python benchmarks/numeric_margins.py " + " ".join(argv if argv is not None else sys.argv[1:]) + "`",
        "",
        "Every test marked `numeric` (a figure made by training or float inference) run once per setting, "
        "each a fresh pytest process: " + "; ".join(
            f"`{n}`: " + (" ".join(f"{k}={v}" for k, v in SETTINGS[n].items()) or "the machine's default kernels, 2 threads")
            for n in dict.fromkeys(s for s, _ in plan)) + ". Seeds: SEMLIC_TEST_SEED. "
        "Margin: distance of the worst value to the limit, over the limit (positive: passes); in spreads: that "
        "distance over the range of the values measured (inf: the same value in every run). "
        f"CPU: {_cpu()}; torch {_torch()}.",
        "",
        "| setting | seed | result | s |", "|---|---|---|---|",
        *[f"| {r['setting']} | {r['seed']} | {r['summary']} | {r['seconds']} |" for r in runs],
        "",
        "| test | figure | check | min | max | runs | worst margin | in spreads | worst in | failed in |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *[f"| `{t.test}` | {t.figure.replace('|', '&#124;')} | {t.check} | {t.min:.4g} | {t.max:.4g} | {t.runs} "
          f"| {t.worst_margin:+.1%} | {t.spreads:.1f} | {t.worst_setting} | {t.failed} |" for t in table.itertuples()],
        "",
        "Per-run values: numeric_margins.csv.",
    ]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if (table.failed == "-").all() else 1


def _cpu() -> str:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
        model = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
        isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16") if f" {f}" in flags]
        return f"{model.split(':', 1)[1].strip()} ({', '.join(isa)}), {os.cpu_count()} cores"
    except (OSError, StopIteration):
        return "unknown"


def _torch() -> str:
    import torch

    return torch.__version__


if __name__ == "__main__":
    raise SystemExit(main())
