"""SMapNet's training pairs: PSPNet's logits of up(c^) as the codec computes them, and the reference map."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from semlic import errors
from semlic.methods.base import module_fingerprint
from semlic.layered_codec import compact_image
from semlic.methods.edms import matched as edms_matched
from semlic.methods.edms import pairs
from semlic.cli import main
from semlic.imageio import load_image, load_label_map, save_png
from semlic.model_files import load_model
from semlic.segnet.metrics import confusion_matrix, scores_from_confusion
from tests.test_edms_support import save_tiny_segnet, write_prepared


@pytest.fixture(scope="module")
def segnet_path(tmp_path_factory):
    return save_tiny_segnet(tmp_path_factory.mktemp("segnet") / "segnet.safetensors")


def test_lowres_logits_upsampled_are_pspnet_output(segnet_path):
    segnet = load_model(segnet_path)
    images = torch.rand(2, 3, 40, 56)
    with torch.inference_mode():
        full = segnet(images)
        lowres = edms_matched.segnet_lowres_logits(segnet, images)
    assert lowres.shape == (2, 5, 5, 7)
    torch.testing.assert_close(edms_matched.upsample_logits(lowres, (40, 56), segnet.config.align_corners), full,
                               rtol=0, atol=1e-5)


def test_pairs_are_what_the_codec_derives(tiny_model, segnet_path, tmp_path):
    segnet = load_model(segnet_path)
    prepared, refs = write_prepared(tmp_path / "prep", count=3, size=32)
    table = pairs.generate_pairs(tiny_model, segnet, prepared, "train", refs, tmp_path / "pairs", progress=False)
    assert list(table["id"]) == ["im00", "im01", "im02"] and table["miou"].between(0, 1).all()
    info = json.loads((tmp_path / "pairs" / "pairs.json").read_text())
    assert info["num_classes"] == 5 and info["segnet_fingerprint"] == module_fingerprint(segnet).hex()
    for row in table.itertuples():
        image, ref = load_image(prepared / "train" / "images" / f"{row.id}.png"), load_label_map(refs / f"{row.id}.png")
        compact = compact_image(tiny_model, image, ref)
        matched = edms_matched.matched_segmentation(compact, tiny_model, segnet)
        expected = scores_from_confusion(confusion_matrix(matched, ref, 5)).miou
        assert row.miou == pytest.approx(expected, abs=1e-9)
        stored = load_file(str(tmp_path / "pairs" / "logits" / f"{row.id}.safetensors"))["logits"]
        assert stored.dtype == torch.float16 and stored.shape == (5, 4, 4)
        np.testing.assert_array_equal(load_label_map(tmp_path / "pairs" / "targets" / f"{row.id}.png"), ref)


def test_shards_and_bad_reference_maps(tiny_model, segnet_path, tmp_path):
    segnet = load_model(segnet_path)
    prepared, refs = write_prepared(tmp_path / "prep", count=3, size=32)
    shard = pairs.generate_pairs(tiny_model, segnet, prepared, "train", refs, tmp_path / "p", ids=["im01"], progress=False)
    assert list(shard["id"]) == ["im01"] and len(list((tmp_path / "p" / "logits").iterdir())) == 1
    with pytest.raises(errors.DatasetError, match="nope"):
        pairs.generate_pairs(tiny_model, segnet, prepared, "train", refs, tmp_path / "p", ids=["nope"], progress=False)
    save_png(refs / "im00.png", np.full((32, 32), 255, np.uint8))
    with pytest.raises(errors.LabelMapError, match="labels < 5"):
        pairs.generate_pairs(tiny_model, segnet, prepared, "train", refs, tmp_path / "p", progress=False)


def test_cli_smap_pairs(tiny_model_path, segnet_path, tmp_path, capsys):
    prepared, refs = write_prepared(tmp_path / "prep", count=2, size=32)
    out = tmp_path / "pairs"
    assert main(["smap-pairs", "--model", str(tiny_model_path), "--segnet", str(segnet_path), "--data", str(prepared),
                 "--segs", str(refs), "--out", str(out), "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["pairs"] == 2
    assert list(pd.read_parquet(out / "pairs.parquet")["id"]) == ["im00", "im01"]
