"""The DSSLIC codec: the decoder rebuilds the encoder's output from the file alone."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from semlic import errors
from semlic import format as fmt
from semlic.methods import get_method
from semlic.methods.dsslic import DSSLIC, dsslic_config
from semlic.layered_codec import ROLE_RESIDUAL
from semlic.model_files import state_fingerprint
from tests.conftest import make_image

DSSLIC_METHOD = get_method("dsslic")


def encode(image, seg, model, qp=27, **options):
    return DSSLIC_METHOD.encode(image, {"dsslic": model}, qp, segmentation=seg, **options)


@pytest.mark.parametrize("size", [(1, 1), (7, 13), (513, 769), (768, 512)])
def test_round_trip_from_the_file_alone(tiny_model, size):
    image, seg = make_image(*size)
    result = encode(image, seg, tiny_model, 27, lossless="png")
    reconstruction, prediction = DSSLIC_METHOD.decode_with_prediction(result.data, {"dsslic": tiny_model})
    assert reconstruction.shape == image.shape and reconstruction.dtype == np.uint8
    np.testing.assert_array_equal(prediction, result.extras["prediction"])
    np.testing.assert_array_equal(reconstruction, result.reconstruction)


def test_residual_improves_and_qp_trades_bits(tiny_model):
    image, seg = make_image(64, 96)
    no_res = encode(image, seg, tiny_model, None, lossless="png")
    coarse = encode(image, seg, tiny_model, 40, lossless="png")
    fine = encode(image, seg, tiny_model, 10, lossless="png")
    err = [np.abs(r.reconstruction.astype(int) - image).mean() for r in (no_res, coarse, fine)]
    assert err[0] > err[1] > err[2]
    assert len(no_res.data) < len(coarse.data) < len(fine.data)
    assert fmt.unpack(no_res.data).layer(ROLE_RESIDUAL) is None
    assert [r.extras["prediction"].tobytes() for r in (coarse, fine)] == [no_res.reconstruction.tobytes()] * 2


def test_encode_many_equals_one_encode_per_qp(tiny_model):
    image, seg = make_image(40, 56, seed=4)
    many = DSSLIC_METHOD.encode_many(image, {"dsslic": tiny_model}, [40, 22, None], segmentation=seg)
    assert [r.data for r in many] == [encode(image, seg, tiny_model, qp).data for qp in (40, 22, None)]
    assert [r.quality for r in many] == [40, 22, None] and all(r.seconds > 0 for r in many)


def test_bits_of_header_and_layers_add_up_to_the_file(tiny_model):
    image, seg = make_image(40, 56)
    result = encode(image, seg, tiny_model, 30)
    assert sum(result.layer_bits.values()) == 8 * len(result.data)
    assert result.layer_bits["header"] == 8 * 31  # 21 fixed bytes + the 6-byte method section + the CRC
    assert set(result.layer_bits) == {"header", "segmentation", "compact", "residual"}


def test_best_lossless_picks_the_smallest(tiny_model):
    image, seg = make_image(48, 48)
    sizes = {name: len(encode(image, seg, tiny_model, None, lossless=name).data)
             for name in ("png", "webp_lossless", "jxl_lossless")}
    best = len(encode(image, seg, tiny_model, None, lossless="best").data)
    assert best <= min(sizes.values())


def test_wrong_model_is_refused(tiny_model):
    image, seg = make_image(16, 16)
    data = encode(image, seg, tiny_model, 30).data
    torch.manual_seed(1)
    other = DSSLIC(dsslic_config("tiny", label_nc=5)).eval()
    other.fingerprint = state_fingerprint(other.state_dict())
    with pytest.raises(errors.FingerprintMismatchError, match="load the model file"):
        DSSLIC_METHOD.decode(data, {"dsslic": other})
    with pytest.raises(errors.MissingModelError, match="needs the model"):
        DSSLIC_METHOD.decode(data, {})


def test_bad_inputs(tiny_model):
    image, seg = make_image(16, 16)
    with pytest.raises(errors.ConfigError, match="does not match"):
        encode(image, seg[:8], tiny_model)
    with pytest.raises(errors.ConfigError, match="label_nc"):
        encode(image, seg + 5, tiny_model)
    with pytest.raises(errors.ConfigError, match="unknown option"):
        encode(image, seg, tiny_model, chromas="444")
    with pytest.raises(errors.ConfigError, match="0..51"):
        encode(image, seg, tiny_model, 60)
    with pytest.raises(errors.ConfigError, match="segmentation map"):
        encode(image, None, tiny_model)


def test_decoding_in_a_fresh_process(tiny_model, tiny_model_path, tmp_path):
    image, seg = make_image(37, 61, seed=3)
    result = encode(image, seg, tiny_model, 22)
    sem = tmp_path / "x.sem"
    sem.write_bytes(result.data)
    out = tmp_path / "x.npy"
    script = ("import sys, numpy as np, torch; torch.set_num_threads(2);"
              "from semlic.model_files import load_model; from semlic.methods import get_method;"
              "m = {'dsslic': load_model(sys.argv[1])};"
              "np.save(sys.argv[3], get_method('dsslic').decode(open(sys.argv[2], 'rb').read(), m))")
    subprocess.run([sys.executable, "-c", script, str(tiny_model_path), str(sem), str(out)], check=True)
    np.testing.assert_array_equal(np.load(out), result.reconstruction)
