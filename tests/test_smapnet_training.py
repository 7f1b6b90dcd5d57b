"""SMapNet training (EDMS step 2): the loss falls, the final layer learns 10x slower, resume = same run."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from semlic import errors
from semlic.cli import main
from semlic.methods.edms import SMapNet, smapnet_config
from semlic.methods.edms.pairs import generate_pairs
from semlic.methods.edms.training import SMapNetTrainConfig, build_optimizer, train_smapnet
from semlic.model_files import load_model
from tests.test_edms_support import save_tiny_segnet, write_prepared

CFG = dict(preset="tiny", model={"recursions": 3}, batch_size=4, lr=2e-3, checkpoint_every=4, crop=24)


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def pairs_dir(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("smap")
    segnet = load_model(save_tiny_segnet(root / "segnet.safetensors"), expect="pspnet")
    prepared, refs = write_prepared(root / "prep", count=6, size=32)
    generate_pairs(tiny_model, segnet, prepared, "train", refs, root / "pairs", progress=False)
    return root / "pairs"


@pytest.mark.numeric
def test_loss_falls(pairs_dir, tmp_path, seed, bound):
    result = train_smapnet({**CFG, "iterations": 40, "seed": seed}, pairs_dir, tmp_path, progress=False)
    assert result.completed and result.model_path == tmp_path / "smapnet.safetensors"
    log = pd.read_parquet(tmp_path / "train_log.parquet")
    assert list(log["iteration"]) == list(range(1, 41))
    bound("loss, last 5 / first 5", log["loss"].iloc[-5:].mean() / log["loss"].iloc[:5].mean(), "<", 0.7)
    net = load_model(result.model_path, expect="smapnet")
    assert net.config.num_classes == 5 and net.config.recursions == 3 and len(net.fingerprint) == 8


def test_final_layer_learns_at_a_tenth_of_the_rate():
    net = SMapNet(smapnet_config("tiny", num_classes=5))
    groups = build_optimizer(net, SMapNetTrainConfig(lr=5e-4)).param_groups
    assert [g["lr"] for g in groups] == [5e-4, pytest.approx(5e-5)]
    assert groups[1]["params"] == [net.conv_out.weight, net.conv_out.bias]
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))


def test_resume_continues_the_same_run(pairs_dir, tmp_path):
    cfg = {**CFG, "iterations": 10}
    straight = load_model(train_smapnet(cfg, pairs_dir, tmp_path / "straight", progress=False).model_path,
                          expect="smapnet")
    first = train_smapnet(cfg, pairs_dir, tmp_path / "resumed", stop_after=5, progress=False)
    assert not first.completed and first.iteration == 5 and first.model_path is None
    assert not (tmp_path / "resumed" / "smapnet.safetensors").exists()
    resumed = load_model(train_smapnet(cfg, pairs_dir, tmp_path / "resumed", progress=False).model_path,
                         expect="smapnet")
    assert straight.fingerprint == resumed.fingerprint
    assert list(pd.read_parquet(tmp_path / "resumed" / "train_log.parquet")["iteration"]) == list(range(1, 11))
    with pytest.raises(errors.ConfigError, match="cannot resume, the saved run has lr = 0.002"):
        train_smapnet({**cfg, "lr": 1e-3}, pairs_dir, tmp_path / "resumed", progress=False)


def test_cli_and_config_errors(pairs_dir, tmp_path, capsys):
    config = tmp_path / "params.yaml"
    config.write_text("train_smapnet:\n  preset: tiny\n  model: {recursions: 2}\n  batch_size: 3\n  crop: 16\n")
    assert main(["train-smapnet", "--config", str(config), "--pairs", str(pairs_dir), "--out", str(tmp_path / "m"),
                 "--epochs", "1", "--no-progress"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["completed"] and printed["iteration"] == printed["total_iterations"] == 2  # 6 pairs / 3
    assert load_model(printed["model_path"], expect="smapnet").config.recursions == 2
    assert main(["train-smapnet", "--pairs", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "pairs.json" in capsys.readouterr().err
    with pytest.raises(errors.ConfigError, match="unknown train_smapnet keys"):
        train_smapnet({"learning_rate": 1}, pairs_dir, tmp_path / "y")
    with pytest.raises(errors.ConfigError, match="crop 64"):
        train_smapnet({**CFG, "crop": 64}, pairs_dir, tmp_path / "z")


def test_bad_training_values_are_refused():
    with pytest.raises(errors.ConfigError, match="batch_size"):
        SMapNetTrainConfig(batch_size=0)
    with pytest.raises(errors.ConfigError, match="epochs or iterations"):
        SMapNetTrainConfig(epochs=0)
