"""PSPNet checkpoints: one safetensors file holding the weights and, in its metadata, the config.

Metadata keys (all strings, as safetensors requires): ``format`` = "semlic-segnet",
``format_version`` = "1", ``architecture`` = "pspnet", ``config`` = the JSON of
:meth:`PSPNetConfig.to_dict`. Every problem (missing file, not a safetensors file, another
architecture, a missing tensor, a tensor of the wrong shape) raises
:class:`~semlic.errors.CheckpointError` naming the file, the tensor and the shapes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
from torch import Tensor, nn

from ..errors import CheckpointError, ConfigError
from ..imageio import atomic_write_bytes
from .pspnet import PSPNet, PSPNetConfig

FORMAT_NAME = "semlic-segnet"
FORMAT_VERSION = "1"
_MAX_LISTED = 5


def _shape(tensor: Tensor) -> tuple[int, ...]:
    return tuple(tensor.shape)


def assign_state_dict(
    module: nn.Module, state: dict[str, Tensor], source: str, source_name: Callable[[str], str] | None = None
) -> None:
    """Load ``state`` into ``module`` after checking that keys and shapes match exactly.

    ``source_name`` maps the module's key to the name the tensor has in the source file's layout,
    so a converted checkpoint's errors name both. BatchNorm ``num_batches_tracked`` counters may be
    absent (older PyTorch did not save them); everything else must be present, of the expected
    shape, and nothing may be left over. Raises :class:`CheckpointError` listing the problems.
    """
    name_of = source_name or (lambda key: key)
    expected = module.state_dict()
    problems = []
    for key, target in expected.items():
        label = f"'{name_of(key)}' (for '{key}')" if name_of(key) != key else f"'{key}'"
        if key not in state:
            if not key.endswith("num_batches_tracked"):
                problems.append(f"missing tensor {label}, expected shape {_shape(target)}")
        elif _shape(state[key]) != _shape(target):
            problems.append(f"tensor {label} has shape {_shape(state[key])}, expected {_shape(target)}")
    for key in sorted(set(state) - set(expected)):
        problems.append(f"unexpected tensor '{name_of(key)}' of shape {_shape(state[key])}")
    if problems:
        more = f" (and {len(problems) - _MAX_LISTED} more)" if len(problems) > _MAX_LISTED else ""
        raise CheckpointError(f"{source}: does not fit the model: " + "; ".join(problems[:_MAX_LISTED]) + more)
    complete = {key: state.get(key, value) for key, value in expected.items()}
    module.load_state_dict(complete, strict=True)


def save_segnet(model: PSPNet, path: str | os.PathLike) -> None:
    """Write the model's weights and config to ``path`` (safetensors, atomically)."""
    tensors = {key: value.detach().to("cpu").contiguous() for key, value in model.state_dict().items()}
    metadata = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "architecture": "pspnet",
        "config": json.dumps(model.config.to_dict(), sort_keys=True),
    }
    atomic_write_bytes(path, safetensors_save(tensors, metadata=metadata))


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    data = path.read_bytes()
    try:
        header_length = int.from_bytes(data[:8], "little")
        if len(data) < 8 + header_length:
            raise ValueError(f"header declares {header_length} bytes but the file has {len(data)}")
        metadata = json.loads(data[8 : 8 + header_length]).get("__metadata__") or {}
        tensors = safetensors_load(data)
    except Exception as exc:  # safetensors raises its own, untyped errors
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
    return tensors, metadata


def read_segnet_config(path: str | os.PathLike) -> PSPNetConfig:
    """The :class:`PSPNetConfig` stored in a checkpoint's metadata."""
    return _config_from_metadata(Path(path), _read_safetensors(Path(path))[1])


def _config_from_metadata(path: Path, metadata: dict[str, str]) -> PSPNetConfig:
    if metadata.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path}: expected a {FORMAT_NAME} checkpoint, found format {metadata.get('format')!r}")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: expected checkpoint format version {FORMAT_VERSION}, found {metadata.get('format_version')!r}"
        )
    if metadata.get("architecture") != "pspnet":
        raise CheckpointError(f"{path}: expected architecture 'pspnet', found {metadata.get('architecture')!r}")
    try:
        return PSPNetConfig.from_dict(json.loads(metadata["config"]))
    except (KeyError, json.JSONDecodeError, TypeError, ConfigError) as exc:
        raise CheckpointError(f"{path}: the stored model config is missing or invalid ({exc})") from exc


def load_segnet(path: str | os.PathLike, device: str | torch.device = "cpu") -> PSPNet:
    """Build the PSPNet a checkpoint describes, load its weights, move it to ``device``, eval mode."""
    path = Path(path)
    tensors, metadata = _read_safetensors(path)
    model = PSPNet(_config_from_metadata(path, metadata))
    assign_state_dict(model, tensors, source=str(path))
    return model.to(device).eval()
