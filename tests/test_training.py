"""DSSLIC base training on CPU: the loss falls, and a resumed run is the same run."""

from __future__ import annotations

import logging

import pandas as pd
import pytest
import torch

from semlic import errors
from semlic.cli import main
from semlic.imageio import save_png
from semlic.losses import load_vgg_loss, ssim
from semlic.training import BaseTrainConfig, learning_rate, load_dsslic, train_base
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


def test_loss_falls(train_dirs, tmp_path):
    train_base({**CFG, "iterations": 30}, *train_dirs, tmp_path)
    log = pd.read_parquet(tmp_path / "train_log.parquet")
    assert list(log["iteration"]) == list(range(1, 31))
    assert log["l1"].iloc[-5:].mean() < 0.6 * log["l1"].iloc[:5].mean()
    assert {"g_gan", "feat", "d", "images_per_s"} <= set(log.columns)
    assert (tmp_path / "base.safetensors").is_file() and (tmp_path / "base.json").is_file()


def test_resume_continues_the_same_run(train_dirs, tmp_path):
    cfg = {**CFG, "iterations": 8}
    train_base(cfg, *train_dirs, tmp_path / "straight")
    train_base(cfg, *train_dirs, tmp_path / "resumed", stop_after=3)
    assert not (tmp_path / "resumed" / "base.safetensors").exists()
    train_base(cfg, *train_dirs, tmp_path / "resumed")
    a = load_dsslic(tmp_path / "straight" / "base.safetensors")
    b = load_dsslic(tmp_path / "resumed" / "base.safetensors")
    assert a.fingerprint == b.fingerprint
    log = pd.read_parquet(tmp_path / "resumed" / "train_log.parquet")
    assert list(log["iteration"]) == list(range(1, 9))


def test_resume_refuses_another_model(train_dirs, tmp_path):
    train_base({**CFG, "iterations": 4}, *train_dirs, tmp_path, stop_after=2)
    with pytest.raises(errors.CheckpointError, match="another model configuration"):
        train_base({**CFG, "iterations": 4, "ndf": 16}, *train_dirs, tmp_path)


def test_schedule_constant_then_linear_decay():
    cfg = BaseTrainConfig(lr=1.0, decay_fraction=0.5)
    rates = [learning_rate(cfg, i, 10) for i in range(10)]
    assert rates[:5] == [1.0] * 5
    assert rates[5:] == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2])


def test_cli_train_base_and_bad_config(train_dirs, tmp_path):
    cfg = tmp_path / "params.yaml"
    cfg.write_text("train_base:\n  preset: tiny\n  label_nc: 5\n  ndf: 8\n  batch_size: 2\n")
    assert main(["train-base", "--config", str(cfg), "--images", str(train_dirs[0]), "--segs", str(train_dirs[1]),
                 "--out", str(tmp_path / "m"), "--iterations", "2"]) == 0
    assert load_dsslic(tmp_path / "m" / "base.safetensors").config.label_nc == 5
    with pytest.raises(errors.ConfigError, match="unknown train_base keys"):
        BaseTrainConfig.from_dict({"learning_rate": 1})
    assert main(["train-base", "--images", str(tmp_path / "none"), "--segs", str(train_dirs[1]),
                 "--out", str(tmp_path / "n")]) == 2


def test_ssim_reference_properties():
    x = torch.rand(2, 3, 24, 24) * 2 - 1
    assert float(ssim(x, x)) == pytest.approx(1.0, abs=1e-6)
    assert float(ssim(x, x + 0.3 * torch.randn_like(x))) < 0.9


def test_vgg_without_weights_is_off_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        assert load_vgg_loss(None) is None
    assert "switched off" in caplog.text


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
