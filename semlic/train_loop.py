"""The one training loop: deterministic resume, atomic state, a Parquet log, a step or time budget.

Every network of the project trains through :func:`fit` (PSPNet, DSSLIC's CompNet + FineNet,
EDMS's SMapNet, and the systems that come after them). What differs between them is a
:class:`TrainingTask`: its networks and optimisers, and one optimiser step at a given
iteration. The loop owns everything else:

* **Resume.** ``<out_dir>/train_state.safetensors`` holds every network's weights, every
  optimiser's state, the iteration and the torch random generators (dropout), written
  atomically every ``checkpoint_every`` iterations and when the call stops. A task draws its
  batches, crops and flips as a function of (seed, iteration), so a run resumed from any
  checkpoint ends with the same weights as an uninterrupted one, bit for bit on one device
  and thread count. The state also records the task's :meth:`TrainingTask.resume_key`
  (the settings that change the result); resuming with other settings is refused by name.
* **The log.** ``<out_dir>/train_log.parquet``: one row per ``log_every`` iterations and one
  at the last (iteration, seconds, images_per_s, and the mean of each loss over the window).
  Losses stay on the device between rows: the loop reads them back to the host once per row.
  A window that a stop or a checkpoint cuts is kept in the state, so a resumed run writes the
  uninterrupted run's rows.
* **Two kinds of time, two names.** A *pause*: ``stop_after`` iterations or ``time_limit_s``
  seconds of this call (the commands' ``--pause-after M``): the loop saves the state and
  returns with ``completed`` False and ``stopped_by`` saying why; the next call continues.
  When every iteration is done the task writes its model file. A *budget*: ``budget_s``, the
  configs' ``minutes``: when it runs out the model is written as it is (``stopped_by``
  "budget"; the task's ``trained_iterations`` and the log say how far it got), for runs sized
  to the machine they run on. Minutes become seconds in one place,
  :func:`semlic.config_files.seconds`.
* **Speed.** :func:`autocast` (bf16 on CUDA and on CPUs with native bf16, see :func:`cpu_bf16`)
  and :func:`channels_last` are what tasks use.
"""

from __future__ import annotations

import json
import logging
import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .errors import CheckpointError, ConfigError
from .fileio import write_parquet
from .model_files import assign_state, load_tensors, save_tensors

log = logging.getLogger(__name__)

STATE_FILE = "train_state.safetensors"
LOG_FILE = "train_log.parquet"
STATE_VERSION = "2"


class TrainingTask(ABC):
    """One network's training, as :func:`fit` drives it."""

    name: str = "train"
    total_iterations: int
    images_per_iteration: int = 1
    trained_iterations: int = 0      # set by fit before save_model: how far training got

    @abstractmethod
    def modules(self) -> dict[str, torch.nn.Module]:
        """The networks whose weights the state holds, by a stable name."""

    @abstractmethod
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The optimisers whose state the state holds, by a stable name."""

    @abstractmethod
    def resume_key(self) -> dict:
        """JSON data: the settings that change the result (a resumed run must have the same)."""

    def begin(self, start: int) -> None:
        """Called once before the first step of a call, with the iteration it starts at."""

    @abstractmethod
    def step(self, iteration: int) -> dict[str, Any]:
        """One optimiser step at ``iteration`` (0-based); losses as 0-d tensors (kept on the
        device), other figures (learning rate, epoch) as Python numbers."""

    @abstractmethod
    def save_model(self, out_dir: Path) -> Path:
        """Write the trained model file(s) after the last iteration; return the main one."""


@dataclass
class TrainResult:
    completed: bool
    iteration: int
    total_iterations: int
    stopped_by: str | None              # None (completed), "steps", "time" or "budget" (model written)
    seconds: float                      # wall time of this call's iterations
    images_per_s: float                 # this call's training throughput
    last: dict[str, float] = field(default_factory=dict)   # the last log row's figures
    model_path: Path | None = None
    state_path: Path | None = None
    log_path: Path | None = None

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}


# --- device helpers ------------------------------------------------------------------------
CPU_BF16_ENV = "SEMLIC_CPU_BF16"
"""``0`` keeps training on the CPU in float32; ``1`` uses bf16 wherever the CPU has it (no probe)."""
CPU_BF16_MIN_SPEEDUP = 1.2
_CPU_BF16: dict[str, Any] = {}


def cpu_bf16_probe(repeats: int = 7) -> dict[str, float]:
    """Seconds of one training-like convolution (forward + backward, 3x3, 64 channels, batch 8 at
    64x64) in float32 and under bf16 autocast on this CPU and thread count, and the speed-up.

    The two precisions are timed in alternating pairs and the speed-up is the median of the pairs'
    ratios: other work on the CPU (several trainings probing at once) slows both halves of a pair
    alike, so the decision does not flip with the load as a block of float32 runs followed by a
    block of bf16 runs did (a stage's models then depended on a timing race)."""
    conv = torch.nn.Conv2d(64, 64, 3, padding=1)
    x = torch.randn(8, 64, 64, 64)

    def run(enabled: bool) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            y = conv(x)
        y.float().sum().backward()
        return time.perf_counter() - start

    run(False), run(True)   # the first of each builds oneDNN's kernels
    pairs = [(run(False), run(True)) for _ in range(repeats)]
    ratios = sorted(f32 / bf16 for f32, bf16 in pairs)
    return {"float32": min(f for f, _ in pairs), "bfloat16": min(b for _, b in pairs),
            "speedup": ratios[len(ratios) // 2]}


def cpu_bf16() -> bool:
    """Whether training on this CPU runs under bf16 autocast: detected, not assumed.

    The CPU must compute bf16 natively (AVX512-BF16 or AMX, as oneDNN uses them; elsewhere bf16
    is emulated and slower), and a short probe (:func:`cpu_bf16_probe`, ~0.1 s, once per
    process) must find bf16 at least :data:`CPU_BF16_MIN_SPEEDUP` times faster than float32
    with this torch and thread count: CPUs that report the instructions do not all run them
    faster (reports/cpu_bf16.md). The environment variable :data:`CPU_BF16_ENV` overrides both.
    """
    import os

    forced = os.environ.get(CPU_BF16_ENV, "").strip().lower()
    if forced in ("0", "false", "no", "off"):
        return False
    try:
        native = bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:   # an older torch without the probes
        native = False
    if forced in ("1", "true", "yes", "on"):
        return native
    if not native:
        return False
    key = f"{torch.get_num_threads()}"
    if key not in _CPU_BF16:
        probe = cpu_bf16_probe()
        _CPU_BF16[key] = probe["speedup"] >= CPU_BF16_MIN_SPEEDUP
        log.info("bf16 on this CPU: %.2fx float32's speed with %s threads: training in %s", probe["speedup"], key,
                 "bf16" if _CPU_BF16[key] else "float32")
    return _CPU_BF16[key]


def adam(params, **kwargs) -> torch.optim.Adam:
    """``torch.optim.Adam``, fused (one kernel step for all parameters, no per-tensor launches) when
    every parameter is on a CUDA device; elsewhere the default implementation, as before."""
    groups = [{**g, "params": list(g["params"])} if isinstance(g, dict) else g for g in params]
    tensors = [t for g in groups for t in (g["params"] if isinstance(g, dict) else [g])]
    fused = bool(tensors) and all(t.is_cuda for t in tensors)
    return torch.optim.Adam(groups, fused=True if fused else None, **kwargs)


def autocast_dtype(device: torch.device | str, enabled: bool = True) -> torch.dtype | None:
    """The autocast dtype of training on ``device`` (bf16) or None (float32)."""
    device = torch.device(device)
    if not enabled:
        return None
    if device.type == "cuda" or (device.type == "cpu" and cpu_bf16()):
        return torch.bfloat16
    return None


def autocast(device: torch.device | str, enabled: bool = True):
    """bf16 autocast for training when ``enabled``: on CUDA, and on CPUs with native bf16
    (:func:`cpu_bf16`); a no-op elsewhere. Inference and coding stay in float32 on the CPU."""
    device = torch.device(device)
    dtype = autocast_dtype(device, enabled)
    kind = device.type if device.type in ("cuda", "cpu") else "cpu"
    return torch.autocast(kind, dtype=torch.bfloat16, enabled=dtype is not None)


def channels_last(device: torch.device | str, enabled: bool = True) -> torch.memory_format:
    """The memory format for a device: channels-last on CUDA when ``enabled``."""
    return torch.channels_last if enabled and torch.device(device).type == "cuda" else torch.contiguous_format


# --- the state file --------------------------------------------------------------------------
def _flatten_optimizer(prefix: str, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], str]:
    sd = optimizer.state_dict()
    tensors = {}
    for index, state in sd["state"].items():
        for key, value in state.items():
            tensors[f"{prefix}.{index}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return tensors, json.dumps(sd["param_groups"])


def _restore_optimizer(prefix: str, optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                       groups_json: str) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith(prefix + "."):
            index, key = name[len(prefix) + 1:].split(".", 1)
            state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(groups_json)})


def save_state(path: Path, task: TrainingTask, iteration: int, window: dict[str, Any] | None = None,
               window_steps: int = 0) -> None:
    """Write everything a resumed run needs, atomically.

    ``window``/``window_steps``: the log window still open at ``iteration`` (loss sums and the
    last other figures over ``window_steps`` iterations), so the resumed run's rows are the same.
    """
    tensors: dict[str, torch.Tensor] = {}
    meta = {"kind": "train_state", "state_version": STATE_VERSION, "iteration": str(iteration),
            "resume_key": json.dumps(task.resume_key(), sort_keys=True, default=str)}
    if window and window_steps:
        figures = {k: v for k, v in window.items() if not torch.is_tensor(v)}
        meta["log_window"] = json.dumps({"steps": window_steps, "keys": list(window), "figures": figures},
                                        default=float)
        tensors.update({f"window.{k}": v for k, v in window.items() if torch.is_tensor(v)})
    for name, module in task.modules().items():
        tensors.update({f"module.{name}.{k}": v for k, v in module.state_dict().items()})
    for name, optimizer in task.optimizers().items():
        flat, groups = _flatten_optimizer(f"optim.{name}", optimizer)
        tensors.update(flat)
        meta[f"optim.{name}.groups"] = groups
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{index}"] = state
    save_tensors(path, tensors, meta)


def load_state(path: Path, task: TrainingTask) -> int:
    """Restore a saved state into ``task``; return its iteration. Refuses other settings by name."""
    return _load_state(path, task)[0]


def _load_state(path: Path, task: TrainingTask) -> tuple[int, dict[str, Any], int]:
    """:func:`load_state`, and the open log window: (iteration, window, window_steps)."""
    tensors, meta = load_tensors(path)
    if meta.get("kind") != "train_state" or meta.get("state_version") != STATE_VERSION:
        raise CheckpointError(f"{path}: not a training state of version {STATE_VERSION}; delete it to start afresh")
    saved, wanted = json.loads(meta["resume_key"]), json.loads(json.dumps(task.resume_key(), sort_keys=True, default=str))
    for key in sorted(set(saved) | set(wanted)):
        if saved.get(key) != wanted.get(key):
            raise ConfigError(f"{path}: cannot resume, the saved run has {key} = {saved.get(key)!r} but this run has "
                              f"{wanted.get(key)!r} (use the same settings, or delete the state to start afresh)")
    for name, module in task.modules().items():
        prefix = f"module.{name}."
        assign_state(module, {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}, str(path))
    for name, optimizer in task.optimizers().items():
        _restore_optimizer(f"optim.{name}", optimizer, tensors, meta[f"optim.{name}.groups"])
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(t for t in tensors if t.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    window_meta = json.loads(meta.get("log_window", '{"steps": 0, "keys": [], "figures": {}}'))
    figures = {**window_meta["figures"],
               **{k[len("window."):]: v for k, v in tensors.items() if k.startswith("window.")}}
    window = {key: figures[key] for key in window_meta["keys"]}   # in the order of the log's columns
    return int(meta["iteration"]), window, int(window_meta["steps"])


def _read_log(path: Path, upto: int) -> list[dict]:
    if not path.is_file() or upto == 0:
        return []
    import pandas as pd

    frame = pd.read_parquet(path)
    if "iteration" not in frame.columns:   # a log written before its first row
        return []
    return frame[frame["iteration"] <= upto].to_dict("records")


def write_log(path: Path, rows: list[dict]) -> None:
    import pandas as pd

    write_parquet(pd.DataFrame(rows), path)


# --- the loop --------------------------------------------------------------------------------
def fit(task: TrainingTask, out_dir: str | Path, *, resume: bool = True, checkpoint_every: int = 200,
        log_every: int = 1, stop_after: int | None = None, time_limit_s: float | None = None,
        budget_s: float | None = None, progress: bool = True) -> TrainResult:
    """Train ``task`` to ``task.total_iterations`` (module docstring); return what happened."""
    if checkpoint_every < 1 or log_every < 1:
        raise ConfigError(f"checkpoint_every and log_every must be >= 1, got {checkpoint_every}, {log_every}")
    if stop_after is not None and stop_after < 0 or any(t is not None and t <= 0 for t in (time_limit_s, budget_s)):
        raise ConfigError(f"stop_after must be >= 0, time_limit_s and budget_s > 0; got {stop_after}, "
                          f"{time_limit_s}, {budget_s}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state_path, log_path = out_dir / STATE_FILE, out_dir / LOG_FILE
    total = int(task.total_iterations)
    start, window, window_steps = _load_state(state_path, task) if (resume and state_path.is_file()) else (0, {}, 0)
    if start:
        log.info("%s: resuming from iteration %d of %d (%s)", task.name, start, total, state_path)
    rows = _read_log(log_path, start)
    end = total if stop_after is None else min(total, start + stop_after)
    task.begin(start)
    window_images = 0   # this call's images in the window (images_per_s)
    images = 0
    stopped_by = None
    started = window_started = time.perf_counter()
    iteration = start
    with tqdm(total=total, initial=start, desc=task.name, disable=not progress, dynamic_ncols=True,
              unit="it") as bar:
        while iteration < end:
            figures = task.step(iteration)
            iteration += 1
            window_steps += 1
            window_images += task.images_per_iteration
            images += task.images_per_iteration
            for key, value in figures.items():
                if torch.is_tensor(value):
                    value = value.detach().float()
                    window[key] = window[key].to(value.device) + value if key in window else value.clone()
                else:
                    window[key] = value
            bar.update(1)
            elapsed = time.perf_counter() - started
            over_budget = budget_s is not None and elapsed >= budget_s and iteration < end
            over_time = time_limit_s is not None and elapsed >= time_limit_s
            if iteration % log_every == 0 or iteration == total or over_budget:  # a cut window stays open (state)
                now = time.perf_counter()
                row = {"iteration": iteration, "seconds": now - started,
                       "images_per_s": window_images / max(1e-9, now - window_started)}
                for key, value in window.items():   # the one host sync per row
                    row[key] = float(value) / window_steps if torch.is_tensor(value) else value
                rows.append(row)
                bar.set_postfix({k: f"{v:.4g}" for k, v in row.items()
                                 if k not in ("iteration", "seconds") and isinstance(v, float)}, refresh=False)
                window, window_steps, window_images, window_started = {}, 0, 0, now
            if over_budget:
                stopped_by = "budget"
                break
            if over_time and iteration < end:
                stopped_by = "time"
                break
            if iteration % checkpoint_every == 0 and iteration < end:
                save_state(state_path, task, iteration, window, window_steps)
                write_log(log_path, rows)
    seconds = time.perf_counter() - started
    if stopped_by is None and iteration < total:
        stopped_by = "steps"
    save_state(state_path, task, iteration, window, window_steps)
    write_log(log_path, rows)
    task.trained_iterations = iteration
    model_path = task.save_model(out_dir) if iteration >= total or stopped_by == "budget" else None
    if stopped_by == "budget":
        log.info("%s: training budget spent at iteration %d of %d: model written to %s; rerun to train on",
                 task.name, iteration, total, model_path)
    elif stopped_by:
        log.info("%s: stopped at iteration %d of %d (%s budget); rerun to continue", task.name, iteration, total,
                 stopped_by)
    last = {k: v for k, v in (rows[-1] if rows else {}).items() if isinstance(v, (int, float))}
    return TrainResult(completed=iteration >= total, iteration=iteration, total_iterations=total,
                       stopped_by=stopped_by, seconds=seconds,
                       images_per_s=images / seconds if images and seconds > 0 else math.nan, last=last,
                       model_path=model_path, state_path=state_path, log_path=log_path)


def seeded_permutation_batch(seed: int, n: int, batch_size: int, iteration: int, per_epoch: int) -> torch.Tensor:
    """Indices of one batch: a seeded permutation per epoch, a function of the iteration only.

    Every batch is full: the last one of an epoch wraps around to the epoch's first indices (a
    batch of one breaks batch norm; a short batch would weigh its images more).
    """
    epoch, k = divmod(iteration, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return perm[(k * batch_size + torch.arange(batch_size)) % n]

