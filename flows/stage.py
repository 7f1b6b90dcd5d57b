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


def run_stage(flow, stage: str, sections: Sequence[str], argv: Sequence[str] | None = None) -> Any:
    """Parse argv, load params, run ``flow(params)`` on Ray under one Prefect API; print timing."""
    args = argument_parser(stage).parse_args(argv)
    params = load_params(args.params, sections, args.set)
    base = params["base"]
    if args.cluster:
        base["cluster"] = args.cluster
    start = time.perf_counter()
    with stage_session(base):
        result = flow.with_options(task_runner=ray_runner(base))(params)
    seconds = time.perf_counter() - start
    print(f"{stage}: done in {seconds:.1f} s", file=sys.stderr)
    if args.record:
        record = {"stage": stage, "seconds": seconds, "result": result}
        Path(args.record).write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    return result
