"""Wall time of every stage on the builtin default, and the code stage on 1 and 2 workers.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/pipeline_stages.py --out reports/pipeline_stages.json

In a scratch copy of the project (params.yaml, dvc.yaml, flows/, semlic/, fresh
git + DVC), runs the stages of dvc.yaml in its order (or ``--stages``: the methods coded and
the models trained are what params.yaml says) with ``dvc repro --single-item <stage>``,
timing each one as DVC runs it (process start to exit: DVC's hashing, the Prefect server
and Ray start-up included) next to the flow's own time (``<stage>: done in``); then a
second ``dvc repro`` (must find everything up to date); then the code stage again with
``base.workers`` 1 and 2 (local Ray), for its speed-up.
The machine's load average is recorded: on a shared 2-core machine it moves the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CODE_STAGE = "code"


def pipeline_stages(root: Path) -> list[str]:
    """The stages of ``root/dvc.yaml``, in the order they are written (their dependency order)."""
    import yaml

    return list((yaml.safe_load((root / "dvc.yaml").read_text()) or {}).get("stages") or {})


def scratch_project(root: Path) -> Path:
    """A copy of the code (a snapshot: edits made meanwhile in the checkout change nothing)."""
    for name in ("flows", "semlic"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("params.yaml", "dvc.yaml", ".dvcignore"):
        shutil.copy(REPO / name, root / name)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([str(Path(sys.executable).parent / "dvc"), "init", "-q"], cwd=root, check=True)
    subprocess.run([str(Path(sys.executable).parent / "dvc"), "config", "core.analytics", "false"], cwd=root, check=True)
    return root


def environment(root: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "SEMLIC_RAY_ADDRESS", "RAY_ADDRESS")}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}", PYTHONPATH=str(root),
               PREFECT_HOME=str(root / ".prefect"), OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"))
    return env


def run_stage(stage: str, root: Path, env: dict, *args: str) -> dict:
    record = root / f"record-{stage}.json"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "flows", stage, "--record", str(record), *args], cwd=root, env=env,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    data = json.loads(record.read_text())
    result = data.get("result") or {}
    tasks = result.get("shards") if isinstance(result, dict) and "shards" in result else [result]
    task_seconds = [t.get("seconds") for t in tasks if isinstance(t, dict) and t.get("seconds") is not None]
    return {"process_s": wall, "flow_s": data["seconds"], "tasks": len(task_seconds),
            "task_s_sum": sum(task_seconds), "task_s_max": max(task_seconds, default=0.0)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="JSON report")
    parser.add_argument("--keep", action="store_true", help="keep the scratch project")
    parser.add_argument("--stages", nargs="+", help="stages to time, in this order (default: every stage of dvc.yaml)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="worker counts of the second code-stage pass (default 1 2)")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="semlic-bench-"))
    report: dict = {"scratch": str(root), "cpus": os.cpu_count(), "load_average_1m_start": os.getloadavg()[0]}
    try:
        scratch_project(root)
        env = environment(root)
        dvc = str(Path(sys.executable).parent / "dvc")
        report["stages"] = {}
        stages = args.stages or pipeline_stages(root)
        unknown = sorted(set(stages) - set(pipeline_stages(root)))
        if unknown:
            raise SystemExit(f"not stages of dvc.yaml: {', '.join(unknown)}")
        for stage in stages:
            start = time.perf_counter()
            out = subprocess.run([dvc, "repro", "--single-item", stage], cwd=root, env=env, capture_output=True,
                                 text=True)
            wall = time.perf_counter() - start
            if out.returncode != 0:
                raise SystemExit(f"dvc repro {stage} failed:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}")
            flow = re.search(rf"^{stage}: done in ([\d.]+) s$", out.stderr + out.stdout, re.M)
            report["stages"][stage] = {"dvc_stage_s": wall, "flow_s": float(flow.group(1)) if flow else None}
            print(f"{stage:14s} {wall:7.1f} s", file=sys.stderr)
        report["dvc_repro_total_s"] = sum(v["dvc_stage_s"] for v in report["stages"].values())
        start = time.perf_counter()
        again = subprocess.run([dvc, "repro"], cwd=root, env=env, capture_output=True, text=True, check=True)
        report["dvc_repro_again_s"] = time.perf_counter() - start
        report["dvc_repro_again_up_to_date"] = "Running stage" not in again.stdout
        if CODE_STAGE in stages and args.workers:
            report["code_workers"] = {str(w): run_stage(CODE_STAGE, root, env, "-S", f"base.workers={w}")
                                      for w in args.workers}
            first, last = str(args.workers[0]), str(args.workers[-1])
            one, many = report["code_workers"][first], report["code_workers"][last]
            report[f"code_speedup_{last}_vs_{first}"] = {"process": one["process_s"] / many["process_s"],
                                                         "flow": one["flow_s"] / many["flow_s"]}
        report["load_average_1m_end"] = os.getloadavg()[0]
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
