"""``python -m flows <stage>``: a stage run as a Prefect flow on Ray, under one Prefect API and one Ray.

A stage is a library function (:mod:`semlic.pipeline.stage`); :func:`stage_flow` binds it to
Prefect and Ray: a flow named after the stage, on the task runner of :func:`flows.runner.ray_runner`,
that calls the stage with a :class:`flows.executor.PrefectRayExecutor`. A stage's flow is run
three ways:

* ``python -m flows <stage>`` (what ``dvc repro`` does): :func:`run_stage` loads the stage's
  params sections (:mod:`semlic.pipeline.params`), opens ONE Prefect API and one Ray connection
  for the whole run (:func:`flows.prefect_api.stage_session`), and calls the flow;
* ``prefect deployment run <stage>/default``: a process worker calls the flow (``flows.pipeline.<stage>``)
  with PREFECT_API_URL already set; the runner resolves the cluster from the environment or
  ``params.yaml`` (:func:`flows.ray_cluster.cluster_address`);
* tests and benchmarks call ``main([stage, ...])`` with ``--params`` / ``--set`` overrides.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from flows.prefect_api import stage_session
from flows.runner import ray_runner
from semlic.pipeline.params import PARAMS_FILE, load_params
from semlic.pipeline.stage import get_stage
from semlic.pipeline.staging import storage_error, storage_message

_FLOWS: dict[str, Any] = {}
RUNNERS = ("prefect-ray", "local")


def stage_flow(name: str):
    """The Prefect flow of stage ``name`` (made once): ``flow(params=None)`` runs the stage with a
    :class:`flows.executor.PrefectRayExecutor`; without ``params`` it reads the stage's sections of
    params.yaml in the working directory (a deployment's flow run)."""
    if name not in _FLOWS:
        from prefect import flow

        from flows.executor import PrefectRayExecutor

        spec = get_stage(name)

        def run(params: dict | None = None) -> dict:
            params = params or load_params(PARAMS_FILE, spec.sections)
            return spec.run(params, PrefectRayExecutor(params["base"]))

        run.__name__ = run.__qualname__ = name
        run.__module__ = "flows.pipeline"
        run.__doc__ = spec.run.__doc__
        _FLOWS[name] = flow(name=name, task_runner=ray_runner(), description=spec.description)(run)
    return _FLOWS[name]


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m flows",
                                     description="Run a pipeline stage as a Prefect flow on Ray.")
    parser.add_argument("stage", help="the stage (a dvc.yaml stage name; python -m semlic.pipeline --list)")
    parser.add_argument("--params", default=PARAMS_FILE, help="params file (default: params.yaml)")
    parser.add_argument("--set", "-S", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a parameter (YAML value), e.g. -S code.shard_size=4")
    parser.add_argument("--cluster", default=None,
                        help="Ray address: 'auto', host:port, ray://host:10001 (default: params/env)")
    parser.add_argument("--record", default=None, metavar="JSON",
                        help="also write what the flow returned (per-task seconds, nodes, ...) to this file")
    parser.add_argument("--runner", choices=RUNNERS, default=None,
                        help="prefect-ray (the default) or local: the same stage with local processes, without "
                             "Prefect or Ray (semlic.pipeline.local); default: env SEMLIC_RUNNER, else prefect-ray")
    return parser


def api_error(exc: BaseException | None) -> BaseException | None:
    """The connection error behind ``exc`` when the Prefect API stopped answering (httpx's transport errors)."""
    import httpx

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, httpx.TransportError):
            return exc
        exc = getattr(exc, "cause", None) or exc.__cause__ or exc.__context__
    return None


def api_message(stage: str, error: BaseException) -> str:
    import os

    url = os.environ.get("PREFECT_API_URL") or "the stage's own server"
    return (f"{stage}: lost its Prefect API ({url}: {type(error).__name__}: {error}). Its outputs are swapped in "
            "whole, so each holds either the previous result or the complete new one (when the API went after the "
            "work was done); the shards it finished are kept under data/.staging: rerun, and only the rest is done.")


def run_stage(argv: Sequence[str] | None = None) -> Any:
    """Parse argv (the stage, then options), load its params, run its flow on Ray under one Prefect API;
    print timing."""
    import os

    args = argument_parser().parse_args(argv)
    stage = args.stage
    runner = args.runner or os.environ.get("SEMLIC_RUNNER") or "prefect-ray"
    if runner not in RUNNERS:
        raise SystemExit(f"SEMLIC_RUNNER={runner!r}: the runners are {', '.join(RUNNERS)}")
    params = load_params(args.params, get_stage(stage).sections, args.set)
    base = params["base"]
    if args.cluster:
        base["cluster"] = args.cluster
    start = time.perf_counter()
    try:
        if runner == "local":
            from semlic.pipeline.local import run_stage as run_local_stage

            result = run_local_stage(stage, params)
        else:
            with stage_session(base):
                result = stage_flow(stage).with_options(task_runner=ray_runner(base))(params)
    except Exception as exc:
        found = storage_error(exc)
        if found is not None:
            raise SystemExit(storage_message(stage, found)) from exc
        lost = api_error(exc)
        if lost is not None:
            raise SystemExit(api_message(stage, lost)) from exc
        raise
    seconds = time.perf_counter() - start
    print(f"{stage}: done in {seconds:.1f} s" + (" (local processes)" if runner == "local" else ""), file=sys.stderr)
    if args.record:
        record = {"stage": stage, "seconds": seconds, "result": result}
        Path(args.record).write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m flows``: a bad stage name or configuration ends with its message, not a traceback."""
    from semlic.errors import SemlicError

    try:
        run_stage(argv)
    except SemlicError as exc:
        raise SystemExit(f"python -m flows: {exc}") from exc
    return 0
