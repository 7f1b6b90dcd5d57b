"""Where a stage's tasks run: connecting the driver to Ray, the workers' environment, remote options.

Cluster address (first that is set wins): ``SEMLIC_RAY_ADDRESS``, ``RAY_ADDRESS``,
``base.cluster`` in params. ``None`` (null) starts a private local Ray on loopback (never
attaches to another Ray instance on the machine); ``"auto"`` joins the cluster this driver
runs inside; anything else (``host:port``, ``ray://host:10001``) is connected to. The tasks
read and write files under the repository: a multi-machine cluster needs the repository
on a shared file system at the same path.

Every Ray worker process of the job gets, through the job's ``runtime_env``, the Prefect
API URL of the stage (so no worker starts a server of its own), ``PYTHONPATH`` (tasks and
flows are pickled by reference) and a start-up hook, :func:`flows.runner.worker_setup`.
A unit's resources (:class:`semlic.pipeline.executor.Resources`) become Ray remote options
(:func:`ray_options`, :func:`gpu_options`), given to its task through prefect-ray's ``remote_options``.
"""

from __future__ import annotations

import os
from typing import Any

from flows import REPO
from semlic.pipeline.params import base_from_file

# Passed to every Ray worker process (runtime_env env_vars) besides PREFECT_API_URL.
# Thread counts are not passed: a task sets torch's threads to the CPUs Ray gave it.
WORKER_ENV_KEYS = ("PREFECT_SERVER_ANALYTICS_ENABLED", "PREFECT_LOGGING_LEVEL", "PREFECT_HOME",
                   "PREFECT_API_AUTH_STRING", "PREFECT_API_KEY",
                   "SEMLIC_METHODS")  # methods registered outside semlic (semlic.methods)
WORKER_SETUP_HOOK = "flows.runner.worker_setup"
"""Ray's ``worker_process_setup_hook`` for the job, by dotted name (imported in each worker)."""


def cluster_address(base: dict | None = None) -> str | None:
    """Where the tasks run: env ``SEMLIC_RAY_ADDRESS``, env ``RAY_ADDRESS``, ``base.cluster``."""
    for name in ("SEMLIC_RAY_ADDRESS", "RAY_ADDRESS"):
        if os.environ.get(name):
            return os.environ[name]
    if base is None:
        base = base_from_file()
    return base.get("cluster") or None


def worker_env(api_url: str | None) -> dict[str, str]:
    """Environment variables of every Ray worker process of the job."""
    env = {k: os.environ[k] for k in WORKER_ENV_KEYS if k in os.environ}
    if api_url:
        env["PREFECT_API_URL"] = api_url
    # units and flows are pickled by reference: workers import them from the repository
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def connect_ray(address: str | None, num_cpus: int, api_url: str | None) -> bool:
    """Connect this driver to Ray; return True if it started or joined a session it must end.

    ``address`` None/"local": a private Ray on 127.0.0.1 with ``num_cpus`` CPUs (never one
    that happens to run on this machine); "auto": the cluster this driver runs inside; else
    that address. Every worker process gets PREFECT_API_URL, PYTHONPATH and the start-up hook
    :data:`WORKER_SETUP_HOOK` through the job's ``runtime_env``. Already connected (a stage's
    session, or a Ray worker entering the flow's runner): nothing to do, False.
    """
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = dict(
        namespace="semlic", log_to_driver=False,
        runtime_env={"env_vars": worker_env(api_url), "worker_process_setup_hook": WORKER_SETUP_HOOK},
    )
    from flows._private import ray_loopback

    if address in (None, "", "local"):
        ray_loopback()
        kwargs.update(address="local", num_cpus=num_cpus, include_dashboard=False)
    else:
        if str(address).startswith(("127.0.0.1:", "localhost:")):   # a Ray on loopback (flows.session's)
            ray_loopback()                                          # joined from loopback too
        kwargs.update(address=address)
    # Connect here rather than in RayTaskRunner (which treats "auto" as "start one").
    ray.init(**kwargs)
    return True


def gpu_options(base: dict) -> dict:
    """Ray remote options for a GPU task: one GPU when the device is CUDA and the cluster has one."""
    device = str(base.get("device", "cpu"))
    if not device.startswith("cuda"):
        return {}
    import ray

    if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) >= 1:
        return {"num_gpus": 1}
    return {}


def ray_options(base: dict, resources) -> dict:
    """Ray remote options for a unit's :class:`semlic.pipeline.executor.Resources`: its CPUs (a whole
    number at most the largest node's; a fraction as it is), a GPU when it asks for one and the cluster
    has one (:func:`gpu_options`), spread over the nodes when it asks to be."""
    import ray

    cpus = resources.cpus
    if cpus >= 1:
        cpus = int(cpus)
        if ray.is_initialized():
            largest = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=1)
            cpus = max(1, min(cpus, int(largest)))
    options: dict[str, Any] = {"num_cpus": cpus}
    if resources.spread:
        options["scheduling_strategy"] = base.get("scheduling", "SPREAD")
    if resources.gpu:
        options.update(gpu_options(base))
    return options
