"""The EDMS codec: no segmentation layer; the decoder derives the encoder's map from c^ alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from semlic import codec, edms, errors
from semlic import format as fmt
from semlic.cli import main
from semlic.imageio import load_image, save_png
from semlic.segnet import load_segnet
from semlic.smapnet_training import load_smapnet
from semlic.training import load_dsslic
from tests.conftest import make_image
from tests.test_edms_support import save_tiny_segnet, save_tiny_smapnet


@pytest.fixture(scope="module")
def edms_paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("edms_models")
    return save_tiny_segnet(root / "segnet.safetensors"), save_tiny_smapnet(root / "smapnet.safetensors")


@pytest.fixture(scope="module")
def edms_models(edms_paths):
    return load_segnet(edms_paths[0]), load_smapnet(edms_paths[1])


@pytest.mark.parametrize("method", ["edms", "edms_noenh"])
def test_file_has_no_segmentation_layer_and_decodes_exactly(tiny_model, edms_models, method):
    segnet, smapnet = edms_models
    image, seg = make_image(37, 61, seed=2)
    result = codec.encode(image, seg, tiny_model, 27, lossless="png", method=method, segnet=segnet, smapnet=smapnet,
                          agreement_tau=0)
    sem = fmt.unpack(result.data)
    assert sem.method == method and [lay.role_name for lay in sem.layers] == ["compact", "residual"]
    assert set(result.layer_bits) == {"header", "compact", "residual"}
    assert result.matched_segmentation.shape == sem.padded_size and result.matched_segmentation.max() < 5
    reconstruction, prediction = codec.decode(result.data, tiny_model, return_prediction=True, segnet=segnet,
                                              smapnet=smapnet)
    np.testing.assert_array_equal(prediction, result.prediction)
    np.testing.assert_array_equal(reconstruction, result.reconstruction)


def test_file_is_smaller_than_dsslic_by_the_segmentation_layer(tiny_model, edms_models):
    image, seg = make_image(40, 48, seed=1)
    dsslic = codec.encode(image, seg, tiny_model, 30, lossless="png")
    noenh = codec.encode(image, seg, tiny_model, 30, lossless="png", method="edms_noenh", segnet=edms_models[0],
                         agreement_tau=0)
    assert dsslic.layer_bits["compact"] == noenh.layer_bits["compact"]
    assert len(dsslic.data) - len(noenh.data) == dsslic.layer_bits["segmentation"] // 8 + (
        dsslic.layer_bits["residual"] - noenh.layer_bits["residual"]) // 8


def test_enhancement_changes_the_map_and_the_prediction(tiny_model, edms_models):
    segnet, smapnet = edms_models
    image, seg = make_image(64, 64, seed=4)
    compact = codec.compact_image(tiny_model, image, seg)
    raw = edms.matched_segmentation(compact, tiny_model, segnet)
    scores = edms.matched_scores(compact, tiny_model, segnet, smapnet)
    np.testing.assert_array_equal(scores[0].argmax(0).numpy(), edms.matched_segmentation(compact, tiny_model, segnet,
                                                                                           smapnet))
    assert raw.shape == (64, 64) and scores.shape == (1, 5, 64, 64)
    assert edms.top2_margin(scores).shape == (1, 64, 64) and (edms.top2_margin(scores) >= 0).all()


def test_decoding_in_a_fresh_process(tiny_model, tiny_model_path, edms_models, edms_paths, tmp_path):
    segnet, smapnet = edms_models
    image, seg = make_image(45, 70, seed=3)
    result = codec.encode(image, seg, tiny_model, 22, method="edms", segnet=segnet, smapnet=smapnet)
    sem, out = tmp_path / "x.sem", tmp_path / "x.npy"
    sem.write_bytes(result.data)
    script = ("import sys, numpy as np;"
              "from semlic.training import load_dsslic; from semlic.codec import decode;"
              "from semlic.segnet import load_segnet; from semlic.smapnet_training import load_smapnet;"
              "m = load_dsslic(sys.argv[1]); s = load_segnet(sys.argv[2]); e = load_smapnet(sys.argv[3]);"
              "np.save(sys.argv[5], decode(open(sys.argv[4], 'rb').read(), m, segnet=s, smapnet=e))")
    env = {"OMP_NUM_THREADS": str(torch.get_num_threads())}
    subprocess.run([sys.executable, "-c", script, str(tiny_model_path), *map(str, edms_paths), str(sem), str(out)],
                   check=True, env={**os.environ, **env})
    np.testing.assert_array_equal(np.load(out), result.reconstruction)


def test_wrong_or_missing_models_are_refused(tiny_model, edms_models, tmp_path):
    segnet, smapnet = edms_models
    image, seg = make_image(16, 24)
    data = codec.encode(image, seg, tiny_model, 30, method="edms", segnet=segnet, smapnet=smapnet).data
    other_segnet = load_segnet(save_tiny_segnet(tmp_path / "s1.safetensors", seed=1))
    other_smapnet = load_smapnet(save_tiny_smapnet(tmp_path / "e1.safetensors", seed=1))
    with pytest.raises(errors.FingerprintMismatchError, match="PSPNet \\+ SMapNet"):
        codec.decode(data, tiny_model, segnet=other_segnet, smapnet=smapnet)
    with pytest.raises(errors.FingerprintMismatchError, match="load the matching checkpoint"):
        codec.decode(data, tiny_model, segnet=segnet, smapnet=other_smapnet)
    with pytest.raises(errors.MissingModelError, match="--smapnet"):
        codec.decode(data, tiny_model, segnet=segnet)
    with pytest.raises(errors.MissingModelError, match="--segnet"):
        codec.encode(image, seg, tiny_model, 30, method="edms_noenh")
    four_classes = load_smapnet(save_tiny_smapnet(tmp_path / "e4.safetensors", num_classes=4))
    with pytest.raises(errors.ModelMismatchError, match="4 classes"):
        codec.encode(image, seg, tiny_model, 30, method="edms", segnet=segnet, smapnet=four_classes)
    with pytest.raises(errors.UnknownMethodError, match="smic"):
        codec.encode(image, seg, tiny_model, 30, method="smic")
    fingerprints = {edms.decoder_fingerprint(m, tiny_model, segnet, smapnet) for m in ("dsslic", "edms", "edms_noenh")}
    assert len(fingerprints) == 3


def test_edms_header_with_a_segmentation_layer_is_refused(tiny_model, edms_models):
    segnet, smapnet = edms_models
    image, seg = make_image(16, 16)
    sem = fmt.unpack(codec.encode(image, seg, tiny_model, None, lossless="png", method="edms", segnet=segnet,
                                  smapnet=smapnet).data)
    seg_layer = fmt.unpack(codec.encode(image, seg, tiny_model, None, lossless="png").data).layer(fmt.ROLE_SEGMENTATION)
    forged = fmt.pack(fmt.SemFile(**{**sem.__dict__, "layers": (seg_layer,) + sem.layers}))
    with pytest.raises(errors.LayerError, match="no segmentation layer"):
        codec.decode(forged, tiny_model, segnet=segnet, smapnet=smapnet)


def test_cli_encode_info_decode(tmp_path, tiny_model_path, edms_paths, capsys):
    image, seg = make_image(21, 34, seed=5)
    src, seg_path, sem, out = tmp_path / "in.png", tmp_path / "seg.png", tmp_path / "x.sem", tmp_path / "out.png"
    save_png(src, image)
    save_png(seg_path, seg)
    models = ["--model", str(tiny_model_path), "--segnet", str(edms_paths[0]), "--smapnet", str(edms_paths[1])]
    assert main(["encode", str(src), str(sem), "--method", "edms", "--seg", str(seg_path), "--qp", "12",
                 "--agreement-tau", "0", *models]) == 0
    capsys.readouterr()
    assert main(["info", str(sem), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["method"] == "edms" and [lay["role"] for lay in info["layers"]] == ["header", "compact", "residual"]
    assert sum(lay["bits"] for lay in info["layers"]) == 8 * sem.stat().st_size
    assert main(["info", str(sem)]) == 0
    text = capsys.readouterr().out
    assert "edms 34x21" in text and "segmentation" not in text
    assert main(["decode", str(sem), str(out), *models]) == 0
    segnet, smapnet = load_segnet(edms_paths[0]), load_smapnet(edms_paths[1])
    expected = codec.encode(image, seg, load_dsslic(tiny_model_path), 12, method="edms", segnet=segnet, smapnet=smapnet,
                            agreement_tau=0)
    assert expected.data == sem.read_bytes()
    np.testing.assert_array_equal(load_image(out), expected.reconstruction)
    assert main(["decode", str(sem), str(tmp_path / "o2.png"), "--model", str(tiny_model_path),
                 "--segnet", str(edms_paths[0])]) == 5
    assert "--smapnet" in capsys.readouterr().err
    # without --seg the encoder segments the original image with the same PSPNet
    assert main(["encode", str(src), str(tmp_path / "y.sem"), "--method", "edms_noenh", "--model",
                 str(tiny_model_path), "--segnet", str(edms_paths[0])]) == 0


def test_correction_map_restores_agreement_under_bounded_score_noise():
    """The guard: with every score off by < tau / 2, decoder map + correction == encoder map."""
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(1, 6, 64, 64, generator=generator)
    scores[0, 1] = scores[0, 0] + 1e-4 * torch.randn(64, 64, generator=generator)  # many near-ties
    tau = 1e-3
    noisy = scores + (tau / 2) * 0.999 * (2 * torch.rand(scores.shape, generator=generator) - 1)
    encoder, decoder = scores[0].argmax(0).numpy(), noisy[0].argmax(0).numpy()
    assert (encoder != decoder).sum() > 10
    correction = edms.correction_map(scores, tau)
    assert 0 < (correction > 0).mean() < 0.5
    np.testing.assert_array_equal(edms.apply_correction(decoder, correction), encoder)
    with pytest.raises(errors.ConfigError, match="does not match"):
        edms.apply_correction(decoder[:8], correction)
