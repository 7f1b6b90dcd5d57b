"""Segmentation metrics from a confusion matrix: IoU, mIoU, pixel and class accuracy.

Conventions (those of the PASCAL VOC / ADE20K benchmarks, accumulated over a whole set):

* ``confusion[t, p]`` counts pixels of ground-truth class t predicted as p; pixels whose
  ground truth is ``ignore_index`` are not counted.
* IoU_c = TP_c / (TP_c + FP_c + FN_c). A class absent from both the ground truth and the
  prediction has no IoU (NaN here, None in :meth:`SegmentationScores.to_dict`) and is left out
  of the mean: mIoU is the mean over classes that appear in either. A class predicted but not
  in the ground truth has IoU 0 and counts.
* pixel accuracy = sum_c TP_c / number of counted pixels.
* class accuracy_c = TP_c / (pixels of class c in the ground truth); the mean class accuracy
  averages over classes present in the ground truth.
A set with no counted pixel has NaN (None) everywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..errors import LabelMapError


def confusion_matrix(prediction: Tensor | np.ndarray, target: Tensor | np.ndarray, num_classes: int,
                     ignore_index: int = 255) -> Tensor:
    """K x K int64 confusion matrix (rows: ground truth, columns: prediction).

    ``prediction`` and ``target``: integer arrays of the same shape (any, e.g. N x H x W), on any
    device; the result is on the same device. Target values other than 0..K-1 and
    ``ignore_index``, or predictions outside 0..K-1, raise :class:`LabelMapError`.
    """
    prediction, target = torch.as_tensor(prediction), torch.as_tensor(target)
    if prediction.shape != target.shape:
        raise LabelMapError(
            f"prediction shape {tuple(prediction.shape)} differs from label shape {tuple(target.shape)}"
        )
    prediction, target = prediction.reshape(-1).long(), target.reshape(-1).long().to(prediction.device)
    counted = target != ignore_index
    target, prediction = target[counted], prediction[counted]
    for name, values in (("label", target), ("prediction", prediction)):
        if values.numel() and (int(values.min()) < 0 or int(values.max()) >= num_classes):
            raise LabelMapError(
                f"{name} values must be 0..{num_classes - 1} (or {ignore_index} = ignore), "
                f"found {int(values.min())}..{int(values.max())}"
            )
    counts = torch.bincount(target * num_classes + prediction, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


@dataclass(frozen=True)
class SegmentationScores:
    """Scores of one confusion matrix; per-class lists are indexed by class, NaN where undefined."""

    miou: float
    per_class_iou: list[float]
    pixel_accuracy: float
    mean_class_accuracy: float
    per_class_accuracy: list[float]
    pixels: int

    def to_dict(self) -> dict:
        """JSON-friendly dict: NaN becomes None."""

        def clean(value: float) -> float | None:
            return None if math.isnan(value) else float(value)

        return {
            "miou": clean(self.miou),
            "per_class_iou": [clean(v) for v in self.per_class_iou],
            "pixel_accuracy": clean(self.pixel_accuracy),
            "mean_class_accuracy": clean(self.mean_class_accuracy),
            "per_class_accuracy": [clean(v) for v in self.per_class_accuracy],
            "pixels": self.pixels,
        }


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


def scores_from_confusion(confusion: Tensor | np.ndarray) -> SegmentationScores:
    """IoU, mIoU, pixel accuracy and class accuracy of a confusion matrix (module conventions)."""
    counts = torch.as_tensor(confusion).detach().to("cpu", torch.float64).numpy()
    true_positives = np.diag(counts)
    label_pixels = counts.sum(axis=1)
    predicted_pixels = counts.sum(axis=0)
    union = label_pixels + predicted_pixels - true_positives
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, true_positives / union, np.nan)
        class_accuracy = np.where(label_pixels > 0, true_positives / label_pixels, np.nan)
    total = counts.sum()
    return SegmentationScores(
        miou=_nanmean(iou),
        per_class_iou=iou.tolist(),
        pixel_accuracy=float(true_positives.sum() / total) if total > 0 else math.nan,
        mean_class_accuracy=_nanmean(class_accuracy),
        per_class_accuracy=class_accuracy.tolist(),
        pixels=int(total),
    )
