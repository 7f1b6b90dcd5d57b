"""Executors: what a stage submits its units of work to, and the local one.

A stage (:mod:`semlic.pipeline.stage`) never starts processes itself: it calls
``executor.submit(unit, *args, resources=...)`` for each unit of work (a training, a shard of
images) and reads the futures' results. A unit is a module-level function of the library that
takes paths and small records and returns a small record (never arrays), so that any executor can
run it in another process or on another machine.

Two executors exist:

* :class:`LocalExecutor` (here): a pool of local processes, started with ``spawn``, that runs as
  many units at once as their CPUs fit in ``workers`` (``workers=0``: one at a time, in the calling
  process). Used by ``python -m semlic.pipeline``, the GPU study and the tests;
* ``flows.executor.PrefectRayExecutor``: each unit a Prefect task run on Ray (``dvc repro``,
  deployments, clusters).

Inside a unit, :func:`unit_threads` and :func:`unit_device` give the torch threads and the device
the executor assigned, and :func:`timed` fills the unit's record (seconds, where it ran).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import socket
import threading
import time
from collections import deque
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor
from concurrent.futures import wait as futures_wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol, Sequence


@dataclass(frozen=True)
class Resources:
    """What one unit needs: ``cpus`` (a fraction lets more units than CPUs start at once), a GPU
    (``gpu``: on a CUDA device), and whether units should spread over a cluster's nodes."""

    cpus: float = 1.0
    gpu: bool = False
    spread: bool = False


class Executor(Protocol):
    """What a stage is given: ``submit`` returns a future (``result()`` waits for the unit's record)."""

    def submit(self, fn: Callable[..., dict], *args: Any, resources: Resources = Resources(),
               **kwargs: Any) -> Any:
        ...


def wait_all(futures: Sequence) -> list:
    """Results of every future, in order; waits for all before raising the first failure (a failed
    shard does not leave the others running behind the stage's back)."""
    for future in futures:
        wait = getattr(future, "wait", None)
        if wait is not None:
            wait()
        else:
            try:
                future.exception()
            except BaseException:  # noqa: BLE001 - cancelled: result() below raises it
                pass
    return [future.result() for future in futures]


def is_cuda(base: dict) -> bool:
    return str(base.get("device", "cpu")).startswith("cuda")


def training_resources(base: dict, concurrent: int = 1) -> Resources:
    """A training unit's share of ``base.workers`` CPUs when ``concurrent`` trainings run at once (a GPU
    each on CUDA). More trainings than CPUs get a fraction of one each (e.g. 0.4 for five on two), so
    that they all start at once, as their budgets in minutes assume, instead of waiting for each other."""
    workers, concurrent = int(base.get("workers", 2)), max(1, int(concurrent))
    if concurrent > workers:
        return Resources(cpus=math.floor(100 * workers / concurrent) / 100, gpu=is_cuda(base))
    return Resources(cpus=max(1, workers // concurrent), gpu=is_cuda(base))


def shard_resources(base: dict, gpu: bool = True) -> Resources:
    """A shard unit: one CPU, spread over the nodes (and a GPU for a model on CUDA when ``gpu``)."""
    return Resources(cpus=1, gpu=gpu and is_cuda(base), spread=True)


# --- inside a unit -------------------------------------------------------------------------------

@dataclass
class UnitContext:
    """What the executor running the current unit assigned to it."""

    cpus: int = 1
    gpu_ids: list = field(default_factory=list)   # the GPUs given to this unit, as the scheduler names them
    node: str | None = None                        # the cluster node it runs on (None: this machine)


_CONTEXT = UnitContext()


@contextmanager
def unit_context(context: UnitContext) -> Iterator[UnitContext]:
    """Run a unit under ``context`` (executors call this around each unit)."""
    global _CONTEXT
    previous, _CONTEXT = _CONTEXT, context
    try:
        yield context
    finally:
        _CONTEXT = previous


def current_unit() -> UnitContext:
    return _CONTEXT


def unit_threads() -> int:
    """Give torch (and OpenMP) as many threads as the unit has CPUs; return that number."""
    import torch

    torch.set_num_threads(_CONTEXT.cpus)
    return _CONTEXT.cpus


def unit_device(device: str) -> str:
    """The torch device a unit runs on: ``device`` (``base.device``), narrowed to the GPU it was given.

    A CUDA device with GPUs assigned becomes the first assigned GPU as the process sees it: a
    scheduler that sets ``CUDA_VISIBLE_DEVICES`` to the assigned IDs (Ray does) has CUDA renumber
    them from 0, so that is ``cuda:0`` (a ``cuda:N`` in the params cannot name another unit's GPU).
    Without that variable, the assigned ID itself. Anything else (CPU, no GPU assigned) is returned
    unchanged.
    """
    device = str(device)
    ids = _CONTEXT.gpu_ids
    if not device.startswith("cuda") or not ids:
        return device
    assigned = {str(i) for i in ids}
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if not visible:
        return f"cuda:{ids[0]}"
    positions = [index for index, v in enumerate(visible) if v in assigned]
    return f"cuda:{positions[0]}" if positions else device


def where() -> dict:
    """A small record of where this unit ran: node, host, pid, the Prefect API it reported to (None
    outside Prefect), its GPUs and the ``CUDA_VISIBLE_DEVICES`` it saw."""
    return {"node": _CONTEXT.node, "host": socket.gethostname(), "pid": os.getpid(),
            "prefect_api": os.environ.get("PREFECT_API_URL") or None, "gpu_ids": list(_CONTEXT.gpu_ids),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}


@contextmanager
def timed(record: dict) -> Iterator[dict]:
    """Fill ``record`` with ``seconds`` (wall time of the block), when it ended (``ended``, Unix time) and
    where it ran."""
    start = time.perf_counter()
    yield record
    record.update(seconds=time.perf_counter() - start, ended=time.time(), **where())


def run_training(train: Callable, record: dict, *args: Any, device: str, **kwargs: Any) -> dict:
    """A training unit: ``train(*args, device=..., resume=True, progress=False, **kwargs)`` (a function
    of the one training loop) on the device and threads the executor assigned, resuming from the state
    an interrupted run left; ``record`` gets its time, where it ran and how far the loop got."""
    device = unit_device(device)  # the GPU the executor gave this unit, if any
    with timed(record) as record:
        record["threads"] = unit_threads()
        result = train(*args, device=device, resume=True, progress=False, **kwargs)
        record.update(completed=result.completed, iterations=result.iteration, stopped_by=result.stopped_by,
                      model=str(result.model_path), last=result.last)
    return record


# --- the local executor --------------------------------------------------------------------------

def run_unit(fn: Callable[..., dict], cpus: int, args: tuple, kwargs: dict) -> dict:
    """Run ``fn`` in this process with ``cpus`` threads (what a local worker process does)."""
    with unit_context(UnitContext(cpus=max(1, cpus))):
        return fn(*args, **kwargs)


class LocalExecutor:
    """Units in local processes, as many at once as their CPUs fit in ``workers``.

    ``workers=0`` runs each unit at once in the calling process (a sequential runner: no pickling,
    a debugger steps into the unit). Otherwise units go to a pool of ``spawn``-ed processes (no
    fork of a process that holds torch's threads); a unit with fractional CPUs (see
    :func:`training_resources`) shares a CPU, so five trainings on two CPUs start together. Use as
    a context manager: leaving it waits for the units and stops the processes.
    """

    def __init__(self, workers: int = 2, max_processes: int = 16):
        self.workers = max(0, int(workers))
        self.max_processes = max(1, int(max_processes))
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self._pending: deque = deque()
        self._used = 0.0
        self._outers: list[Future] = []

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.shutdown(cancel=exc_info[0] is not None)

    def shutdown(self, cancel: bool = False) -> None:
        """Stop the processes: after every submitted unit ended, or (``cancel``) after the running ones
        did, the ones not started yet cancelled."""
        with self._lock:
            if cancel:
                while self._pending:
                    self._pending.popleft()[0].cancel()
        if not cancel:
            futures_wait(self._outers)   # units still queued start as others end: let them run first
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=cancel)
            self._pool = None

    def submit(self, fn: Callable[..., dict], *args: Any, resources: Resources = Resources(), **kwargs: Any) -> Future:
        cpus = max(1, int(resources.cpus))   # the threads the unit uses
        if self.workers == 0:
            future: Future = Future()
            future.set_running_or_notify_cancel()
            try:
                future.set_result(run_unit(fn, cpus, args, kwargs))
            except BaseException as exc:  # noqa: BLE001 - the future carries it, as a pool's does
                future.set_exception(exc)
            return future
        outer: Future = Future()
        share = min(float(resources.cpus), float(self.workers))
        with self._lock:
            self._pending.append((outer, share, fn, cpus, args, kwargs))
            self._outers.append(outer)
        self._dispatch()
        return outer

    def _dispatch(self) -> None:
        """Start pending units while their CPUs fit (the first always starts when nothing runs)."""
        with self._lock:
            while self._pending:
                outer, share, fn, cpus, args, kwargs = self._pending[0]
                if self._used > 0 and self._used + share > self.workers + 1e-9:
                    return
                self._pending.popleft()
                if not outer.set_running_or_notify_cancel():
                    continue
                self._used += share
                if self._pool is None:
                    self._pool = ProcessPoolExecutor(self.max_processes, mp_context=multiprocessing.get_context("spawn"))
                inner = self._pool.submit(run_unit, fn, cpus, args, kwargs)
                inner.add_done_callback(lambda done, outer=outer, share=share: self._finished(done, outer, share))

    def _finished(self, inner: Future, outer: Future, share: float) -> None:
        with self._lock:
            self._used -= share
        exc = inner.exception() if not inner.cancelled() else None
        if inner.cancelled():
            outer.set_exception(CancelledError())
        elif exc is not None:
            outer.set_exception(exc)
        else:
            outer.set_result(inner.result())
        self._dispatch()
