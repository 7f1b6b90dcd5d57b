"""EDMS step 3: FineNet fine-tuned on s^ is kept only if it predicts better on held-out images."""

from __future__ import annotations

import json

import pytest
import torch

from semlic import errors
from semlic.cli import main
from semlic.methods.edms.finetune import finetune_finenet, matched_set, prediction_psnr
from semlic.model_files import load_model
from tests.test_edms_support import save_tiny_segnet, save_tiny_smapnet, write_prepared


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    prepared, refs = write_prepared(root / "prep", count=4, size=32, split="train")
    write_prepared(root / "prep", count=2, size=32, split="val")
    return prepared, refs, save_tiny_segnet(root / "segnet.safetensors"), save_tiny_smapnet(root / "smapnet.safetensors")


@pytest.mark.parametrize("maps", ["matched", "reference"])
def test_decision_follows_the_held_out_psnr(tiny_model_path, setup, tmp_path, maps):
    prepared, refs, segnet_path, smapnet_path = setup
    segnet, smapnet = load_model(segnet_path), load_model(smapnet_path)
    chosen = finetune_finenet({"iterations": 6, "batch_size": 2, "lr": 1e-3, "maps": maps}, tiny_model_path, segnet,
                              smapnet, prepared, refs, tmp_path, progress=False)
    record = json.loads((tmp_path / "finetune.json").read_text())
    assert record["kept"] == (record["psnr_after_db"] > record["psnr_before_db"])
    assert chosen == (tmp_path / "dsslic_finetuned.safetensors" if record["kept"] else tiny_model_path)
    base, tuned = load_model(tiny_model_path), load_model(tmp_path / "dsslic_finetuned.safetensors")
    same = {name: torch.equal(a, tuned.state_dict()[name]) for name, a in base.state_dict().items()}
    assert all(v for k, v in same.items() if k.startswith("compnet."))
    assert not all(v for k, v in same.items() if k.startswith("finenet."))
    held_out = matched_set(tuned, segnet, smapnet, prepared, "val", refs, progress=False)
    assert prediction_psnr(tuned, held_out) == pytest.approx(record["psnr_after_db"])


def test_cli_and_bad_config(tiny_model_path, setup, tmp_path, capsys):
    prepared, refs, segnet_path, _ = setup
    assert main(["finetune-finenet", "--model", str(tiny_model_path), "--segnet", str(segnet_path), "--data",
                 str(prepared), "--segs", str(refs), "--out", str(tmp_path), "--method", "edms_noenh",
                 "--iterations", "2", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["method"] == "edms_noenh"
    with pytest.raises(errors.ConfigError, match="maps"):
        finetune_finenet({"maps": "ground_truth"}, tiny_model_path, None, None, prepared, refs, tmp_path)
