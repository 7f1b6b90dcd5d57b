"""HEVC + SG filter (semlic.methods.sgfilter): the file, the enhancement flag, bad input, training and resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from semlic import format as fmt
from semlic.baselines import code_image_bytes
from semlic.cli import main
from semlic.errors import FingerprintMismatchError, FormatError, LayerError, SemlicError
from semlic.fuzz import NUM_CLASSES, seed_image, tiny_models
from semlic.methods import get_method
from semlic.methods.sgfilter.codec import ROLE_IMAGE, ROLE_MAP, SECTION
from semlic.methods.sgfilter.training import SGFilterTrainConfig, build_cache, model_path, train_sgfilter

NAMES = ("sgfilter", "sgfilter_nomap", "sgfilter_sent")


def _with_output(models: dict, scale: float, seed: int = 0) -> dict:
    """The tiny models with each enhancement network's output convolution set to random weights of ``scale``
    (an untrained network is the identity: its output convolution starts at zero)."""
    out = dict(models)
    generator = torch.Generator().manual_seed(seed)
    for name in NAMES:
        net = type(models[name])(models[name].config)
        net.load_state_dict(models[name].state_dict())
        with torch.no_grad():
            net.out.weight.copy_(torch.randn(net.out.weight.shape, generator=generator) * scale)
        out[name] = net.eval()
    return out


@pytest.fixture(scope="module")
def models():
    return tiny_models()


@pytest.mark.parametrize("name", NAMES)
def test_the_file_round_trips_from_its_bytes_alone(models, name):
    """The decoder rebuilds the encoder's reconstruction from the file (one process: exactly), its image layer
    is the HEVC 4:4:4 baseline's file byte for byte, and every byte is counted."""
    method = get_method(name)
    image, _ = seed_image(48, 80)
    nets = _with_output(models, 0.05)
    for qp in (42, 32):
        result = method.encode(image, nets, qp, enhance="on")
        assert np.array_equal(method.decode(result.data, nets), result.reconstruction)
        sem = fmt.unpack(result.data)
        baseline = code_image_bytes(image, "hevc", qp)
        assert sem.layer(ROLE_IMAGE).payload == baseline.data
        assert np.array_equal(result.extras["hevc"], baseline.reconstruction)
        assert not np.array_equal(result.reconstruction, baseline.reconstruction)   # the network changed it
        assert sum(result.layer_bits.values()) == 8 * len(result.data)
        extra = len(result.data) - len(baseline.data)
        layer_headers = sum(layer.bits // 8 - len(layer.payload) for layer in sem.layers)
        assert 0 < layer_headers <= 16 * len(sem.layers)
        assert extra == sem.header_bytes + layer_headers + (len(sem.layer(ROLE_MAP).payload) if name == "sgfilter_sent" else 0)
        assert method.describe(sem) == {"qp": qp, "enhance": True, "map": method.map_source}


def test_the_encoder_leaves_hevc_alone_where_the_network_would_hurt(models):
    """``enhance: auto`` clears the flag where x~ is further from the image than x^; the decoder then returns
    HEVC's picture; a helpful network keeps the flag."""
    method = get_method("sgfilter")
    image, _ = seed_image(48, 80)
    harmful = _with_output(models, 0.5)              # large random output: far worse than HEVC
    result = method.encode(image, harmful, 37)
    baseline = code_image_bytes(image, "hevc", 37)
    assert result.extras["enhanced"] is False and result.extras["gain_db"] < 0
    assert method.describe(fmt.unpack(result.data))["enhance"] is False
    assert np.array_equal(method.decode(result.data, harmful), baseline.reconstruction)
    forced = method.encode(image, harmful, 37, enhance="on")
    assert forced.extras["enhanced"] is True and not np.array_equal(method.decode(forced.data, harmful),
                                                                    baseline.reconstruction)
    assert forced.data[:-len(baseline.data)] != result.data[:-len(baseline.data)]   # only the flag differs
    off = method.encode(image, harmful, 37, enhance="off")
    assert off.data == result.data


def test_bad_files_and_wrong_models_give_typed_errors(models):
    method = get_method("sgfilter_sent")
    image, _ = seed_image(48, 80)
    nets = _with_output(models, 0.05)
    data = method.encode(image, nets, 37, enhance="on").data
    with pytest.raises(FormatError):
        method.decode(data[: len(data) // 2], nets)
    with pytest.raises(FingerprintMismatchError):
        method.decode(data, _with_output(models, 0.05, seed=1))
    sem = fmt.unpack(data)
    for section in (SECTION.pack(60, 1), SECTION.pack(37, 6), b"\x25"):
        bad = fmt.pack(fmt.SemFile(sem.method, sem.width, sem.height, sem.fingerprint, section, sem.layers))
        with pytest.raises(LayerError):
            method.decode(bad, nets)
    without_map = fmt.pack(fmt.SemFile(sem.method, sem.width, sem.height, sem.fingerprint, sem.section,
                                       tuple(layer for layer in sem.layers if layer.role != ROLE_MAP)))
    with pytest.raises(LayerError):
        method.decode(without_map, nets)
    wrong_classes = np.full(image.shape[:2], NUM_CLASSES + 3, np.uint8)
    with pytest.raises(SemlicError):
        method.encode(image, nets, 37, segmentation=wrong_classes)
    with pytest.raises(SemlicError):
        get_method("sgfilter").encode(image, nets, 60)
    with pytest.raises(SemlicError):
        get_method("sgfilter").encode(image, nets, 37, enhance="maybe")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from semlic.data.prepare import prepare_dataset

    out = tmp_path_factory.mktemp("sgfilter_data")
    prepare_dataset("synthetic", None, out, train_size=(48, 64), limit=4, workers=1, show_progress=False)
    return out


CONFIG = {"preset": "tiny", "qps": [42, 32], "iterations": 12, "batch_size": 4, "crop": 16, "checkpoint_every": 4,
          "log_every": 2, "amp": False}


@pytest.mark.parametrize("source", ["derived", "none"])
def test_a_resumed_training_equals_an_uninterrupted_one(models, prepared, tmp_path, source):
    segnet = models["pspnet"]
    whole = train_sgfilter({**CONFIG, "map_source": source}, prepared, tmp_path / "whole", segnet, progress=False)
    assert whole.completed and model_path(tmp_path / "whole", source).is_file()
    first = train_sgfilter({**CONFIG, "map_source": source}, prepared, tmp_path / "parts", segnet, stop_after=5,
                           progress=False)
    assert not first.completed and not model_path(tmp_path / "parts", source).exists()
    second = train_sgfilter({**CONFIG, "map_source": source}, prepared, tmp_path / "parts", segnet, progress=False)
    assert second.completed
    from safetensors.torch import load_file

    a, b = load_file(str(model_path(tmp_path / "whole", source))), load_file(str(model_path(tmp_path / "parts", source)))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(k.startswith("embedding") for k in a) == (source != "none")
    assert not torch.equal(a["out.weight"], torch.zeros_like(a["out.weight"]))   # it trained


def test_the_cache_codes_the_train_split_as_the_codec_does(models, prepared, tmp_path):
    segnet = models["pspnet"]
    cache = build_cache(prepared, segnet, [42], "derived", tmp_path, progress=False)
    from semlic.imageio import load_image
    from semlic.layered_codec import segment_image
    from semlic.segnet.prepared import list_prepared

    first = load_image(list_prepared(prepared, "train")[0].image_path)
    coded = code_image_bytes(first, "hevc", 42).reconstruction
    assert np.array_equal(cache["decoded"][0, 0].numpy(), coded)
    assert np.array_equal(cache["maps"][0, 0].numpy(), segment_image(segnet, coded))
    again = build_cache(prepared, segnet, [42], "derived", tmp_path, progress=False)   # read back, not recomputed
    assert torch.equal(again["decoded"], cache["decoded"])
    with pytest.raises(SemlicError):
        SGFilterTrainConfig.from_dict({"map_source": "ground"})


def test_the_command_trains_and_the_codec_uses_the_trained_network(models, prepared, tmp_path, capsys):
    from semlic.model_files import load_model, save_model

    segnet_path = tmp_path / "pspnet.safetensors"
    save_model(segnet_path, models["pspnet"])
    code = main(["train-sgfilter", "--data", str(prepared), "--out", str(tmp_path / "out"), "--segnet",
                 str(segnet_path), "--preset", "tiny", "--iterations", "6", "--crop", "16", "--no-progress"])
    assert code == 0 and '"completed": true' in capsys.readouterr().out
    net = load_model(model_path(tmp_path / "out", "derived"), expect="sgfilter")
    method = get_method("sgfilter")
    nets = {"sgfilter": net, "pspnet": models["pspnet"]}
    image, _ = seed_image(48, 64)
    result = method.encode(image, nets, 42, enhance="on")
    assert np.array_equal(method.decode(result.data, nets), result.reconstruction)
    assert main(["train-sgfilter", "--data", str(prepared), "--out", str(tmp_path / "x"), "--no-progress"]) == 2


def test_the_ground_truth_bound_trains_on_the_labels_with_void_as_a_class(prepared, tmp_path):
    from semlic.methods.sgfilter.training import truth_classes
    from semlic.model_files import build_model, load_model
    from semlic.segnet.prepared import list_prepared

    segnet = build_model("pspnet", "tiny", 8).eval()     # the synthetic set's 8 classes
    sample = list_prepared(prepared, "train")[0]
    from semlic.imageio import load_label_map

    stored, classes = load_label_map(sample.label_path), truth_classes(sample, 8)
    assert np.array_equal(classes == 8, stored == 255) and np.array_equal(classes[stored != 255], stored[stored != 255])
    result = train_sgfilter({**CONFIG, "map_source": "truth", "iterations": 4}, prepared, tmp_path, segnet, progress=False)
    assert result.completed
    net = load_model(model_path(tmp_path, "truth"), expect="sgfilter_truth")
    assert net.config.num_classes == 9 and net.uses_map
    with pytest.raises(SemlicError):
        truth_classes(sample, 2)   # labels beyond the segmenter's classes


def test_the_map_starts_silent_and_training_gives_it_a_voice():
    """The class embedding starts at zero: an untrained map-conditioned network's first layer sees what the
    plain post-filter's sees, whatever the map. Its gradient is not zero, so where the target depends on the
    class, a few steps teach the network to use the map."""
    from semlic.methods.sgfilter.network import SGFilter, sgfilter_config

    torch.manual_seed(0)
    net = SGFilter(sgfilter_config("tiny", num_classes=3))
    image = torch.zeros(2, 3, 16, 16)
    qp = torch.full((2,), 42.0)
    labels = torch.zeros(2, 16, 16, dtype=torch.int64)
    labels[:, :, 8:] = 1
    other = torch.randint(0, 3, (2, 16, 16), generator=torch.Generator().manual_seed(1))
    assert torch.count_nonzero(net.embedding.weight) == 0

    def first_layer(lab):
        n, _, h, w = image.shape
        planes = [image, (qp / 51).view(n, 1, 1, 1).expand(n, 1, h, w), net.embedding(lab).permute(0, 3, 1, 2)]
        return net.body[0](torch.cat(planes, 1))

    assert torch.equal(first_layer(labels), first_layer(other))
    target = image + torch.where(labels == 1, 0.5, -0.5).unsqueeze(1).expand(-1, 3, -1, -1)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(60):
        loss = torch.mean((net(image, labels, qp) - target) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.count_nonzero(net.embedding.weight) > 0
    with torch.no_grad():
        out = net(image, labels, qp)
    assert float(loss) < 0.05   # from 0.25: the two halves told apart by the map alone (the image is flat)
    assert float(out[:, :, :, 8:].mean() - out[:, :, :, :8].mean()) > 0.5
