"""Model files: safetensors weights with a JSON config in the metadata, and fingerprints.

A model file holds the weights (no pickle) and, in the safetensors metadata, ``model``
(the registry name), ``config`` (JSON) and ``format`` (``semlic/1``). The fingerprint of a
model is the first 8 bytes of a SHA-256 over its state dict (names, dtypes, shapes, bytes in
sorted order): a .sem file records it and decoding refuses other weights.

Training state (optimiser moments, iteration) is stored the same way: optimiser tensors are
flattened to ``<prefix>.<param index>.<key>`` and the parameter groups go to the metadata.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import CheckpointError

FORMAT = "semlic/1"


def state_fingerprint(state: dict[str, torch.Tensor]) -> bytes:
    """8-byte SHA-256 fingerprint of a state dict (device and memory layout independent)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.digest()[:8]


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Atomic safetensors write (temporary file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    save_file(cpu, str(tmp), metadata={"format": FORMAT, **metadata})
    os.replace(tmp, path)


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model file {path} does not exist")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            metadata = dict(fh.metadata() or {})
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from exc
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path}: expected a semlic model file ({FORMAT}), found format {metadata.get('format')!r}")
    return tensors, metadata


def save_model(path: str | os.PathLike, model: torch.nn.Module, name: str, config: dict, extra: dict | None = None) -> bytes:
    """Save ``model`` with its registry name and config; return its fingerprint."""
    state = model.state_dict()
    fingerprint = state_fingerprint(state)
    meta = {"model": name, "config": json.dumps(config, sort_keys=True), "fingerprint": fingerprint.hex()}
    meta.update({k: json.dumps(v, sort_keys=True) for k, v in (extra or {}).items()})
    save_tensors(path, state, meta)
    Path(path).with_suffix(".json").write_text(json.dumps({"model": name, "config": config, **(extra or {})},
                                                          indent=2, sort_keys=True) + "\n")
    return fingerprint


def load_state(path: str | os.PathLike, expected_model: str) -> tuple[dict[str, torch.Tensor], dict, dict[str, str]]:
    """Read a model file made by :func:`save_model`: (state dict, config, raw metadata)."""
    tensors, meta = load_tensors(path)
    if meta.get("model") != expected_model:
        raise CheckpointError(f"{path}: expected a {expected_model!r} model, found {meta.get('model')!r}")
    try:
        config = json.loads(meta["config"])
    except (KeyError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: model config missing or unreadable") from exc
    return tensors, config, meta


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a state dict strictly, with a message naming the first mismatch."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{source}: weights do not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    for k, v in expected.items():
        if state[k].shape != v.shape:
            raise CheckpointError(f"{source}: {k} has shape {tuple(state[k].shape)}, the model expects {tuple(v.shape)}")
    model.load_state_dict(state)


def flatten_optimizer(prefix: str, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], str]:
    """Optimiser state -> (tensors named ``prefix.<index>.<key>``, JSON of param groups)."""
    sd = optimizer.state_dict()
    tensors = {}
    for index, state in sd["state"].items():
        for key, value in state.items():
            tensors[f"{prefix}.{index}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return tensors, json.dumps(sd["param_groups"])


def restore_optimizer(prefix: str, optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups_json: str) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if not name.startswith(prefix + "."):
            continue
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(groups_json)})
