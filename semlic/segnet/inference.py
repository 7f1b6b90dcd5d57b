"""Running a PSPNet over images at native size: batching by size, AMP on CUDA.

:func:`predict_labels` maps a batch of images to label maps; :func:`iter_predictions` reads the
samples of a prepared split with a DataLoader (``num_workers`` processes decode PNGs while the
model runs) and groups consecutive images of the same size into batches of up to
``batch_size`` (images of other sizes are never padded or resized).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from ..errors import ConfigError
from .prepared import NativeSizeSet, PreparedSample
from .pspnet import PSPNet


def resolve_device(device: str | torch.device) -> torch.device:
    """``torch.device`` for "cpu" / "cuda[:i]"; ConfigError if CUDA is asked for but absent."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was requested but torch sees no CUDA device")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device must be cpu or cuda, found {device}")
    return device


def autocast_for(device: torch.device) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on CUDA, nothing on CPU (CPU stays float32)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def place_model(model: PSPNet, device: torch.device) -> PSPNet:
    """Move ``model`` to ``device`` (channels-last memory format on CUDA), in eval mode."""
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model.eval()


def predict_labels(model: PSPNet, images: Tensor) -> Tensor:
    """N x 3 x H x W float images in [0, 1] (on the model's device) -> N x H x W uint8 labels.

    Puts the model in eval mode (batch statistics and dropout off).
    """
    model.eval()
    if images.device.type == "cuda":
        images = images.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast_for(images.device):
        logits = model(images)
    return logits.argmax(dim=1).to(torch.uint8)


@dataclass
class PredictedBatch:
    """Images of one size with their predictions (N x H x W uint8, on the model's device)."""

    ids: list[str]
    labels: list[Tensor | None]
    predictions: Tensor


def _first(items: list) -> tuple:
    return items[0]


def iter_predictions(model: PSPNet, samples: list[PreparedSample], device: torch.device, batch_size: int = 4,
                     num_workers: int = 0) -> Iterator[PredictedBatch]:
    """Predict every sample, in order, batching consecutive images of equal size."""
    loader = DataLoader(
        NativeSizeSet(samples), batch_size=1, collate_fn=_first, num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    pending: list[tuple[str, Tensor, Tensor | None]] = []

    def flush() -> PredictedBatch:
        images = torch.stack([image for _, image, _ in pending]).to(device, non_blocking=True)
        batch = PredictedBatch([i for i, _, _ in pending], [label for _, _, label in pending],
                               predict_labels(model, images))
        pending.clear()
        return batch

    for item in loader:
        if pending and (item[1].shape != pending[0][1].shape or len(pending) == batch_size):
            yield flush()
        pending.append(item)
    if pending:
        yield flush()
