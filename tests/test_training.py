"""DSSLIC training on CPU: the loss falls, and a resumed run is the same run."""

from __future__ import annotations

import json
import logging

import pandas as pd
import pytest
import torch

from semlic import errors
from semlic.cli import main
from semlic.imageio import save_png
from semlic.methods.dsslic.training import DSSLICTrainConfig, learning_rate, train_dsslic
from semlic.model_files import load_model, read_metadata
from semlic.nn.losses import load_vgg_loss, ssim
from tests.conftest import make_image


@pytest.fixture(scope="module")
def train_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    for i in range(6):
        image, seg = make_image(32, 32, seed=i)
        save_png(root / "images" / f"{i:03d}.png", image)
        save_png(root / "segs" / f"{i:03d}.png", seg)
    return root / "images", root / "segs"


CFG = dict(preset="tiny", label_nc=5, batch_size=4, ndf=8, checkpoint_every=5, lr=1e-3)


@pytest.mark.numeric
def test_loss_falls(train_dirs, tmp_path, seed, bound):
    result = train_dsslic({**CFG, "iterations": 30, "seed": seed}, *train_dirs, tmp_path, progress=False)
    assert result.completed and result.iteration == 30 and result.model_path == tmp_path / "dsslic.safetensors"
    log = pd.read_parquet(tmp_path / "train_log.parquet")
    assert list(log["iteration"]) == list(range(1, 31))
    bound("l1, last 5 / first 5", log["l1"].iloc[-5:].mean() / log["l1"].iloc[:5].mean(), "<", 0.6)
    assert {"g_gan", "feat", "d", "images_per_s", "epoch", "lr"} <= set(log.columns)
    # one model file, no sidecar: the model name and config live in the file's metadata
    assert (tmp_path / "dsslic.safetensors").is_file() and not (tmp_path / "dsslic.json").exists()
    metadata = read_metadata(tmp_path / "dsslic.safetensors")
    assert metadata["model"] == "dsslic" and json.loads(metadata["iterations"]) == 30


def test_resume_continues_the_same_run(train_dirs, tmp_path):
    cfg = {**CFG, "iterations": 8}
    train_dsslic(cfg, *train_dirs, tmp_path / "straight", progress=False)
    first = train_dsslic(cfg, *train_dirs, tmp_path / "resumed", stop_after=3, progress=False)
    assert not first.completed and first.iteration == 3 and first.stopped_by == "steps"
    assert not (tmp_path / "resumed" / "dsslic.safetensors").exists()
    train_dsslic(cfg, *train_dirs, tmp_path / "resumed", progress=False)
    a = load_model(tmp_path / "straight" / "dsslic.safetensors", expect="dsslic")
    b = load_model(tmp_path / "resumed" / "dsslic.safetensors", expect="dsslic")
    assert a.fingerprint == b.fingerprint
    log = pd.read_parquet(tmp_path / "resumed" / "train_log.parquet")
    assert list(log["iteration"]) == list(range(1, 9))


def test_resume_refuses_another_model(train_dirs, tmp_path):
    train_dsslic({**CFG, "iterations": 4}, *train_dirs, tmp_path, stop_after=2, progress=False)
    with pytest.raises(errors.ConfigError, match="cannot resume, the saved run has ndf = 8"):
        train_dsslic({**CFG, "iterations": 4, "ndf": 16}, *train_dirs, tmp_path, progress=False)


def test_schedule_constant_then_linear_decay():
    cfg = DSSLICTrainConfig(lr=1.0, decay_fraction=0.5)
    rates = [learning_rate(cfg, i, 10) for i in range(10)]
    assert rates[:5] == [1.0] * 5
    assert rates[5:] == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2])


def test_cli_train_dsslic_and_bad_config(train_dirs, tmp_path, capsys):
    cfg = tmp_path / "params.yaml"
    cfg.write_text("train_dsslic:\n  preset: tiny\n  label_nc: 5\n  ndf: 8\n  batch_size: 2\n")
    assert main(["train-dsslic", "--config", str(cfg), "--images", str(train_dirs[0]), "--segs", str(train_dirs[1]),
                 "--out", str(tmp_path / "m"), "--iterations", "2", "--no-progress"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["completed"] and printed["model_path"] == str(tmp_path / "m" / "dsslic.safetensors")
    assert load_model(tmp_path / "m" / "dsslic.safetensors", expect="dsslic").config.label_nc == 5
    with pytest.raises(errors.ConfigError, match="unknown train_dsslic keys"):
        DSSLICTrainConfig.from_dict({"learning_rate": 1})
    assert main(["train-dsslic", "--images", str(tmp_path / "none"), "--segs", str(train_dirs[1]),
                 "--out", str(tmp_path / "n")]) == 2


def test_ssim_reference_properties():
    x = torch.rand(2, 3, 24, 24) * 2 - 1
    assert float(ssim(x, x)) == pytest.approx(1.0, abs=1e-6)
    assert float(ssim(x, x + 0.3 * torch.randn_like(x))) < 0.9


def test_vgg_without_weights_is_off_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        assert load_vgg_loss(None) is None
    assert "switched off" in caplog.text


def lpips_file(path, net="vgg"):
    """A converted-LPIPS-layout file (random weights, non-negative linear layers) as semlic weights writes."""
    from safetensors.torch import save_file

    from semlic import lpips

    torch.manual_seed(0)
    model = lpips.LPIPS(net)
    for lin in model.lins:
        lin.weight.data.abs_()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
              metadata={"format": lpips.FORMAT, "lpips_version": lpips.VERSION, "net": net})
    return model


def test_vgg16_of_the_lpips_weights_at_the_counterpart_layers(tmp_path, monkeypatch, caplog):
    from torchvision.models import vgg19

    from semlic.nn import losses

    assert losses.resolve_vgg_layers(losses.VGG_LAYERS, vgg19().features) == (1, 6, 11, 20, 29)
    assert losses.resolve_vgg_layers(("relu5_4",), vgg19().features) == (35,)
    path = tmp_path / "lpips_vgg.safetensors"
    reference = lpips_file(path)
    loss = load_vgg_loss(path)
    assert loss.arch == "vgg16" and loss.layers == (1, 6, 11, 18, 25)     # relu1_1 .. relu5_1 of VGG16
    for name, tensor in loss.features.state_dict().items():
        assert torch.equal(tensor, reference.features.state_dict()[name])
    smic = load_vgg_loss(path, layers=("relu5_4",), layer_weights=(1.0,), distance="mse")
    assert smic.layers == (29,)                                             # VGG16 has no relu5_4: relu5_3
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert float(loss(x, x)) == 0.0 and float(loss(x, -x)) > 0 and float(smic(x, -x)) > 0
    lpips_file(tmp_path / "lpips_alex.safetensors", "alex")
    with pytest.raises(errors.CheckpointError, match="VGG16"):
        load_vgg_loss(tmp_path / "lpips_alex.safetensors")
    # auto: the file when it is there, else off with a warning that says how to get it
    with caplog.at_level(logging.WARNING):
        assert load_vgg_loss("auto") is None
    assert "semlic weights lpips_vgg" in caplog.text
    monkeypatch.setattr(losses, "DEFAULT_VGG_WEIGHTS", path)
    assert load_vgg_loss("auto").layers == loss.layers


def test_dsslic_trains_with_the_vgg16_term(train_dirs, tmp_path, monkeypatch):
    from semlic.nn import losses

    monkeypatch.setattr(losses, "DEFAULT_VGG_WEIGHTS", lpips_file(tmp_path / "vgg.safetensors") and
                        tmp_path / "vgg.safetensors")
    train_dsslic({**CFG, "iterations": 2, "gan": False, "perceptual_off_fraction": 0}, *train_dirs, tmp_path / "on",
                 progress=False)
    log = pd.read_parquet(tmp_path / "on" / "train_log.parquet")
    assert (log["vgg"] > 0).all()
    train_dsslic({**CFG, "iterations": 2, "gan": False, "vgg_weights": None}, *train_dirs, tmp_path / "off",
                 progress=False)
    assert "vgg" not in pd.read_parquet(tmp_path / "off" / "train_log.parquet").columns


def test_vgg_from_a_local_file(tmp_path):
    from torchvision.models import vgg19

    torch.manual_seed(0)
    reference = vgg19(weights=None)
    path = tmp_path / "vgg19.pth"
    torch.save({f"features.{k}": v for k, v in reference.features.state_dict().items()}, path)
    loss = load_vgg_loss(path)
    for name, tensor in loss.features.state_dict().items():
        torch.testing.assert_close(tensor, reference.features.state_dict()[name])
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert float(loss(x, x)) == 0.0 and float(loss(x, -x)) > 0
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(errors.CheckpointError, match="VGG19"):
        load_vgg_loss(tmp_path / "bad.pth")
