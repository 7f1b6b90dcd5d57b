"""The EDMS codec: no segmentation layer; the decoder derives the encoder's map from c^ alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from semlic import errors
from semlic import format as fmt
from semlic.cli import main
from semlic.imageio import load_image, save_png
from semlic.methods import get_method
from semlic.layered_codec import compact_image
from semlic.layered_codec import ROLE_SEGMENTATION
from semlic.methods.edms import matched
from semlic.model_files import load_model
from tests.conftest import make_image
from tests.test_edms_support import save_tiny_segnet, save_tiny_smapnet


def edms_encode(image, seg, model, qp, method="edms", segnet=None, smapnet=None, **options):
    models = {"dsslic": model, "pspnet": segnet, "smapnet": smapnet}
    return get_method(method).encode(image, {k: v for k, v in models.items() if v is not None}, qp, segmentation=seg,
                                     **options)


def edms_decode(data, model, segnet=None, smapnet=None, prediction=False):
    models = {k: v for k, v in {"dsslic": model, "pspnet": segnet, "smapnet": smapnet}.items() if v is not None}
    method = get_method(fmt.unpack(data).method)
    return method.decode_with_prediction(data, models) if prediction else method.decode(data, models)


@pytest.fixture(scope="module")
def edms_paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("edms_models")
    return save_tiny_segnet(root / "segnet.safetensors"), save_tiny_smapnet(root / "smapnet.safetensors")


@pytest.fixture(scope="module")
def edms_models(edms_paths):
    return load_model(edms_paths[0], expect="pspnet"), load_model(edms_paths[1], expect="smapnet")


@pytest.mark.parametrize("method", ["edms", "edms_noenh"])
def test_file_has_no_segmentation_layer_and_decodes_exactly(tiny_model, edms_models, method):
    segnet, smapnet = edms_models
    image, seg = make_image(37, 61, seed=2)
    result = edms_encode(image, seg, tiny_model, 27, lossless="png", method=method, segnet=segnet, smapnet=smapnet,
                         agreement_tau=0)
    sem = fmt.unpack(result.data)
    roles = [get_method(method).role_name(lay.role) for lay in sem.layers]
    assert sem.method == method and roles == ["compact", "residual"]
    assert set(result.layer_bits) == {"header", "compact", "residual"}
    assert result.extras["matched_segmentation"].shape == (40, 64)  # the padded size
    assert result.extras["matched_segmentation"].max() < 5
    reconstruction, prediction = edms_decode(result.data, tiny_model, segnet, smapnet, prediction=True)
    np.testing.assert_array_equal(prediction, result.extras["prediction"])
    np.testing.assert_array_equal(reconstruction, result.reconstruction)


def test_file_is_smaller_than_dsslic_by_the_segmentation_layer(tiny_model, edms_models):
    image, seg = make_image(40, 48, seed=1)
    dsslic = get_method("dsslic").encode(image, {"dsslic": tiny_model}, 30, segmentation=seg, lossless="png")
    noenh = edms_encode(image, seg, tiny_model, 30, lossless="png", method="edms_noenh", segnet=edms_models[0],
                        agreement_tau=0)
    assert dsslic.layer_bits["compact"] == noenh.layer_bits["compact"]
    assert len(dsslic.data) - len(noenh.data) == dsslic.layer_bits["segmentation"] // 8 + (
        dsslic.layer_bits["residual"] - noenh.layer_bits["residual"]) // 8


@pytest.mark.numeric
def test_enhancement_changes_the_map_and_the_prediction(tiny_model, edms_models, bound):
    segnet, smapnet = edms_models
    image, seg = make_image(64, 64, seed=4)
    compact = compact_image(tiny_model, image, seg)
    raw = matched.matched_segmentation(compact, tiny_model, segnet)
    scores = matched.matched_scores(compact, tiny_model, segnet, smapnet)
    np.testing.assert_array_equal(scores[0].argmax(0).numpy(), matched.matched_segmentation(compact, tiny_model, segnet,
                                                                                              smapnet))
    assert raw.shape == (64, 64) and scores.shape == (1, 5, 64, 64)
    assert matched.top2_margin(scores).shape == (1, 64, 64) and (matched.top2_margin(scores) >= 0).all()
    # SMapNet's map differs from PSPNet's on some pixels, and the prediction (RecNet on that map) with it
    enhanced = edms_encode(image, seg, tiny_model, None, method="edms", segnet=segnet, smapnet=smapnet, agreement_tau=0)
    plain = edms_encode(image, seg, tiny_model, None, method="edms_noenh", segnet=segnet, agreement_tau=0)
    np.testing.assert_array_equal(plain.extras["matched_segmentation"], raw)
    changed = enhanced.extras["matched_segmentation"] != raw
    bound("pixels whose class SMapNet changed", changed.sum(), ">", 0)
    moved = np.abs(enhanced.extras["prediction"].astype(int) - plain.extras["prediction"].astype(int)).max(-1) > 0
    assert moved[changed].mean() > 0.5   # where the class changed, the prediction changed


def test_decoding_in_a_fresh_process(tiny_model, tiny_model_path, edms_models, edms_paths, tmp_path):
    segnet, smapnet = edms_models
    image, seg = make_image(45, 70, seed=3)
    result = edms_encode(image, seg, tiny_model, 22, method="edms", segnet=segnet, smapnet=smapnet)
    sem, out = tmp_path / "x.sem", tmp_path / "x.npy"
    sem.write_bytes(result.data)
    script = ("import sys, numpy as np;"
              "from semlic.model_files import ModelStore; from semlic.methods import get_method;"
              "models = ModelStore(files=sys.argv[1:4]).models(['dsslic', 'pspnet', 'smapnet']);"
              "np.save(sys.argv[5], get_method('edms').decode(open(sys.argv[4], 'rb').read(), models))")
    env = {"OMP_NUM_THREADS": str(torch.get_num_threads())}
    subprocess.run([sys.executable, "-c", script, str(tiny_model_path), *map(str, edms_paths), str(sem), str(out)],
                   check=True, env={**os.environ, **env})
    np.testing.assert_array_equal(np.load(out), result.reconstruction)


def test_wrong_or_missing_models_are_refused(tiny_model, edms_models, tmp_path):
    segnet, smapnet = edms_models
    image, seg = make_image(16, 24)
    data = edms_encode(image, seg, tiny_model, 30, method="edms", segnet=segnet, smapnet=smapnet).data
    other_segnet = load_model(save_tiny_segnet(tmp_path / "s1.safetensors", seed=1))
    other_smapnet = load_model(save_tiny_smapnet(tmp_path / "e1.safetensors", seed=1))
    with pytest.raises(errors.FingerprintMismatchError, match="dsslic \\+ pspnet \\+ smapnet"):
        edms_decode(data, tiny_model, other_segnet, smapnet)
    with pytest.raises(errors.FingerprintMismatchError, match="load the model file"):
        edms_decode(data, tiny_model, segnet, other_smapnet)
    with pytest.raises(errors.MissingModelError, match="smapnet"):
        edms_decode(data, tiny_model, segnet)
    with pytest.raises(errors.MissingModelError, match="pspnet"):
        edms_encode(image, seg, tiny_model, 30, method="edms_noenh")
    four_classes = load_model(save_tiny_smapnet(tmp_path / "e4.safetensors", num_classes=4))
    with pytest.raises(errors.ModelMismatchError, match="4 classes"):
        edms_encode(image, seg, tiny_model, 30, method="edms", segnet=segnet, smapnet=four_classes)
    with pytest.raises(errors.ConfigError, match="unknown method 'nonesuch'"):
        get_method("nonesuch")
    models = {"dsslic": tiny_model, "pspnet": segnet, "smapnet": smapnet}
    fingerprints = {get_method(m).fingerprint(models) for m in ("dsslic", "edms", "edms_noenh")}
    assert len(fingerprints) == 3


def test_edms_header_with_a_segmentation_layer_is_refused(tiny_model, edms_models):
    segnet, smapnet = edms_models
    image, seg = make_image(16, 16)
    sem = fmt.unpack(edms_encode(image, seg, tiny_model, None, lossless="png", method="edms", segnet=segnet,
                                 smapnet=smapnet).data)
    dsslic_file = get_method("dsslic").encode(image, {"dsslic": tiny_model}, None, segmentation=seg, lossless="png")
    seg_layer = fmt.unpack(dsslic_file.data).layer(ROLE_SEGMENTATION)
    forged = fmt.pack(fmt.SemFile(**{**sem.__dict__, "layers": (seg_layer,) + sem.layers}))
    with pytest.raises(errors.LayerError, match="found \\['segmentation', 'compact'\\]"):
        edms_decode(forged, tiny_model, segnet, smapnet)


def test_cli_encode_info_decode(tmp_path, tiny_model_path, edms_paths, capsys):
    image, seg = make_image(21, 34, seed=5)
    src, seg_path, sem, out = tmp_path / "in.png", tmp_path / "seg.png", tmp_path / "x.sem", tmp_path / "out.png"
    save_png(src, image)
    save_png(seg_path, seg)
    models = ["--model", str(tiny_model_path), "--model", str(edms_paths[0]), "--model", str(edms_paths[1])]
    assert main(["encode", str(src), str(sem), "--method", "edms", "--seg", str(seg_path), "--qp", "12",
                 "-o", "agreement_tau=0", *models]) == 0
    capsys.readouterr()
    assert main(["info", str(sem), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["method"] == "edms" and [lay["role"] for lay in info["layers"]] == ["header", "compact", "residual"]
    assert sum(lay["bits"] for lay in info["layers"]) == 8 * sem.stat().st_size
    assert main(["info", str(sem)]) == 0
    text = capsys.readouterr().out
    assert "edms 34x21" in text and "segmentation" not in text
    assert main(["decode", str(sem), str(out), *models]) == 0
    segnet, smapnet = load_model(edms_paths[0]), load_model(edms_paths[1])
    expected = edms_encode(image, seg, load_model(tiny_model_path), 12, method="edms", segnet=segnet, smapnet=smapnet,
                           agreement_tau=0)
    assert expected.data == sem.read_bytes()
    np.testing.assert_array_equal(load_image(out), expected.reconstruction)
    assert main(["decode", str(sem), str(tmp_path / "o2.png"), "--model", str(tiny_model_path),
                 "--model", str(edms_paths[0])]) == 5
    assert "smapnet" in capsys.readouterr().err
    # without --seg the encoder segments the original image with the same PSPNet
    assert main(["encode", str(src), str(tmp_path / "y.sem"), "--method", "edms_noenh", "--model",
                 str(tiny_model_path), "--model", str(edms_paths[0])]) == 0
    assert main(["encode", str(src), str(tmp_path / "z.sem"), "--method", "edms", "-o", "chroma=422", *models]) == 2
    assert "chroma" in capsys.readouterr().err


def test_correction_map_restores_agreement_under_bounded_score_noise():
    """The guard: with every score off by < tau / 2, decoder map + correction == encoder map."""
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(1, 6, 64, 64, generator=generator)
    scores[0, 1] = scores[0, 0] + 1e-4 * torch.randn(64, 64, generator=generator)  # many near-ties
    tau = 1e-3
    noisy = scores + (tau / 2) * 0.999 * (2 * torch.rand(scores.shape, generator=generator) - 1)
    encoder, decoder = scores[0].argmax(0).numpy(), noisy[0].argmax(0).numpy()
    assert (encoder != decoder).sum() > 10
    correction = matched.correction_map(scores, tau)
    assert 0 < (correction > 0).mean() < 0.5
    np.testing.assert_array_equal(matched.apply_correction(decoder, correction), encoder)
    with pytest.raises(errors.ConfigError, match="does not match"):
        matched.apply_correction(decoder[:8], correction)
