"""EDMS agreement: the sparse correction layer carries the encoder's class at near-tie pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from semlic import errors
from semlic import format as fmt
from semlic.methods import get_method
from semlic.methods.edms import codec as edms_codec
from semlic.sparse import SparseLabelCodec
from tests.conftest import make_image
from tests.test_edms import edms_decode, edms_encode, edms_models, edms_paths  # noqa: F401  (fixtures)


def test_sparse_codec_round_trip_and_size():
    labels = np.zeros((300, 200), np.uint8)
    labels[5, 7], labels[150, 0], labels[299, 199] = 3, 1, 250
    codec_ = SparseLabelCodec()
    data = codec_.encode(labels)
    assert len(data) < 30
    np.testing.assert_array_equal(codec_.decode(data), labels)
    dense = np.random.default_rng(0).integers(0, 9, (40, 30)).astype(np.uint8)
    np.testing.assert_array_equal(codec_.decode(codec_.encode(dense)), dense)


def test_sparse_codec_refuses_damage():
    codec_ = SparseLabelCodec()
    data = codec_.encode(np.eye(8, dtype=np.uint8))
    with pytest.raises(errors.LayerError):
        codec_.decode(data[:-3])
    import zlib

    with pytest.raises(errors.LayerError, match="beyond the limits"):
        codec_.decode(zlib.compress(bytes([0xFF, 0xFF, 0x03, 0x01, 0x00])))  # 65535 x 1 declared
    with pytest.raises(errors.LayerError, match="outside the map"):
        codec_.decode(zlib.compress(bytes([2, 2, 1, 9, 1])))


def test_correction_overrides_the_decoder_map(tiny_model, edms_models, monkeypatch):  # noqa: F811
    segnet, smapnet = edms_models
    image, seg = make_image(32, 40, seed=4)
    # A huge tau guards every pixel: the decoder's own map no longer matters.
    result = edms_encode(image, seg, tiny_model, 30, method="edms", segnet=segnet, smapnet=smapnet,
                         agreement_tau=1e9)
    sem = fmt.unpack(result.data)
    assert [get_method("edms").role_name(lay.role) for lay in sem.layers] == ["compact", "correction", "residual"]
    assert "correction" in result.layer_bits
    # The decoder's own scores made useless (all classes tied): the correction alone decides the map.
    monkeypatch.setattr(edms_codec, "matched_scores", lambda *a, **k: torch.zeros(1, 5, 32, 40))
    decoded = edms_decode(result.data, tiny_model, segnet, smapnet)
    np.testing.assert_array_equal(decoded, result.reconstruction)


def test_no_correction_layer_when_no_pixel_is_near_a_tie(tiny_model, edms_models):  # noqa: F811
    segnet, smapnet = edms_models
    image, seg = make_image(32, 40, seed=4)
    result = edms_encode(image, seg, tiny_model, 30, method="edms", segnet=segnet, smapnet=smapnet,
                         agreement_tau=1e-30)
    assert "correction" not in result.layer_bits
