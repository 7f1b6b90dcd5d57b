"""Segmenting images (label PNGs + table), evaluation, the CLI, and CamVid end to end."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from semlic import cli
from semlic.errors import ConfigError
from semlic.imageio import load_image, load_label_map, save_png
from semlic.model_files import load_model
from semlic.segnet import PSPNet, PSPNetConfig, predict_labels
from semlic.segnet.evaluate import evaluate_segnet
from semlic.segnet.segment import segment_images, segment_split, write_segment_table
from semlic.segnet.train import train_segnet
from semlic.segnet.metrics import confusion_matrix, scores_from_confusion
from semlic.segnet.prepared import image_to_tensor

from .test_segnet_support import one_thread  # noqa: F401 (autouse fixture)
from .test_segnet_support import TINY_MODEL, prepare_synthetic, random_image, write_samples
from .test_segnet_weights import csail_decoder_state, deep_stem_resnet_state


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return PSPNet(PSPNetConfig(**TINY_MODEL)).eval()


def test_segment_split_writes_native_size_maps_and_scores(tiny_model, tmp_path):
    prepared = prepare_synthetic(tmp_path / "prepared", size=48, limit=5)
    table = segment_split(tiny_model, prepared, "val", tmp_path / "maps", batch_size=2)
    ids = sorted(path.stem for path in (prepared / "val" / "images").glob("*.png"))
    assert list(table["id"]) == ids and len(ids) == 5
    assert table.attrs["images_per_s"] > 0
    for row in table.itertuples():
        written = load_label_map(tmp_path / "maps" / f"{row.id}.png")
        assert written.shape == (48, 48) == (row.height, row.width)
        assert row.classes_present == sorted(np.unique(written).tolist())
        image = load_image(prepared / "val" / "images" / f"{row.id}.png")
        with torch.no_grad():
            expected = predict_labels(tiny_model, image_to_tensor(image)[None])[0].numpy()
        assert np.array_equal(written, expected)
        truth = load_label_map(prepared / "val" / "labels" / f"{row.id}.png")
        scores = scores_from_confusion(confusion_matrix(written, truth, 8)).to_dict()
        assert row.miou == pytest.approx(scores["miou"])
        assert row.pixel_accuracy == pytest.approx(scores["pixel_accuracy"])


def test_segment_images_mixed_sizes_and_missing_labels(tiny_model, tmp_path):
    paths = write_samples(tmp_path / "set", range(2), (40, 56))
    paths += write_samples(tmp_path / "set", range(2, 4), (64, 32), with_labels=False)
    paths.insert(1, tmp_path / "set" / "images" / "noise.png")
    save_png(paths[1], random_image(40, 56))
    table = segment_images(tiny_model, paths, tmp_path / "maps", label_dir=tmp_path / "set" / "labels", batch_size=4)
    assert list(table["id"]) == ["syn0000", "noise", "syn0001", "syn0002", "syn0003"]
    assert [(h, w) for h, w in zip(table["height"], table["width"])] == [(40, 56)] * 3 + [(64, 32)] * 2
    assert table["miou"].notna().tolist() == [True, False, True, False, False]
    assert table["pixel_accuracy"].between(0, 1).sum() == 2
    with pytest.raises(ConfigError, match="unique"):
        segment_images(tiny_model, [paths[0], paths[0]], tmp_path / "maps")
    for path in paths:
        with Image.open(tmp_path / "maps" / f"{path.stem}.png") as written:
            assert written.mode == "L" and written.size == Image.open(path).size


def test_segment_table_parquet_is_sorted_and_deterministic(tiny_model, tmp_path):
    paths = write_samples(tmp_path / "set", range(3), (32, 32))
    table = segment_images(tiny_model, paths[::-1], tmp_path / "maps", label_dir=tmp_path / "set" / "labels")
    write_segment_table(table, tmp_path / "a.parquet")
    table.attrs["images_per_s"] = 1.0
    write_segment_table(table, tmp_path / "b.parquet")
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    stored = pq.read_table(tmp_path / "a.parquet")
    assert stored.column("id").to_pylist() == ["syn0000", "syn0001", "syn0002"]
    classes_type = stored.schema.field("classes_present").type
    assert pa.types.is_list(classes_type) and classes_type.value_type == pa.int16()


def test_evaluate_matches_the_confusion_of_the_written_maps(tiny_model, tmp_path):
    prepared = prepare_synthetic(tmp_path / "prepared", size=40, limit=4)
    segment_split(tiny_model, prepared, "val", tmp_path / "maps")
    confusion = sum(
        confusion_matrix(load_label_map(tmp_path / "maps" / path.name), load_label_map(path), 8)
        for path in sorted((prepared / "val" / "labels").glob("*.png"))
    )
    result = evaluate_segnet(tiny_model, prepared, "val", batch_size=3)
    expected = scores_from_confusion(confusion).to_dict()
    assert result["miou"] == pytest.approx(expected["miou"])
    assert result["pixels"] == expected["pixels"] and 0.8 * 4 * 40 * 40 < result["pixels"] < 4 * 40 * 40  # ignore bands
    rounded = [[None if v is None else round(v, 9) for v in d["per_class_iou"]] for d in (result, expected)]
    assert rounded[0] == rounded[1]
    assert result["images"] == 4 and result["images_per_s"] > 0


def test_cli_train_then_segment(tmp_path, capsys):
    prepared = prepare_synthetic(tmp_path / "prepared", size=48, limit=4)
    (tmp_path / "segnet.yaml").write_text(
        "model:\n" + "".join(f"  {k}: {v}\n" for k, v in TINY_MODEL.items())
        + "epochs: 1\nbatch_size: 2\ncrop_size: 32\ncheckpoint_every: 2\n"
    )
    out = tmp_path / "models" / "segnet.safetensors"
    code = cli.main(["train-segnet", "--config", str(tmp_path / "segnet.yaml"), "--data", str(prepared),
                     "--out", str(tmp_path / "models"), "--iterations", "3", "--no-progress", "--eval-split", "val"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["completed"] and result["total_steps"] == 3 and result["eval"]["images"] == 4
    assert result["model_path"] == str(out)
    assert out.is_file() and (tmp_path / "models" / "train_log.parquet").is_file()
    code = cli.main(["segment", "--model", str(out), "--data", str(prepared), "--split", "val",
                     "--out", str(tmp_path / "segments"), "--batch-size", "2"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 4 and 0 <= summary["mean_image_miou"] <= 1
    assert len(list((tmp_path / "segments").glob("*.png"))) == 4
    assert pq.read_table(tmp_path / "segments" / "segments.parquet").num_rows == 4


def test_cli_reports_bad_config_and_bad_model(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("model: {num_classes: 8}\niterations: 2\nbatchsize: 4\n")
    code = cli.main(["train-segnet", "--config", str(tmp_path / "bad.yaml"), "--data", str(tmp_path),
                     "--out", str(tmp_path / "m")])
    assert code == 2 and "batchsize" in capsys.readouterr().err
    (tmp_path / "broken.safetensors").write_bytes(b"broken")
    code = cli.main(["segment", "--model", str(tmp_path / "broken.safetensors"), "--data", str(tmp_path),
                     "--split", "val", "--out", str(tmp_path / "out")])
    assert code == 5 and "not a readable safetensors" in capsys.readouterr().err


def test_cli_converts_csail_weights(tmp_path, capsys):
    torch.manual_seed(0)
    encoder, decoder = deep_stem_resnet_state((2, 2, 2, 2), bottleneck=False), csail_decoder_state(512, 150)
    torch.save(encoder, tmp_path / "encoder.pth")
    torch.save(decoder, tmp_path / "decoder.pth")
    out = tmp_path / "segnet.safetensors"
    code = cli.main(["convert-segnet", "--format", "csail", str(tmp_path / "encoder.pth"),
                     str(tmp_path / "decoder.pth"), "--encoder", "resnet18dilated", "--out", str(out)])
    assert code == 0 and json.loads(capsys.readouterr().out)["config"]["deep_stem"] is True
    reloaded = load_model(out, expect="pspnet")
    assert reloaded.config.backbone == "resnet18" and reloaded.config.aux_channels == 128
    assert torch.equal(reloaded.backbone.conv2.weight, encoder["conv2.weight"])
    assert torch.equal(reloaded.backbone.layer4[1].bn2.running_var, encoder["layer4.1.bn2.running_var"])
    assert torch.equal(reloaded.head[4].weight, decoder["conv_last.4.weight"])
    assert torch.equal(reloaded.aux_head[4].bias, decoder["conv_last_deepsup.bias"])
    code = cli.main(["convert-segnet", "--format", "csail", str(tmp_path / "encoder.pth"), "--out", str(out)])
    assert code == 2 and "two files" in capsys.readouterr().err


@pytest.mark.shared_data
def test_camvid_two_images_end_to_end(shared_data, tmp_path):
    camvid = shared_data / "camvid"
    if not (camvid / "test").is_dir():
        pytest.skip(f"CamVid not present under {camvid}")
    from semlic.data.datasets import get_spec
    from semlic.data.prepare import prepare_dataset

    spec = get_spec("camvid")
    prepare_dataset("camvid", camvid, tmp_path / "prepared", splits=["test"], limit=2, resize_splits=(),
                    show_progress=False)
    model_keys = dict(TINY_MODEL, num_classes=spec.num_classes, ignore_index=spec.ignore_index)
    config = {"model": model_keys, "iterations": 2, "batch_size": 2, "crop_size": 64, "train_split": "test"}
    train_segnet(config, tmp_path / "prepared", tmp_path / "segnet", progress=False)
    model = load_model(tmp_path / "segnet" / "segnet.safetensors", expect="pspnet")
    table = segment_split(model, tmp_path / "prepared", "test", tmp_path / "maps")
    assert len(table) == 2 and table["miou"].between(0, 1).all()
    for sample_id in table["id"]:
        written = load_label_map(tmp_path / "maps" / f"{sample_id}.png")
        assert written.shape == (360, 480) and written.max() < spec.num_classes
