"""The only code in flows/ that uses other packages' internals, and the versions it was written for.

Everything else in flows/ uses public APIs. What is here, and why it stays:

* :class:`RayTaskRunnerWithoutSettings`: prefect-ray 0.6's ``RayTaskRunner.submit``, less the
  driver's settings. prefect-ray ships the whole settings context with every task run:
  serializing it costs ~19 ms per task run in the driver (profiled) and each Ray worker
  rebuilds a full Settings model from it; the workers get their settings from their
  environment instead (:mod:`flows.ray_cluster`). It also keeps one Ray function per set of
  remote options, where prefect-ray makes and exports a new one per task run. Measured with
  ``benchmarks/pipeline_overhead.py`` (reports/pipeline.md), per task on warm workers, one
  at a time / mapped: 12-13 ms / 9 ms with this fork, 41 ms / 32 ms when it ships Prefect's
  public ``serialize_context`` with the settings dropped afterwards (the driver still pays
  for serializing them), 73-78 ms / 52-57 ms for stock prefect-ray in the same session.
  No public API leaves the settings out, so the fork uses private names of
  ``prefect.context`` (``_deployment_id``, ``_deployment_parameters``), of Prefect's
  ``TaskRunner`` (``_started``) and of ``RayTaskRunner`` (``_exchange_prefect_for_ray_futures``,
  ``_run_prefect_task``).
* :func:`ray_loopback`: makes a private local Ray bind 127.0.0.1 only (docs/DESIGN.md section 8);
  Ray reads ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` once, at import, into
  ``ray._private.ray_constants.ENABLE_RAY_CLUSTER``, so a driver that imported Ray first must
  set the constant too.

Prefect's internals change between minor versions without notice: :func:`check_versions`
(called when a runner is made, :func:`flows.runner.ray_runner`) refuses any prefect other
than :data:`PREFECT` or prefect-ray other than :data:`PREFECT_RAY`, naming both, and
``tests/test_flows_private.py`` fails on such an upgrade and checks that every private name
used here still exists. To upgrade: rerun that test and the benchmark; if stock prefect-ray
costs about the same per task, drop the fork (:class:`flows.runner.SemlicRayTaskRunner` then
builds on ``prefect_ray.RayTaskRunner``); otherwise port it and change the versions here.
"""

from __future__ import annotations

import json
from importlib import metadata
from typing import Any
from uuid import uuid4

from prefect_ray import RayTaskRunner

PREFECT = "3.8"
"""The prefect release series this module was written for (3.8.x)."""
PREFECT_RAY = "0.6"
"""The prefect-ray release series this module was written for (0.6.x)."""


def _series(version: str) -> str:
    return ".".join(version.split(".")[:2])


def installed_versions() -> dict[str, str]:
    """The installed versions of prefect and prefect-ray."""
    return {name: metadata.version(name) for name in ("prefect", "prefect-ray")}


def check_versions(installed: dict[str, str] | None = None) -> None:
    """Raise RuntimeError unless prefect is 3.8.x and prefect-ray 0.6.x (the message names both)."""
    installed = installed or installed_versions()
    supported = {"prefect": PREFECT, "prefect-ray": PREFECT_RAY}
    if any(_series(installed[name]) != series for name, series in supported.items()):
        raise RuntimeError(
            f"flows/_private.py uses internals of prefect {PREFECT}.x and prefect-ray {PREFECT_RAY}.x; installed: "
            f"prefect {installed['prefect']}, prefect-ray {installed['prefect-ray']}. Install the supported "
            f"versions (pyproject.toml pins them) or port flows/_private.py (see its docstring) and run "
            f"tests/test_flows_private.py.")


def serialize_context_without_settings(asset_ctx_kwargs: dict) -> dict:
    """``prefect.context.serialize_context`` less the settings (same keys, ``settings_context`` empty)."""
    from prefect.context import (AssetContext, EngineContext, TagsContext, TaskRunContext, _deployment_id,
                                 _deployment_parameters)

    flow_run_context, task_run_context, tags_context = EngineContext.get(), TaskRunContext.get(), TagsContext.get()
    deployment_id = _deployment_id.get()
    return {
        "flow_run_context": flow_run_context.serialize() if flow_run_context else {},
        "task_run_context": task_run_context.serialize() if task_run_context else {},
        "tags_context": tags_context.serialize() if tags_context else {},
        "settings_context": {},
        "asset_context": AssetContext.from_task_and_inputs(**asset_ctx_kwargs).serialize(),
        "deployment_id": str(deployment_id) if deployment_id else None,
        "deployment_parameters": _deployment_parameters.get(),
    }


class RayTaskRunnerWithoutSettings(RayTaskRunner):
    """prefect-ray's RayTaskRunner whose ``submit`` ships no settings and reuses Ray functions."""

    def __enter__(self):
        self._remote_functions: dict[str, Any] = {}  # Ray functions of this run, by remote options
        return super().__enter__()

    def serialize_context(self, asset_ctx_kwargs: dict) -> dict:
        """The context shipped with a task run (a benchmark variant may override it)."""
        return serialize_context_without_settings(asset_ctx_kwargs)

    def submit(self, task, parameters, wait_for=None, dependencies=None):
        # prefect-ray 0.6's submit, less the settings context (see the module docstring)
        import ray
        from prefect.utilities.engine import collect_task_run_inputs_sync
        from prefect_ray.context import RemoteOptionsContext
        from prefect_ray.task_runners import PrefectRayFuture

        if not self._started:
            raise RuntimeError("The task runner must be started before submitting work.")
        task_run_id = uuid4()
        task_inputs = {k: collect_task_run_inputs_sync(v, future_cls=PrefectRayFuture)
                       for k, v in parameters.items()}
        context = self.serialize_context({
            "task": task, "task_run_id": task_run_id, "task_inputs": task_inputs, "copy_to_child_ctx": True})
        parameters, upstream = self._exchange_prefect_for_ray_futures(parameters)
        options = RemoteOptionsContext.get().current_remote_options
        # one Ray function per set of options (prefect-ray makes, and exports, a new one per task run)
        key = json.dumps(options, sort_keys=True, default=repr)
        remote = self._remote_functions.get(key)
        if remote is None:
            remote = (ray.remote(**options) if options else ray.remote)(self._run_prefect_task)
            self._remote_functions[key] = remote
        ref = remote.options(name=task.name).remote(
            *upstream, task=task, task_run_id=task_run_id, parameters=parameters,
            wait_for=wait_for, dependencies=dependencies, context=context)
        return PrefectRayFuture(task_run_id=task_run_id, wrapped_future=ref)


def ray_loopback() -> None:
    """Make a local Ray started after this call bind 127.0.0.1 only (docs/DESIGN.md section 8)."""
    import os

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # inherited by raylet, GCS, workers
    import ray  # noqa: F401  (the whole package before one of its private modules)
    import ray._private.ray_constants as ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False  # read at call time by services.get_node_ip_address


# Every private name used above, for tests/test_flows_private.py: (module, attribute path).
PRIVATE_NAMES = (
    ("prefect.context", "_deployment_id"),
    ("prefect.context", "_deployment_parameters"),
    ("prefect_ray.task_runners", "RayTaskRunner._exchange_prefect_for_ray_futures"),
    ("prefect_ray.task_runners", "RayTaskRunner._run_prefect_task"),
    ("ray._private.ray_constants", "ENABLE_RAY_CLUSTER"),
)
