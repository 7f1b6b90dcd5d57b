"""Resumable training state: model, optimiser, step, random generators, config and log.

Written next to the output model as ``<stem>.train_state.pt`` (one file, written atomically,
so a run killed at any moment leaves either the previous or the new state) and read back with
``torch.load(weights_only=True)``: tensors, numbers, strings, lists and dicts only, no pickled code.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch

from ..errors import CheckpointError, ConfigError
from ..imageio import atomic_write_bytes
from .train_config import SegnetTrainConfig

STATE_VERSION = 1
#: Keys that may differ between a run and its resumption: they do not change the result.
RESUME_FREE_KEYS = frozenset({"num_workers", "checkpoint_every", "log_every", "eval_split"})


def state_path_for(out_path: str | os.PathLike) -> Path:
    """``segnet.safetensors`` -> ``segnet.train_state.pt`` (same folder)."""
    out_path = Path(out_path)
    return out_path.with_name(f"{out_path.stem}.train_state.pt")


def log_path_for(out_path: str | os.PathLike) -> Path:
    """``segnet.safetensors`` -> ``segnet.train_log.parquet`` (same folder)."""
    out_path = Path(out_path)
    return out_path.with_name(f"{out_path.stem}.train_log.parquet")


def save_train_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int,
                     config: SegnetTrainConfig, log_rows: list[dict]) -> None:
    """Write everything a resumed run needs to continue exactly where this one is."""
    state = {
        "version": STATE_VERSION,
        "step": step,
        "config": config.to_dict(),
        "model": {key: value.detach().cpu() for key, value in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "log": log_rows,
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_train_state(path: Path, config: SegnetTrainConfig) -> dict:
    """Read a saved state and check that it was made with the same ``config``.

    Raises CheckpointError for an unreadable file and ConfigError naming the first differing key
    when the settings differ (a resumed run must follow the same schedule); the keys in
    :data:`RESUME_FREE_KEYS` may differ.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many unrelated types for a damaged file
        raise CheckpointError(f"{path}: not a readable training state ({exc})") from exc
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise CheckpointError(f"{path}: expected training state version {STATE_VERSION}")
    saved, wanted = state["config"], config.to_dict()
    for key in sorted((set(saved) | set(wanted)) - RESUME_FREE_KEYS):
        if saved.get(key) != wanted.get(key):
            raise ConfigError(
                f"{path}: cannot resume, the saved run has {key} = {saved.get(key)!r} but this run has "
                f"{wanted.get(key)!r} (use the same config, or start afresh without --resume)"
            )
    return state


def restore_rng(state: dict) -> None:
    """Put the global torch (and CUDA) generators back where the saved run had them (dropout)."""
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] and torch.cuda.is_available() and len(state["cuda_rng"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
