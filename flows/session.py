"""``python -m flows.session COMMAND...``: one Prefect API and one Ray for every stage COMMAND runs.

``make repro`` is ``python -m flows.session dvc repro``. Run alone, each stage (``python -m flows
<stage>``) starts its own Prefect server and its own local Ray and stops them when it ends: 13-15 s
of a stage's time on 2 cores, most of a small stage's (reports/pipeline.md). Here they are started
once, before COMMAND, and every stage COMMAND runs joins them through the variables a stage already
reads: ``PREFECT_API_URL`` (the server, :class:`flows.prefect_api.StageServer`) and
``SEMLIC_RAY_ADDRESS`` (a local Ray head with ``base.workers`` CPUs started by this process; each
stage is a Ray job of its own, with its own workers' environment). Both stop when COMMAND ends, and
die with this process when it is killed (the server by PR_SET_PDEATHSIG, Ray's processes share its
fate). Where either is already set (a server or a cluster of yours), that one is used and left alone.
The outputs do not depend on where the units ran (tests/test_flows_ray_cluster.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Sequence

from flows.prefect_api import StageServer
from semlic.pipeline.params import base_from_file


def main(argv: Sequence[str] | None = None) -> int:
    command = list(sys.argv[1:] if argv is None else argv)
    if not command or command[0] in ("-h", "--help"):
        print(__doc__.strip().split("\n\n")[0] + "\n\nusage: python -m flows.session COMMAND [ARGS...]")
        return 0 if command else 2
    env = dict(os.environ)
    server = None
    started = time.perf_counter()
    owns_ray = False
    try:
        if not env.get("PREFECT_API_URL"):
            server = StageServer()
            env["PREFECT_API_URL"] = server.launch()
        if not (env.get("SEMLIC_RAY_ADDRESS") or env.get("RAY_ADDRESS") or base_from_file().get("cluster")):
            import ray

            from flows._private import ray_loopback

            ray_loopback()
            context = ray.init(address="local", num_cpus=int(base_from_file().get("workers", 2)),
                               include_dashboard=False, log_to_driver=False, namespace="semlic")
            owns_ray = True
            env["SEMLIC_RAY_ADDRESS"] = context.address_info["gcs_address"]
            if os.environ.get("RAY_AUTH_MODE"):   # the stages join with the head's token mode (its token is Ray's to find)
                env["RAY_AUTH_MODE"] = os.environ["RAY_AUTH_MODE"]
        if server is not None:
            server.wait_ready()
        print(f"flows.session: Prefect API {env['PREFECT_API_URL']}, Ray "
              f"{env.get('SEMLIC_RAY_ADDRESS') or env.get('RAY_ADDRESS') or 'of params.yaml'} "
              f"(ready in {time.perf_counter() - started:.1f} s)", file=sys.stderr)
        return subprocess.call(command, env=env)
    finally:
        if owns_ray:
            import ray

            ray.shutdown()
        if server is not None:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
