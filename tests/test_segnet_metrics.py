"""Segmentation metrics against a hand-computed example with ignored pixels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from semlic.errors import LabelMapError
from semlic.segnet.metrics import confusion_matrix, scores_from_confusion

# 5 classes; class 3 is predicted once but never in the ground truth; class 4 appears nowhere.
TARGET = np.array([[0, 0, 1, 255],
                   [0, 1, 1, 2],
                   [255, 2, 2, 2]], dtype=np.uint8)
PREDICTION = np.array([[0, 1, 1, 0],
                       [0, 1, 2, 2],
                       [1, 2, 2, 3]], dtype=np.uint8)
# Counted pixels (target != 255), as (truth, prediction): (0,0) x2, (0,1), (1,1) x2, (1,2), (2,2) x3, (2,3).
EXPECTED_CONFUSION = [[2, 1, 0, 0, 0],
                      [0, 2, 1, 0, 0],
                      [0, 0, 3, 1, 0],
                      [0, 0, 0, 0, 0],
                      [0, 0, 0, 0, 0]]


def test_confusion_matrix_skips_ignored_pixels():
    confusion = confusion_matrix(PREDICTION, TARGET, num_classes=5, ignore_index=255)
    assert confusion.dtype == torch.int64
    assert confusion.tolist() == EXPECTED_CONFUSION


def test_scores_of_the_hand_example():
    scores = scores_from_confusion(confusion_matrix(torch.from_numpy(PREDICTION), torch.from_numpy(TARGET), 5))
    # IoU = TP / (truth + predicted - TP): 2/(3+2-2), 2/(3+3-2), 3/(4+4-3), 0/(0+1-0), absent
    expected_iou = [2 / 3, 1 / 2, 3 / 5, 0.0]
    assert scores.per_class_iou[:4] == pytest.approx(expected_iou)
    assert math.isnan(scores.per_class_iou[4])
    assert scores.miou == pytest.approx(53 / 120)  # mean of the four defined IoUs (class 3 counts as 0)
    assert scores.pixel_accuracy == pytest.approx(7 / 10)
    assert scores.mean_class_accuracy == pytest.approx((2 / 3 + 2 / 3 + 3 / 4) / 3)  # classes in the truth
    assert scores.pixels == 10
    as_dict = scores.to_dict()
    assert as_dict["per_class_iou"][4] is None and as_dict["per_class_accuracy"][3] is None
    assert as_dict["miou"] == pytest.approx(53 / 120)


def test_confusion_accumulates_over_batches():
    both = confusion_matrix(np.stack([PREDICTION, TARGET]), np.stack([TARGET, TARGET]), 5)
    perfect = confusion_matrix(TARGET, TARGET, 5)
    assert torch.equal(both, torch.tensor(EXPECTED_CONFUSION) + perfect)
    assert torch.diag(perfect).tolist() == [3, 3, 4, 0, 0] and perfect.sum() == 10


def test_all_ignored_gives_undefined_scores():
    scores = scores_from_confusion(confusion_matrix(PREDICTION, np.full_like(TARGET, 255), 5))
    assert scores.pixels == 0 and math.isnan(scores.miou) and math.isnan(scores.pixel_accuracy)
    assert scores.to_dict()["miou"] is None


def test_out_of_range_values_are_refused():
    bad_target = TARGET.copy()
    bad_target[0, 0] = 7
    with pytest.raises(LabelMapError, match="label values must be 0..4"):
        confusion_matrix(PREDICTION, bad_target, 5)
    with pytest.raises(LabelMapError, match="prediction values"):
        confusion_matrix(PREDICTION, TARGET, 3)
    with pytest.raises(LabelMapError, match="shape"):
        confusion_matrix(PREDICTION[:2], TARGET, 5)
