"""The task runner of every flow: Prefect task runs on Ray, cheap enough to map shards over.

Driver side, :func:`ray_runner` gives the runner a flow is decorated with (and
:func:`flows.stage.run_stage` runs it with): prefect-ray's RayTaskRunner, in the variant of
:mod:`flows._private` that ships no settings with each task run, connected to the cluster
through :func:`flows.ray_cluster.connect_ray`. Worker side, :func:`worker_setup` (Ray's
start-up hook for every worker process of the job) imports Prefect while the worker is idle
and opens one API client for the worker's life. Per-task overhead: reports/pipeline.md
(benchmarks/pipeline_overhead.py).
"""

from __future__ import annotations

import os
from typing import Any

from flows import _private
from semlic.pipeline.params import base_from_file
from flows.ray_cluster import cluster_address, connect_ray


class SemlicRayTaskRunner(_private.RayTaskRunnerWithoutSettings):
    """A Ray task runner that connects through :func:`flows.ray_cluster.connect_ray`.

    Inside :func:`flows.prefect_api.stage_session` (``python -m flows <stage>``) Ray is
    already connected and is reused. Run by a deployment's worker, it resolves the cluster
    itself (:func:`flows.ray_cluster.cluster_address`) and disconnects when the flow ends.
    """

    def __enter__(self):
        import ray

        self.connected_ray = False
        if not ray.is_initialized():  # else a stage's session, or a Ray worker running a task
            from prefect.settings import PREFECT_API_URL

            self.connected_ray = connect_ray(
                self.address or cluster_address(),
                int(self.init_kwargs.get("num_cpus") or base_from_file().get("workers", 2)),
                PREFECT_API_URL.value())
        return super().__enter__()  # Ray is initialized: prefect-ray's runner leaves it to us

    def __exit__(self, *exc_info: Any):
        try:
            super().__exit__(*exc_info)
        finally:
            if getattr(self, "connected_ray", False):
                import ray

                if ray.is_initialized():
                    ray.shutdown()


def ray_runner(base: dict | None = None, address: str | None = None) -> SemlicRayTaskRunner:
    """The task runner for a flow: local Ray with ``base.workers`` CPUs, or the cluster.

    Refuses (RuntimeError) a prefect or prefect-ray the runner was not written for
    (:func:`flows._private.check_versions`).
    """
    _private.check_versions()
    init_kwargs: dict[str, Any] = {"namespace": "semlic"}
    if base is not None:
        address = address or cluster_address(base)
        init_kwargs["num_cpus"] = int(base.get("workers", 2))
    return SemlicRayTaskRunner(address=address, init_kwargs=init_kwargs)


_WORKER_CLIENT = None


def worker_setup() -> None:
    """Ray worker start-up hook: import Prefect while the worker is idle, open one API client.

    The client is entered once for the worker's life, so each task run reuses it instead of
    building a new HTTP client and TLS context (about 0.08 s each, twice per task run).
    """
    global _WORKER_CLIENT
    import prefect.task_engine  # noqa: F401
    import prefect_ray.task_runners  # noqa: F401

    url = os.environ.get("PREFECT_API_URL")
    if not url or _WORKER_CLIENT is not None:
        return
    from flows.prefect_api import wait_healthy

    wait_healthy(url, 120)  # the driver may still be starting the server
    try:
        from prefect.context import SyncClientContext

        client = SyncClientContext()
        client.__enter__()
        _WORKER_CLIENT = client
    except Exception:  # noqa: BLE001 - each task run then opens its own client
        pass
