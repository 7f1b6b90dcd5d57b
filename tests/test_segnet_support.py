"""Shared helpers of the segnet tests (no tests here): prepared directories and tiny configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from semlic.data.prepare import prepare_dataset
from semlic.data.synthetic import NUM_CLASSES, make_sample
from semlic.imageio import save_png

# A PSPNet small enough to train on one CPU thread in seconds.
TINY_MODEL = {
    "num_classes": NUM_CLASSES,
    "backbone": "resnet18",
    "base_channels": 8,
    "ppm_channels": 8,
    "head_channels": 16,
    "aux_channels": 8,
}


@pytest.fixture(autouse=True)
def one_thread():
    """Run on one thread (import into a test module to apply it there): on a small shared machine,
    two threads fight over the cores and run far slower than one."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def prepare_synthetic(out_dir: Path, size: int = 96, limit: int = 24) -> Path:
    """The builtin synthetic set through ``semlic.data.prepare``: train and val at size x size."""
    prepare_dataset("synthetic", None, out_dir, train_size=(size, size), splits=["train", "val"], limit=limit,
                    resize_splits=("train", "val"), show_progress=False)
    return out_dir


def write_samples(folder: Path, indices: range, size: tuple[int, int], with_labels: bool = True) -> list[Path]:
    """Synthetic samples written as ``folder/images/syn<i>.png`` (+ ``folder/labels``); image paths."""
    paths = []
    for index in indices:
        image, label = make_sample(index, seed=0, size=size)
        paths.append(folder / "images" / f"syn{index:04d}.png")
        save_png(paths[-1], image)
        if with_labels:
            save_png(folder / "labels" / f"syn{index:04d}.png", label)
    return paths


def random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
