"""What every task shares: retry policy, thread count, where it ran."""

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


def where() -> dict:
    """A small record of where this task ran: Ray node id, host, pid, and the Prefect API it
    reported to (None would mean a temporary server of its own)."""
    from prefect.settings import PREFECT_API_URL

    node = None
    try:
        import ray

        if ray.is_initialized():
            node = ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001
        pass
    return {"node": node, "host": socket.gethostname(), "pid": os.getpid(), "prefect_api": PREFECT_API_URL.value()}


@contextmanager
def timed(record: dict) -> Iterator[dict]:
    """Fill ``record`` with ``seconds`` (wall time of the block) and where it ran."""
    start = time.perf_counter()
    yield record
    record.update(seconds=time.perf_counter() - start, **where())
