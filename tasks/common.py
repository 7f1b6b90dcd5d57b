"""What every task shares: retry policy, thread count, the device Ray gave it, where it ran."""

from __future__ import annotations

import os
import socket
import time
from contextlib import contextmanager
from typing import Iterator

from prefect.cache_policies import NO_CACHE


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


# Keyword arguments of every @task: results stay in memory (they are small), no input
# hashing (the stage's outputs are what DVC caches), two retries for transient errors.
TASK_OPTIONS = dict(retries=2, retry_delay_seconds=1, retry_condition_fn=transient,
                    cache_policy=NO_CACHE, persist_result=False)


def assigned_cpus() -> int:
    """CPUs Ray gave this task (1 outside Ray)."""
    try:
        import ray

        if ray.is_initialized():
            return max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
    except Exception:  # noqa: BLE001
        pass
    return 1


def use_assigned_threads() -> int:
    """Give torch (and OpenMP) as many threads as the task has CPUs; return that number."""
    import torch

    threads = assigned_cpus()
    torch.set_num_threads(threads)
    return threads


def assigned_gpu_ids() -> list:
    """IDs of the GPUs Ray gave this task (``ray.get_gpu_ids()``); [] outside a Ray task."""
    try:
        import ray

        if ray.is_initialized():
            return sorted(ray.get_gpu_ids(), key=lambda i: (len(str(i)), str(i)))
    except Exception:  # noqa: BLE001 - Ray shutting down: no GPU to report
        return []
    return []


def task_device(device: str) -> str:
    """The torch device a task runs on: ``device`` (``base.device``), narrowed to the GPU Ray gave it.

    A CUDA device inside a Ray task with GPUs assigned becomes the first assigned GPU as the
    process sees it: Ray sets ``CUDA_VISIBLE_DEVICES`` to the assigned IDs, which CUDA
    renumbers from 0, so that is ``cuda:0`` (a ``cuda:N`` in the params cannot name another
    task's GPU). Without that variable (``RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES``), the
    assigned ID itself. Anything else (CPU, no GPU from Ray, outside Ray) is returned unchanged.
    """
    device = str(device)
    if not device.startswith("cuda"):
        return device
    ids = assigned_gpu_ids()
    if not ids:
        return device
    assigned = {str(i) for i in ids}
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if not visible:
        return f"cuda:{ids[0]}"
    positions = [index for index, v in enumerate(visible) if v in assigned]
    return f"cuda:{positions[0]}" if positions else device


def where() -> dict:
    """A small record of where this task ran: Ray node id, host, pid, the Prefect API it
    reported to (None would mean a temporary server of its own), the GPUs Ray gave it
    (``gpu_ids``) and the ``CUDA_VISIBLE_DEVICES`` it saw."""
    from prefect.settings import PREFECT_API_URL

    node = None
    try:
        import ray

        if ray.is_initialized():
            node = ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001
        pass
    return {"node": node, "host": socket.gethostname(), "pid": os.getpid(), "prefect_api": PREFECT_API_URL.value(),
            "gpu_ids": assigned_gpu_ids(), "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}


@contextmanager
def timed(record: dict) -> Iterator[dict]:
    """Fill ``record`` with ``seconds`` (wall time of the block), when it ended (``ended``, Unix time) and
    where it ran."""
    start = time.perf_counter()
    yield record
    record.update(seconds=time.perf_counter() - start, ended=time.time(), **where())
