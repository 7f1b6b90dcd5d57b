"""Per-task overhead of the orchestration: plain call vs Ray vs Prefect vs Prefect on Ray.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/pipeline_overhead.py --tasks 40 --out reports/pipeline_overhead.json

The task does nothing (returns a small record), so what is timed is pure overhead:

* ``plain``: a Python function call;
* ``ray``: a Ray remote function on a local 2-CPU Ray (submit all, then get);
* ``prefect``: a Prefect task called inside a flow (one task run each, no parallelism);
* ``prefect_ray``: a Prefect task mapped on semlic's task runner (``flows.runner``, 2 workers),
  the way every stage runs its shards, sequential (submit, wait, next) and mapped (all at once);
* ``prefect_ray_public_ctx``: the same runner shipping Prefect's public ``serialize_context``
  (settings dropped after serializing them), the public-API alternative to its private fork;
* ``prefect_ray_stock``: the same on prefect-ray's own RayTaskRunner (same Ray session, same
  API URL given to the workers), for comparison.

Each variant is warmed up first (worker processes started, imports done); startup costs
(the stage's Prefect server and Ray, overlapped, as ``flows.prefect_api.stage_session`` does)
are reported separately.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import flows  # noqa: E402,F401  (sets Prefect/Ray environment defaults first)
from prefect import flow, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from flows.prefect_api import stage_session  # noqa: E402
from flows.runner import SemlicRayTaskRunner, ray_runner  # noqa: E402
from semlic.pipeline.executor import wait_all  # noqa: E402


def noop(i: int) -> dict:
    return {"i": i, "pid": os.getpid()}


noop_task = task(noop, name="noop", cache_policy=NO_CACHE, persist_result=False)


@flow(name="overhead-prefect")
def prefect_flow(n: int) -> float:
    noop_task(-1)
    start = time.perf_counter()
    for i in range(n):
        noop_task(i)
    return (time.perf_counter() - start) / n


@flow(name="overhead-prefect-ray", task_runner=ray_runner())
def prefect_ray_flow(n: int) -> dict:
    wait_all(noop_task.map(list(range(4))))  # warm both workers
    start = time.perf_counter()
    for i in range(n):
        noop_task.submit(i).result()
    sequential = (time.perf_counter() - start) / n
    start = time.perf_counter()
    wait_all(noop_task.map(list(range(n))))
    mapped = (time.perf_counter() - start) / n
    return {"sequential_s": sequential, "mapped_s": mapped}


class PublicContextRunner(SemlicRayTaskRunner):
    """semlic's runner shipping Prefect's public serialize_context, its settings dropped after."""

    def serialize_context(self, asset_ctx_kwargs: dict) -> dict:
        from prefect.context import serialize_context

        return {**serialize_context(asset_ctx_kwargs=asset_ctx_kwargs), "settings_context": {}}


def public_context_flow(n: int) -> dict:
    return prefect_ray_flow.with_options(name="overhead-prefect-ray-public-ctx",
                                         task_runner=PublicContextRunner(init_kwargs={"namespace": "semlic"}))(n)


def stock_flow(n: int) -> dict:
    """The same on prefect-ray's own RayTaskRunner (sharing the Ray session and the API URL)."""
    from prefect_ray import RayTaskRunner

    return prefect_ray_flow.with_options(name="overhead-prefect-ray-stock", task_runner=RayTaskRunner())(n)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    n = args.tasks
    report = {"tasks": n, "workers": args.workers, "load_average_1m_start": os.getloadavg()[0]}

    start = time.perf_counter()
    for i in range(n * 100):
        noop(i)
    report["plain_s"] = (time.perf_counter() - start) / (n * 100)

    import ray

    start = time.perf_counter()
    with stage_session({"workers": args.workers, "cluster": None}):
        report["startup_s"] = time.perf_counter() - start  # Prefect server + Ray, overlapped
        remote = ray.remote(noop)
        ray.get([remote.remote(i) for i in range(8)])
        start = time.perf_counter()
        for i in range(n):
            ray.get(remote.remote(i))
        report["ray_sequential_s"] = (time.perf_counter() - start) / n
        start = time.perf_counter()
        ray.get([remote.remote(i) for i in range(n)])
        report["ray_mapped_s"] = (time.perf_counter() - start) / n
        report["prefect_s"] = prefect_flow(n)
        report.update({f"prefect_ray_{k}": v for k, v in prefect_ray_flow(n).items()})
        report.update({f"prefect_ray_public_ctx_{k}": v for k, v in public_context_flow(n).items()})
        report.update({f"prefect_ray_stock_{k}": v for k, v in stock_flow(n).items()})
    report["load_average_1m_end"] = os.getloadavg()[0]

    lines = [f"{k:28s} {v * 1000:10.4f} ms per task" if k.endswith("_s") and k != "startup_s" else f"{k:28s} {v}"
             for k, v in report.items()]
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
