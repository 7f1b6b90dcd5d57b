"""SMIC: networks as the paper's figures and Table 1 say, training, resume, the codec from the file alone."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from semlic import errors
from semlic import format as fmt
from semlic.cli import main
from semlic.imageio import save_png
from semlic.methods import get_method
from semlic.methods.smic import networks
from semlic.methods.smic.codec import Section, downsample, parse_quality
from semlic.methods.smic.training import RecNetTrainConfig, SSNetTrainConfig, train_recnet, train_ssnet
from semlic.model_files import load_model, save_model
from tests.conftest import make_image

SMIC = get_method("smic")


def _convs(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]


def test_ssnet_is_figure_2():
    net = networks.SSNet(networks.ssnet_config("paper", 11))
    convs = _convs(net)
    assert (convs[0].kernel_size, convs[0].out_channels) == ((7, 7), 60)
    assert [(c.kernel_size, c.stride) for c in convs[1:3]] == [((3, 3), (2, 2))] * 2
    blocks = [m for m in net.modules() if isinstance(m, networks.ResidualBlock)]
    assert len(blocks) == 6
    transposed = [c for c in convs if isinstance(c, nn.ConvTranspose2d)]
    assert [(c.kernel_size, c.stride) for c in transposed] == [((3, 3), (2, 2))] * 2
    assert (convs[-1].kernel_size, convs[-1].out_channels) == ((7, 7), 3)
    x = torch.rand(1, 3, 64, 96) * 2 - 1
    drawn = net(x)
    assert drawn.shape == x.shape and drawn.abs().max() <= 1
    assert net.palette.shape == (12, 3) and tuple(net.palette[-1].tolist()) == networks.VOID_COLOUR
    labels = torch.tensor([[[0, 3], [10, 255]]])
    np.testing.assert_array_equal(net.labels(net.draw(labels).float() / 127.5 - 1), [[[0, 3], [10, 11]]])


def lite0_weights(path, seed: int = 0):
    """A weights file in the converted EfficientNet-Lite0 layout (random values), as `semlic weights` writes it."""
    from safetensors.torch import save_file

    from semlic.segnet import efficientnet

    torch.manual_seed(seed)
    state = efficientnet.EfficientNetLite(num_classes=1000).state_dict()
    save_file(state, str(path), metadata={"format": efficientnet.FORMAT, "model": efficientnet.NAME})
    return state


def test_ssnet_with_an_efficientnet_encoder(tmp_path, prepared):
    """The paper's generator after EfficientNet-Lite0's stem and stages 1-2 (ImageNet weights loadable); the
    paper's SS-Net keeps its layout (its files load as before)."""
    paper = networks.SSNet(networks.ssnet_config("small", 11))
    assert paper.encoder is None and paper.state_dict()["net.0.weight"].shape == (32, 3, 7, 7)
    net = networks.SSNet(networks.ssnet_config("small", 11, encoder="efficientnet_lite0"))
    x = torch.rand(2, 3, 64, 96) * 2 - 1
    assert net(x).shape == x.shape and net.encoder(x).shape == (2, 24, 16, 24)
    assert not any(isinstance(m, nn.Conv2d) and m.kernel_size == (7, 7) and m.in_channels == 3 for m in net.modules())
    state = lite0_weights(tmp_path / "lite0.safetensors")
    net.load_encoder_weights(tmp_path / "lite0.safetensors")
    assert torch.equal(net.encoder._blocks[2]._depthwise_conv.weight, state["_blocks.2._depthwise_conv.weight"])
    assert torch.equal(net.encoder._conv_stem.weight, state["_conv_stem.weight"])
    with pytest.raises(errors.ConfigError, match="encoder"):
        paper.load_encoder_weights(tmp_path / "lite0.safetensors")
    with pytest.raises(errors.ConfigError, match="encoder must be one of"):
        networks.ssnet_config("small", 11, encoder="vgg")
    with pytest.raises(errors.CheckpointError, match="semlic weights efficientnet_lite0"):
        net.load_encoder_weights(tmp_path / "missing.safetensors")
    # trained from the weights: the model file names the encoder and loads as it was
    result = train_ssnet({**SS, "iterations": 2, "model": {"encoder": "efficientnet_lite0"},
                          "encoder_weights": str(tmp_path / "lite0.safetensors")}, prepared, tmp_path / "s",
                         progress=False)
    loaded = load_model(result.model_path)
    assert loaded.config.encoder == "efficientnet_lite0" and loaded.encoder is not None


@pytest.mark.parametrize("make, table, in_channels", [(networks.d1, networks.D1_LAYERS, 6),
                                                      (networks.d2, networks.D2_LAYERS, 10)])
def test_discriminators_are_table_1(make, table, in_channels):
    convs = _convs(make())
    assert convs[0].in_channels == in_channels
    assert [(c.out_channels, c.stride[0]) for c in convs] == [*table, (1, 1)]
    assert all(c.kernel_size == (4, 4) for c in convs)
    acts = [m for m in make().modules() if isinstance(m, nn.LeakyReLU)]
    assert len(acts) == len(table) and all(a.negative_slope == 0.2 for a in acts)


def test_recnet_is_figure_3():
    net = networks.RecNet(networks.recnet_config("paper"))
    convs = _convs(net)
    assert all(c.kernel_size == (3, 3) for c in convs)
    assert convs[0].in_channels == 7 and convs[-1].out_channels == 3
    # BN + LeakyReLU 0.2 after every convolution but the first (LeakyReLU only) and the last (none)
    assert len([m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]) > 0
    assert not isinstance(net.stem[1], nn.BatchNorm2d) and all(
        a.negative_slope == 0.2 for a in net.modules() if isinstance(a, nn.LeakyReLU))
    blocks = [m for m in net.modules() if isinstance(m, networks.ResidualBlock)]
    assert len(blocks) == 2 * net.config.depth + 1     # one per level, down and up, and the stem's
    up = torch.rand(2, 3, 64, 80) * 2 - 1
    assert net(up, up, 8).shape == up.shape
    torch.testing.assert_close(net(up, up, 8), up)     # starts as the identity on up(small)


def test_configs_round_trip_and_refuse_bad_values():
    config = networks.ssnet_config("tiny", 5)
    assert networks.SSNetConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(errors.ConfigError, match="palette"):
        networks.SSNetConfig(num_classes=2, palette=((1, 1, 1), (1, 1, 1)))
    with pytest.raises(errors.ConfigError, match="unknown SS-Net config keys"):
        networks.SSNetConfig.from_dict({"num_classes": 3, "width": 4})
    with pytest.raises(errors.ConfigError, match="depth"):
        networks.RecNetConfig(depth=0)


def test_quality_forms():
    assert [parse_quality(q) for q in ((8, 32), [4, 20], "8/32", "f8q32", "16:40", {"factor": 2, "map_qp": 1}, 832.0)] \
        == [(8, 32), (4, 20), (8, 32), (8, 32), (16, 40), (2, 1), (8, 32)]
    assert SMIC.quality_value((8, 32)) == 832.0 and SMIC.quality_label((8, 32)) == "f8q32"
    for bad in ((3, 32), (8, 60), "8", None):
        with pytest.raises(errors.ConfigError):
            parse_quality(bad)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from semlic.data.prepare import prepare_dataset

    out = tmp_path_factory.mktemp("smic") / "prep"
    prepare_dataset("synthetic", None, out, train_size=(128, 128), limit=6, workers=1, show_progress=False)
    return out


SS = dict(preset="tiny", num_classes=8, batch_size=2, crop=64, log_every=1, checkpoint_every=4, lr=2e-3)
REC = dict(preset="tiny", batch_size=2, log_every=1, checkpoint_every=4, lr=2e-3, factors=[2, 4], map_qps=[30, 40],
           maps="ground_truth")


@pytest.fixture(scope="module")
def models(prepared, tmp_path_factory):
    out = tmp_path_factory.mktemp("smic_models")
    ssnet = train_ssnet({**SS, "iterations": 4}, prepared, out / "ssnet", progress=False)
    recnet = train_recnet({**REC, "iterations": 4}, prepared, out / "recnet", num_classes=8, progress=False)
    return {"smic_ssnet": load_model(ssnet.model_path), "smic_recnet": load_model(recnet.model_path)}, out


@pytest.mark.numeric
def test_a_few_steps_lower_each_loss(prepared, tmp_path, seed, bound):
    train_ssnet({**SS, "iterations": 24, "gan": False, "seed": seed}, prepared, tmp_path / "s", progress=False)
    log = pd.read_parquet(tmp_path / "s" / "train_log.parquet")
    bound("ssnet l1, last 4 / first 4", log["l1"].iloc[-4:].mean() / log["l1"].iloc[:4].mean(), "<", 0.9)
    train_recnet({**REC, "iterations": 48, "gan": False, "factors": [2], "seed": seed}, prepared, tmp_path / "r",
                 num_classes=8, progress=False)
    log = pd.read_parquet(tmp_path / "r" / "train_log.parquet")
    bound("recnet l1, last 8 / first 8", log["l1"].iloc[-8:].mean() / log["l1"].iloc[:8].mean(), "<", 1.0)


@pytest.mark.numeric
def test_with_the_gan_on_the_adversarial_terms_train(prepared, tmp_path, seed, bound):
    """The GAN terms: logged, finite, part of the generator's loss, and they train the generator: the
    run with the GAN leaves the run without it (same seed, same batches) from the second step on,
    while its L1 term still falls. (Whether the discriminator wins within 24 steps is not a property:
    its loss ends anywhere between 0.09 and 0.9 across CPU kernels and seeds, reports/numeric_margins.md.)"""
    train_ssnet({**SS, "iterations": 24, "gan": True, "seed": seed}, prepared, tmp_path / "s", progress=False)
    log = pd.read_parquet(tmp_path / "s" / "train_log.parquet")
    terms = ["l1", "g_gan"]
    assert {"l1", "g_gan", "g_total", "d"} <= set(log.columns) and np.isfinite(log[terms + ["g_total", "d"]]).all().all()
    np.testing.assert_allclose(log["g_total"], log[terms].sum(axis=1), rtol=1e-5)   # the GAN term is in the loss
    assert (log["g_gan"] > 0).all() and (log["d"] > 0).all()
    train_ssnet({**SS, "iterations": 4, "gan": False, "seed": seed}, prepared, tmp_path / "plain", progress=False)
    plain = pd.read_parquet(tmp_path / "plain" / "train_log.parquet")
    assert log["l1"].iloc[0] == plain["l1"].iloc[0]              # the same start
    assert (log["l1"].iloc[1:4].to_numpy() != plain["l1"].iloc[1:4].to_numpy()).all()   # the GAN moved the generator
    bound("ssnet l1 with the GAN, last 4 / first 4", log["l1"].iloc[-4:].mean() / log["l1"].iloc[:4].mean(), "<", 0.95)
    train_recnet({**REC, "iterations": 8, "gan": True, "factors": [2], "seed": seed}, prepared, tmp_path / "r",
                 num_classes=8, progress=False)
    log = pd.read_parquet(tmp_path / "r" / "train_log.parquet")
    terms = [c for c in log.columns if c not in ("iteration", "seconds", "images_per_s", "g_total", "d", "epoch", "factor")]
    assert "g_gan" in terms and np.isfinite(log[terms + ["g_total", "d"]]).all().all()
    np.testing.assert_allclose(log["g_total"], log[terms].sum(axis=1), rtol=1e-5)


@pytest.mark.parametrize("part", ["ssnet", "recnet"])
def test_resume_equals_an_uninterrupted_run(prepared, tmp_path, part):
    def run(config, out, **kw):
        if part == "ssnet":
            return train_ssnet({**SS, **config}, prepared, out, progress=False, **kw)
        return train_recnet({**REC, **config}, prepared, out, num_classes=8, progress=False, **kw)

    straight = run({"iterations": 6}, tmp_path / "a")
    from semlic.methods.smic import training
    from semlic.train_loop import fit

    config = (SSNetTrainConfig if part == "ssnet" else RecNetTrainConfig).from_dict(
        {**(SS if part == "ssnet" else REC), "iterations": 6})
    images, labels = training.load_labelled(prepared)
    task = (training.SSNetTraining(config, images, labels, "cpu") if part == "ssnet" else
            training.RecNetTraining(config, images, networks.SSNet(networks.ssnet_config("tiny", 8)).draw(labels), "cpu"))
    fit(task, tmp_path / "b", stop_after=3, checkpoint_every=4, log_every=1, progress=False)
    resumed = run({"iterations": 6}, tmp_path / "b")
    assert load_model(resumed.model_path).fingerprint == load_model(straight.model_path).fingerprint


def test_minutes_budget_writes_the_model_and_says_how_far(prepared, tmp_path):
    result = train_ssnet({**SS, "iterations": 10_000, "minutes": 0.02}, prepared, tmp_path, progress=False)
    assert result.stopped_by == "budget" and result.model_path is not None and result.iteration < 10_000
    meta = json.loads(json.dumps(load_model(result.model_path).config.to_dict()))
    assert meta["num_classes"] == 8
    from semlic.model_files import read_metadata

    assert int(read_metadata(result.model_path)["iterations"]) == result.iteration


def test_round_trip_from_the_file_alone(models):
    models, _ = models
    image, _ = make_image(45, 70, seed=3)
    results = SMIC.encode_many(image, models, [(4, 30), (8, 40), (2, 30)])
    assert results[0].extras["decoded_map"] is results[2].extras["decoded_map"]   # one map per QP
    for result, factor in zip(results, (4, 8, 2)):
        sem = fmt.unpack(result.data)
        assert [SMIC.role_name(lay.role) for lay in sem.layers] == ["map", "small_image"]
        assert sum(result.layer_bits.values()) == 8 * len(result.data)
        assert Section.unpack(sem.section).factor == factor
        np.testing.assert_array_equal(SMIC.decode(result.data, {"smic_recnet": models["smic_recnet"]}),
                                      result.reconstruction)
    assert results[1].layer_bits["small_image"] < results[0].layer_bits["small_image"]
    small = downsample(image, 4)
    assert small.shape == (12, 18, 3)


def test_cli_encode_info_decode(models, tmp_path, capsys):
    _, out = models
    image, _ = make_image(40, 56, seed=1)
    save_png(tmp_path / "in.png", image)
    assert main(["encode", str(tmp_path / "in.png"), str(tmp_path / "x.sem"), "--method", "smic", "--quality", "8/36",
                 "--models-dir", str(out), "-o", "map_chroma=444"]) == 0
    capsys.readouterr()
    assert main(["info", str(tmp_path / "x.sem"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["factor"], info["map_qp"], info["map_chroma"]) == (8, 36, "444")
    assert [lay["role"] for lay in info["layers"]] == ["header", "map", "small_image"]
    assert main(["decode", str(tmp_path / "x.sem"), str(tmp_path / "out.png"), "--model",
                 str(out / "recnet" / "smic_recnet.safetensors")]) == 0
    assert main(["encode", str(tmp_path / "in.png"), str(tmp_path / "y.sem"), "--method", "smic", "--quality", "8/36",
                 "--model", str(out / "recnet" / "smic_recnet.safetensors")]) == 5   # no SS-Net: refused by name
    assert "smic_ssnet" in capsys.readouterr().err


def test_bad_files_and_models_are_typed_errors(models, tmp_path):
    models, _ = models
    image, _ = make_image(33, 33, seed=2)
    data = SMIC.encode(image, models, (4, 30)).data
    sem = fmt.unpack(data)
    with pytest.raises(errors.DeclaredSizeError):
        Section.unpack(bytes([3, 30, 0]))
    with pytest.raises(errors.LayerError):
        Section.unpack(bytes([4, 60, 0]))
    with pytest.raises(errors.TruncatedFileError):
        SMIC.decode(data[:-5], models)
    swapped = fmt.pack(fmt.SemFile(**{**sem.__dict__, "layers": sem.layers[:1]}))
    with pytest.raises(errors.LayerError, match="small_image"):
        SMIC.decode(swapped, models)
    wrong_size = fmt.pack(fmt.SemFile(**{**sem.__dict__, "section": Section(8, 30).pack()}))
    with pytest.raises(errors.LayerError, match="header implies"):
        SMIC.decode(wrong_size, models)
    other = networks.RecNet(models["smic_recnet"].config)
    save_model(tmp_path / "other.safetensors", other)
    with pytest.raises(errors.FingerprintMismatchError):
        SMIC.decode(data, {"smic_recnet": load_model(tmp_path / "other.safetensors")})
    with pytest.raises(errors.ConfigError, match="map_chroma"):
        SMIC.encode(image, models, (4, 30), map_chroma="422")


def test_code_stage_rows(models, tmp_path):
    from semlic.code_stage import code_shard

    _, out = models
    image, _ = make_image(48, 64, seed=5)
    save_png(tmp_path / "a.png", image)
    rows = code_shard([tmp_path / "a.png"], "smic", {"qualities": [[8, 40], [2, 30]]}, models_dir=out,
                      dataset="unit", out_dir=tmp_path / "coded")
    assert [(r["quality"], r["quality_name"]) for r in rows] == [(230.0, "factor*100+map_qp"),
                                                                 (840.0, "factor*100+map_qp")]
    assert (tmp_path / "coded" / "smic" / "a_f8q40.sem").stat().st_size == rows[1]["bytes_total"]
    assert rows[0]["bpp"] > rows[1]["bpp"]


def test_stage_task_keeps_a_part_already_trained(prepared, models):
    """A rerun of the killed stage does not give a budget-trained part a second budget."""
    from semlic.pipeline.stages.train_smic import train_smic_part

    _, out = models
    model = out / "ssnet" / "smic_ssnet.safetensors"
    before = model.read_bytes()
    record = train_smic_part({"ssnet": {**SS, "iterations": 8}, "num_classes": 8}, str(prepared), str(out),
                                "ssnet", "cpu")
    assert record["reused"] and record["iterations"] == 4 and record["completed"] and record["stopped_by"] is None
    assert model.read_bytes() == before
