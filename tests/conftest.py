"""Shared fixtures. Tests run on CPU with few threads; GPU tests are marked and skipped."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SEMLIC_SHARED_DATA", REPO.parent / "shared" / "data"))


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> Path:
    """A tiny DSSLIC generator (label_nc 5), randomly initialised and saved as a model file."""
    from semlic.methods.dsslic import DSSLIC, dsslic_config
    from semlic.model_files import save_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "dsslic.safetensors"
    save_model(path, DSSLIC(dsslic_config("tiny", label_nc=5)))
    return path


@pytest.fixture(scope="session")
def tiny_model(tiny_model_path):
    from semlic.model_files import load_model

    return load_model(tiny_model_path)


def make_image(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth image with structure (not noise) and a matching 5-class map."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    seg = ((xx / max(w, 1) * 3).astype(np.uint8) + (yy > h / 2)).astype(np.uint8) % 5
    base = np.stack([120 + 80 * np.sin(xx / 9), 100 + 60 * np.cos(yy / 7), 40 * seg], -1)
    image = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
    return image, seg
