"""Shared fixtures. Tests run on CPU with few threads (the GPU paths are exercised by the GPU study,
scripts/gpu_study, on a lent GPU machine, not by this suite)."""

from __future__ import annotations

import json
import operator
import os
from pathlib import Path

import numpy as np
import pytest
import torch

# SEMLIC_TEST_THREADS: the thread count of the tests that do not set their own (the margins
# benchmark varies it); tests that pin one thread keep theirs.
torch.set_num_threads(int(os.environ.get("SEMLIC_TEST_THREADS", min(2, os.cpu_count() or 1))))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SEMLIC_SHARED_DATA", REPO.parent / "shared" / "data"))


# --- figures made by training or float inference ---------------------------------------------
# A test marked `numeric` asserts a figure that training or float inference produced (a loss that
# falls, an mIoU, a decoded image within a tolerance). Such a figure moves with the CPU's kernels,
# the thread count and the seed, so each threshold is set from the spread measured by
# benchmarks/numeric_margins.py (reports/numeric_margins.md), which reruns these tests under other
# kernels, thread counts and seeds; `make test-kernels` (run by `make test`) reruns them under two
# other kernel settings so that a threshold tuned to one machine fails before it lands.
_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


@pytest.fixture(autouse=True)
def no_default_vgg_weights(monkeypatch, tmp_path_factory):
    """The trainings' ``vgg_weights: auto`` finds nothing, whatever this checkout's weights/ holds: a test's
    figures do not depend on whether someone ran ``semlic weights lpips_vgg`` (tests that want the VGG term
    name a file or patch this path themselves)."""
    from semlic.nn import losses

    monkeypatch.setattr(losses, "DEFAULT_VGG_WEIGHTS", tmp_path_factory.getbasetemp() / "no-vgg.safetensors")


@pytest.fixture
def seed() -> int:
    """The seed of a numeric test's training (SEMLIC_TEST_SEED, 0 unless the margins benchmark sets it)."""
    return int(os.environ.get("SEMLIC_TEST_SEED", "0"))


@pytest.fixture
def bound(request):
    """``bound(name, value, op, limit)`` asserts ``value op limit`` and records the figure.

    With SEMLIC_MARGINS_OUT set, every check appends one JSON line (test, name, value, op, limit)
    to that file (benchmarks/numeric_margins.py reads them) and a failed check fails the test at
    its end, so that the test's later figures are recorded too.
    """
    out = os.environ.get("SEMLIC_MARGINS_OUT")
    failed: list[str] = []

    def check(name: str, value: float, op: str, limit: float) -> None:
        value = float(value)
        message = f"{name}: {value:.6g} is not {op} {limit:.6g}"
        if not out:
            assert _OPS[op](value, limit), message
            return
        with open(out, "a") as handle:
            handle.write(json.dumps({"test": request.node.nodeid, "name": name, "value": value, "op": op,
                                     "limit": float(limit)}) + "\n")
        if not _OPS[op](value, limit):
            failed.append(message)

    yield check
    if failed:
        pytest.fail("; ".join(failed))


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
def every_models_dir(tmp_path_factory) -> Path:
    """Tiny random models of every registered method, saved as model files (semlic.fuzz.tiny_models)."""
    from semlic.fuzz import tiny_models
    from semlic.model_files import save_model

    root = tmp_path_factory.mktemp("every_models")
    for name, model in tiny_models().items():
        save_model(root / f"{name}.safetensors", model)
    return root


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
