"""``python -m flows.<stage>``: a stage's command line, run under one Prefect API and one Ray.

Each ``flows/<stage>.py`` ends in ``run_stage(flow, STAGE, SECTIONS, argv)``. A flow is run
three ways:

* ``python -m flows.<stage>`` (what ``dvc repro`` does): :func:`run_stage` loads the stage's
  params sections (:mod:`flows.params`), opens ONE Prefect API and one Ray connection for the
  whole run (:func:`flows.prefect_api.stage_session`), and calls the flow with the runner of
  :func:`flows.runner.ray_runner`;
* ``prefect deployment run <flow>/<deployment>``: a process worker calls the flow function
  with PREFECT_API_URL already set; the decorator's default runner resolves the cluster
  from the environment or ``params.yaml`` (:func:`flows.ray_cluster.cluster_address`);
* tests and benchmarks call ``main(argv)`` with ``--params`` / ``--set`` overrides.
"""

from __future__ import annotations

import argparse
import errno
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from flows.params import PARAMS_FILE, load_params
from flows.prefect_api import stage_session
from flows.runner import ray_runner


def argument_parser(stage: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m flows.{stage}",
                                     description=f"Run the {stage} stage as a Prefect flow on Ray.")
    parser.add_argument("--params", default=PARAMS_FILE, help="params file (default: params.yaml)")
    parser.add_argument("--set", "-S", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a parameter (YAML value), e.g. -S code.shard_size=4")
    parser.add_argument("--cluster", default=None,
                        help="Ray address: 'auto', host:port, ray://host:10001 (default: params/env)")
    parser.add_argument("--record", default=None, metavar="JSON",
                        help="also write what the flow returned (per-task seconds, nodes, ...) to this file")
    return parser


# Errors of the storage a stage writes to: the stage stops with a message saying so (and what is kept).
STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def storage_error(exc: BaseException | None) -> OSError | None:
    """The OSError of :data:`STORAGE_ERRNOS` behind ``exc`` (a task's error reaches the flow through
    Prefect's retries and Ray's RayTaskError: its ``cause``, ``__cause__`` or ``__context__``)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
            return exc
        exc = getattr(exc, "cause", None) or exc.__cause__ or exc.__context__
    return None


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


def storage_message(stage: str, error: OSError) -> str:
    where = f" writing {error.filename}" if error.filename else ""
    return (f"{stage}: failed{where}: {error.strerror or errno.errorcode.get(error.errno, error.errno)}. The stage's "
            "previous output is intact (an output is swapped in whole only when its stage succeeds); the work it "
            "finished is kept under data/.staging. Free space or make the data folder writable, then rerun: it "
            "resumes.")


def run_stage(flow, stage: str, sections: Sequence[str], argv: Sequence[str] | None = None) -> Any:
    """Parse argv, load params, run ``flow(params)`` on Ray under one Prefect API; print timing."""
    args = argument_parser(stage).parse_args(argv)
    params = load_params(args.params, sections, args.set)
    base = params["base"]
    if args.cluster:
        base["cluster"] = args.cluster
    start = time.perf_counter()
    try:
        with stage_session(base):
            result = flow.with_options(task_runner=ray_runner(base))(params)
    except Exception as exc:
        found = storage_error(exc)
        if found is not None:
            raise SystemExit(storage_message(stage, found)) from exc
        lost = api_error(exc)
        if lost is not None:
            raise SystemExit(api_message(stage, lost)) from exc
        raise
    seconds = time.perf_counter() - start
    print(f"{stage}: done in {seconds:.1f} s", file=sys.stderr)
    if args.record:
        record = {"stage": stage, "seconds": seconds, "result": result}
        Path(args.record).write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    return result
