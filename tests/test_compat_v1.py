"""Files written before the method interface (revision 397fdf4) still load and decode.

tests/fixtures/v1/README.md says how they were made: format-version-1 .sem files (DSSLIC, and
EDMS with a correction layer) and model files in the formats of that version (``semlic/1``
DSSLIC and SMapNet files, a ``semlic-segnet`` PSPNet file).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from semlic import format as fmt
from semlic.cli import main
from semlic.imageio import load_image
from semlic.methods import get_method
from semlic.model_files import ModelStore, load_model, read_metadata

FIXTURES = Path(__file__).parent / "fixtures" / "v1"


@pytest.fixture(scope="module")
def models():
    return {"dsslic": load_model(FIXTURES / "dsslic_tiny.safetensors"),
            "pspnet": load_model(FIXTURES / "pspnet_tiny.safetensors"),
            "smapnet": load_model(FIXTURES / "smapnet_tiny.safetensors")}


def test_model_files_of_the_earlier_formats_load(models):
    assert read_metadata(FIXTURES / "pspnet_tiny.safetensors")["format"] == "semlic-segnet"
    assert {name: type(model).registry_name for name, model in models.items()} == {
        "dsslic": "dsslic", "pspnet": "pspnet", "smapnet": "smapnet"}
    assert models["pspnet"].config.num_classes == 5 and models["dsslic"].config.label_nc == 5


@pytest.mark.parametrize("name", ["dsslic", "edms"])
@pytest.mark.numeric
def test_version_1_files_decode_to_what_their_encoder_reconstructed(models, name, bound):
    data = (FIXTURES / f"{name}_qp30.sem").read_bytes()
    sem = fmt.unpack(data)
    assert sem.version == 1 and sem.method == name and sem.header_bytes == 30
    method = get_method(name)
    recorded = json.loads((FIXTURES / "files.json").read_text())[name]
    assert method.layer_bits(sem) == recorded["layer_bits"] and len(data) == recorded["bytes"]
    decoded = method.decode(data, models)
    expected = load_image(FIXTURES / f"{name}_qp30_decoded.png")
    # Same weights and file; the networks' float arithmetic may differ in the last bits on
    # another CPU, so a pixel may round the other way: allow that, nothing more.
    difference = np.abs(decoded.astype(int) - expected)
    bound("max |decoded - recorded|", difference.max(), "<=", 2)
    bound("share of pixels decoded as recorded", (difference == 0).mean(), ">", 0.99)


def test_version_1_file_through_the_cli(tmp_path):
    out = tmp_path / "out.png"
    assert main(["decode", str(FIXTURES / "edms_qp30.sem"), str(out), "--models-dir", str(FIXTURES)]) == 0
    assert load_image(out).shape == (37, 61, 3)
    assert main(["info", str(FIXTURES / "dsslic_qp30.sem")]) == 0


def test_convert_model_rewrites_an_earlier_file_with_the_same_weights(tmp_path, models):
    target = tmp_path / "pspnet.safetensors"
    assert main(["convert-model", str(FIXTURES / "pspnet_tiny.safetensors"), str(target)]) == 0
    assert read_metadata(target)["format"] == "semlic/1" and read_metadata(target)["model"] == "pspnet"
    assert load_model(target).fingerprint == models["pspnet"].fingerprint
    store = ModelStore(dirs=[FIXTURES])
    assert store.names() == ("dsslic", "pspnet", "smapnet")
