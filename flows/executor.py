"""The Prefect + Ray executor: each unit a stage submits is a Prefect task run on Ray.

:class:`PrefectRayExecutor` is what ``python -m flows <stage>`` (and a deployment's flow run)
gives a stage function (:mod:`semlic.pipeline.stage`). ``submit(unit, ...)`` wraps the unit in
a Prefect task (one per unit function, named after it: ``segment_shard`` -> ``segment-shard``)
and submits it under prefect-ray's ``remote_options`` from the unit's resources
(:func:`flows.ray_cluster.ray_options`). On the worker, the unit runs with the CPUs, GPUs and
node Ray gave it (:func:`semlic.pipeline.executor.unit_context`). Transient failures (I/O, a lost
worker) are retried twice; a :class:`semlic.errors.SemlicError` (bad input or config) is not.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from prefect import task
from prefect.cache_policies import NO_CACHE

from flows.ray_cluster import ray_options
from semlic.pipeline.executor import Resources, UnitContext, unit_context


def transient(task, task_run, state) -> bool:
    """Retry condition: retry anything but a SemlicError (bad input or config does not heal)."""
    from semlic.errors import SemlicError

    try:
        state.result()
    except SemlicError:
        return False
    except Exception:  # noqa: BLE001 - OSError, lost Ray worker, CUDA hiccup...
        return True
    return False


# Keyword arguments of every task: results stay in memory (they are small), no input hashing (the
# stage's outputs are what DVC caches), two retries for transient errors.
TASK_OPTIONS = dict(retries=2, retry_delay_seconds=1, retry_condition_fn=transient,
                    cache_policy=NO_CACHE, persist_result=False)


def ray_unit_context() -> UnitContext:
    """What Ray gave the task running in this worker: CPUs (at least one thread), GPU IDs, node."""
    try:
        import ray

        if ray.is_initialized():
            context = ray.get_runtime_context()
            cpus = max(1, int(context.get_assigned_resources().get("CPU", 1)))
            gpus = sorted(ray.get_gpu_ids(), key=lambda i: (len(str(i)), str(i)))
            return UnitContext(cpus=cpus, gpu_ids=gpus, node=context.get_node_id())
    except Exception:  # noqa: BLE001 - Ray shutting down: one thread, no GPU
        pass
    return UnitContext()


_TASKS: dict[tuple[str, str], Any] = {}


def unit_task(fn: Callable[..., dict]):
    """The Prefect task of unit ``fn`` (made once per function)."""
    key = (fn.__module__, fn.__qualname__)
    if key not in _TASKS:
        @functools.wraps(fn)
        def on_ray(*args: Any, **kwargs: Any) -> dict:
            with unit_context(ray_unit_context()):
                return fn(*args, **kwargs)

        _TASKS[key] = task(on_ray, name=fn.__name__.removesuffix("_unit").replace("_", "-"), **TASK_OPTIONS)
    return _TASKS[key]


class PrefectRayExecutor:
    """Units as Prefect task runs on the flow's Ray task runner (``base``: the stage's params)."""

    def __init__(self, base: dict):
        self.base = base

    def submit(self, fn: Callable[..., dict], *args: Any, resources: Resources = Resources(), **kwargs: Any):
        from prefect_ray.context import remote_options

        with remote_options(**ray_options(self.base, resources)):
            return unit_task(fn).submit(*args, **kwargs)
