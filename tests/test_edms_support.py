"""Shared helpers of the EDMS tests (no tests here): tiny PSPNet / SMapNet files and a small data set."""

from __future__ import annotations

from pathlib import Path

import torch

from semlic.imageio import save_png
from semlic.methods.edms import SMapNet, smapnet_config
from semlic.model_files import save_model
from semlic.segnet import PSPNet, PSPNetConfig
from tests.conftest import make_image

# Five classes, like the tiny DSSLIC of tests/conftest.py (label_nc 5).
TINY_SEGNET = {"num_classes": 5, "backbone": "resnet18", "base_channels": 8, "ppm_channels": 8,
               "head_channels": 16, "aux_channels": 8}


def save_tiny_segnet(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    save_model(path, PSPNet(PSPNetConfig(**TINY_SEGNET)).eval())
    return path


def save_tiny_smapnet(path: Path, seed: int = 0, num_classes: int = 5) -> Path:
    torch.manual_seed(seed)
    config = smapnet_config("tiny", num_classes=num_classes, recursions=3)
    save_model(path, SMapNet(config))
    return path


def write_prepared(root: Path, count: int = 4, size: int = 32, split: str = "train") -> tuple[Path, Path]:
    """``root/<split>/images/<id>.png`` (no manifest) and reference maps ``root/refs/<id>.png``."""
    for index in range(count):
        image, seg = make_image(size, size, seed=index)
        save_png(root / split / "images" / f"im{index:02d}.png", image)
        save_png(root / "refs" / f"im{index:02d}.png", seg)
    return root, root / "refs"
