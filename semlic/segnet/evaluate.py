"""Evaluating a PSPNet on a prepared split at native size (single scale, no flipping)."""

from __future__ import annotations

import os
import time

import torch

from ..errors import DatasetError
from .inference import iter_predictions, place_model, resolve_device
from .metrics import confusion_matrix, scores_from_confusion
from .prepared import list_prepared
from .pspnet import PSPNet


def evaluate_segnet(model: PSPNet, prepared_dir: str | os.PathLike, split: str, device: str | torch.device = "cpu",
                    batch_size: int = 1, num_workers: int = 0) -> dict:
    """Score ``model`` on the labelled images of ``split``, accumulating one confusion matrix.

    Returns a JSON-friendly dict: ``miou``, ``per_class_iou`` (None for classes absent from both
    ground truth and prediction), ``pixel_accuracy``, ``mean_class_accuracy``,
    ``per_class_accuracy``, ``pixels``, ``images`` and ``images_per_s`` (inference throughput
    including PNG decoding). Conventions: :mod:`semlic.segnet.metrics`.
    """
    device = resolve_device(device)
    samples = [sample for sample in list_prepared(prepared_dir, split) if sample.label_path is not None]
    if not samples:
        raise DatasetError(f"{prepared_dir}: split {split!r} has no label maps to evaluate against")
    was_training = model.training
    model = place_model(model, device)
    num_classes, ignore_index = model.config.num_classes, model.config.ignore_index
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    started = time.perf_counter()
    for batch in iter_predictions(model, samples, device, batch_size, num_workers):
        labels = torch.stack(batch.labels).to(device)
        confusion += confusion_matrix(batch.predictions, labels, num_classes, ignore_index)
    confusion = confusion.cpu()  # waits for the device
    elapsed = time.perf_counter() - started
    model.train(was_training)
    result = scores_from_confusion(confusion).to_dict()
    result.update(images=len(samples), images_per_s=len(samples) / elapsed)
    return result
