"""``import semlic.pillow``: Image.open reads .sem files with the models of a models directory."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from .conftest import make_image


@pytest.fixture()
def sem_file(tmp_path, tiny_model, tiny_model_path):
    """A DSSLIC file of a 40x56 image, the models directory holding its model, and what decode gives."""
    import shutil

    from semlic.methods import get_method

    image, seg = make_image(40, 56)
    method = get_method("dsslic")
    result = method.encode(image, {"dsslic": tiny_model}, 30, segmentation=seg)
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(tiny_model_path, models / "dsslic.safetensors")
    path = tmp_path / "photo.sem"
    path.write_bytes(result.data)
    return path, models, result


@pytest.fixture()
def plugin(monkeypatch):
    import semlic.pillow as plugin

    monkeypatch.delenv(plugin.MODELS_ENV, raising=False)
    plugin.set_models_dir(None)
    yield plugin
    plugin.set_models_dir(None)


def test_image_open_decodes_a_sem_file(sem_file, plugin):
    path, models, result = sem_file
    plugin.set_models_dir(models)
    with Image.open(path) as im:
        assert im.format == "SEMLIC" and im.size == (56, 40) and im.mode == "RGB"
        assert im.info["semlic_method"] == "dsslic"
        assert im.info["bpp"] == pytest.approx(8 * path.stat().st_size / (56 * 40))
        pixels = np.asarray(im)
    assert np.array_equal(pixels, result.reconstruction)   # what the encoder saw, bit for bit
    # through the environment variable, and converted / saved like any image
    plugin.set_models_dir(None)
    import os

    os.environ[plugin.MODELS_ENV] = str(models)
    try:
        with Image.open(path) as im:
            im.save(path.with_suffix(".png"))
        assert np.array_equal(np.asarray(Image.open(path.with_suffix(".png"))), result.reconstruction)
    finally:
        del os.environ[plugin.MODELS_ENV]


def test_missing_or_wrong_models_are_named(sem_file, plugin, tmp_path):
    from semlic.errors import FingerprintMismatchError, MissingModelError
    from semlic.methods.dsslic import DSSLIC, dsslic_config
    from semlic.model_files import save_model

    path, models, _ = sem_file
    with Image.open(path) as im, pytest.raises(MissingModelError, match="SEMLIC_MODELS_DIR"):
        im.load()   # opening needs no model; the pixels do
    empty = tmp_path / "empty"
    empty.mkdir()
    plugin.set_models_dir(empty)
    with Image.open(path) as im, pytest.raises(MissingModelError, match="no model file of dsslic below"):
        im.load()
    other = tmp_path / "other"
    other.mkdir()
    torch.manual_seed(1)
    save_model(other / "dsslic.safetensors", DSSLIC(dsslic_config("tiny", label_nc=5)))
    plugin.set_models_dir(other)
    with Image.open(path) as im, pytest.raises(FingerprintMismatchError, match="other"):
        im.load()


def test_a_damaged_file_raises_its_format_error(sem_file, plugin, tmp_path):
    from PIL import UnidentifiedImageError

    from semlic.errors import FormatError

    path, models, _ = sem_file
    plugin.set_models_dir(models)
    truncated = tmp_path / "truncated.sem"
    truncated.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(FormatError):
        Image.open(truncated)
    flipped = bytearray(path.read_bytes())
    flipped[len(flipped) // 2] ^= 0xFF
    (tmp_path / "flipped.sem").write_bytes(bytes(flipped))
    with pytest.raises(FormatError):
        Image.open(tmp_path / "flipped.sem")
    (tmp_path / "not.sem").write_bytes(b"not an image at all")
    with pytest.raises(UnidentifiedImageError):   # not ours: Pillow's own answer
        Image.open(tmp_path / "not.sem")
