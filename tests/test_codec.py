"""The DSSLIC codec: the decoder rebuilds the encoder's output from the file alone."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from semlic import codec, errors
from semlic import format as fmt
from semlic.checkpoint import state_fingerprint
from semlic.models import DSSLIC, dsslic_config
from tests.conftest import make_image


@pytest.mark.parametrize("size", [(1, 1), (7, 13), (513, 769), (768, 512)])
def test_round_trip_from_the_file_alone(tiny_model, size):
    image, seg = make_image(*size)
    result = codec.encode(image, seg, tiny_model, residual_qp=27, lossless="png")
    reconstruction, prediction = codec.decode(result.data, tiny_model, return_prediction=True)
    assert reconstruction.shape == image.shape and reconstruction.dtype == np.uint8
    np.testing.assert_array_equal(prediction, result.prediction)
    np.testing.assert_array_equal(reconstruction, result.reconstruction)


def test_residual_improves_and_qp_trades_bits(tiny_model):
    image, seg = make_image(64, 96)
    no_res = codec.encode(image, seg, tiny_model, residual_qp=None, lossless="png")
    coarse = codec.encode(image, seg, tiny_model, residual_qp=40, lossless="png")
    fine = codec.encode(image, seg, tiny_model, residual_qp=10, lossless="png")
    err = [np.abs(r.reconstruction.astype(int) - image).mean() for r in (no_res, coarse, fine)]
    assert err[0] > err[1] > err[2]
    assert len(no_res.data) < len(coarse.data) < len(fine.data)
    assert fmt.unpack(no_res.data).layer(fmt.ROLE_RESIDUAL) is None


def test_bits_of_header_and_layers_add_up_to_the_file(tiny_model):
    image, seg = make_image(40, 56)
    result = codec.encode(image, seg, tiny_model, residual_qp=30)
    assert sum(result.layer_bits.values()) == 8 * len(result.data)
    assert set(result.layer_bits) == {"header", "segmentation", "compact", "residual"}


def test_best_lossless_picks_the_smallest(tiny_model):
    image, seg = make_image(48, 48)
    sizes = {name: len(codec.encode(image, seg, tiny_model, None, lossless=name).data)
             for name in ("png", "webp_lossless", "jxl_lossless")}
    best = len(codec.encode(image, seg, tiny_model, None, lossless="best").data)
    assert best <= min(sizes.values())


def test_wrong_model_is_refused(tiny_model):
    image, seg = make_image(16, 16)
    data = codec.encode(image, seg, tiny_model, 30).data
    torch.manual_seed(1)
    other = DSSLIC(dsslic_config("tiny", label_nc=5)).eval()
    other.fingerprint = state_fingerprint(other.state_dict())
    with pytest.raises(errors.FingerprintMismatchError, match="load the matching checkpoint"):
        codec.decode(data, other)


def test_bad_inputs(tiny_model):
    image, seg = make_image(16, 16)
    with pytest.raises(errors.ConfigError, match="does not match"):
        codec.encode(image, seg[:8], tiny_model)
    with pytest.raises(errors.ConfigError, match="label_nc"):
        codec.encode(image, seg + 5, tiny_model)


def test_decoding_in_a_fresh_process(tiny_model, tiny_model_path, tmp_path):
    image, seg = make_image(37, 61, seed=3)
    result = codec.encode(image, seg, tiny_model, 22)
    sem = tmp_path / "x.sem"
    sem.write_bytes(result.data)
    out = tmp_path / "x.npy"
    script = ("import sys, numpy as np, torch; torch.set_num_threads(2);"
              "from semlic.training import load_dsslic; from semlic.codec import decode;"
              "m = load_dsslic(sys.argv[1]); np.save(sys.argv[3], decode(open(sys.argv[2], 'rb').read(), m))")
    subprocess.run([sys.executable, "-c", script, str(tiny_model_path), str(sem), str(out)], check=True)
    np.testing.assert_array_equal(np.load(out), result.reconstruction)
