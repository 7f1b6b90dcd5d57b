"""The prepare stage: sizes, manifest, idempotent reruns, label resizing, CLI."""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from semlic.data import commands
from semlic.data.prepare import MANIFEST_SCHEMA, prepare_dataset
from semlic.data.synthetic import IGNORE_INDEX, NUM_CLASSES
from semlic.errors import ConfigError, DatasetRootError, ManualDownloadError, UnknownDatasetError

SIZE = (32, 48)  # (height, width) of the resized train split


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def mtimes(directory: Path) -> dict[str, int]:
    return {str(p.relative_to(directory)): p.stat().st_mtime_ns for p in directory.rglob("*") if p.is_file()}


def make_camvid(root: Path) -> None:
    """Two 30x40 train images and one test image; labels hold 0, 3, 7 and 11 (unlabelled) in blocks."""
    rng = np.random.default_rng(3)
    label = np.zeros((30, 40), np.uint8)
    label[:, 10:20], label[:, 20:30], label[:, 30:] = 3, 7, 11
    for split, names in (("train", ["0001TP_000002", "0001TP_000001"]), ("val", ["0016E5_000001"]), ("test", ["Seq05VD_000001"])):
        for folder in (split, f"{split}annot"):
            (root / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(root / split / f"{name}.png")
            Image.fromarray(label, "L").save(root / f"{split}annot" / f"{name}.png")


@pytest.fixture
def synthetic_out(tmp_path):
    out = tmp_path / "prepared"
    manifest = prepare_dataset("synthetic", None, out, train_size=SIZE, limit=3, workers=2, show_progress=False)
    return out, manifest


def test_synthetic_sizes_files_and_manifest(synthetic_out):
    out, manifest = synthetic_out
    assert list(manifest.columns) == MANIFEST_SCHEMA.names
    assert list(manifest.columns[:6]) == ["id", "split", "width", "height", "sha256", "has_label"]
    assert list(zip(manifest.split, manifest.id)) == sorted(zip(manifest.split, manifest.id))
    assert manifest.split.value_counts().to_dict() == {"test": 3, "train": 3, "val": 3}
    assert list(manifest[manifest.split == "train"].id) == ["synth_00000", "synth_00001", "synth_00002"]
    for row in manifest.itertuples():
        image_path = out / row.split / "images" / f"{row.id}.png"
        label_path = out / row.split / "labels" / f"{row.id}.png"
        assert sha256(image_path) == row.sha256 and sha256(label_path) == row.label_sha256 and row.has_label
        with Image.open(image_path) as image, Image.open(label_path) as label:
            expected = (SIZE[1], SIZE[0]) if row.split == "train" else (256, 256)  # (W, H)
            assert image.size == label.size == expected == (row.width, row.height)
            assert image.mode == "RGB" and label.mode == "L"
            values = set(np.unique(np.asarray(label)).tolist())
        assert values <= set(range(NUM_CLASSES)) | {IGNORE_INDEX}  # NEAREST invents no value


def test_manifest_file_is_deterministic_parquet_without_pandas_index(synthetic_out, tmp_path):
    out, manifest = synthetic_out
    table = pq.read_table(out / "manifest.parquet")
    assert table.schema.names == MANIFEST_SCHEMA.names
    assert b"pandas" not in (table.schema.metadata or {}) and b"semlic.prepare" in table.schema.metadata
    other = tmp_path / "again"
    prepare_dataset("synthetic", None, other, train_size=SIZE, limit=3, workers=1, show_progress=False)
    assert (other / "manifest.parquet").read_bytes() == (out / "manifest.parquet").read_bytes()


def test_rerun_does_no_work(synthetic_out):
    out, manifest = synthetic_out
    before = mtimes(out)
    again = prepare_dataset("synthetic", "ignored", out, train_size=SIZE, limit=3, workers=2, show_progress=False)
    assert mtimes(out) == before  # nothing rewritten, the manifest included
    assert again.equals(manifest)


def test_damaged_output_is_rewritten_and_only_it(synthetic_out):
    out, manifest = synthetic_out
    damaged = out / "val" / "images" / "synth_00065.png"
    damaged.write_bytes(b"not a png")
    (out / "test" / "labels" / "synth_00081.png").unlink()
    before = mtimes(out)
    again = prepare_dataset("synthetic", None, out, train_size=SIZE, limit=3, show_progress=False)
    changed = {k for k, v in mtimes(out).items() if before.get(k) != v}
    assert changed == {"val/images/synth_00065.png", "test/labels/synth_00081.png"}
    assert again.equals(manifest) and sha256(damaged) == manifest.set_index("id").loc["synth_00065", "sha256"]


def test_smaller_limit_removes_stale_files_and_new_size_rewrites_train(synthetic_out):
    out, _ = synthetic_out
    manifest = prepare_dataset("synthetic", None, out, train_size=SIZE, limit=2, show_progress=False)
    assert len(manifest) == 6
    assert sorted(p.name for p in (out / "train" / "images").iterdir()) == ["synth_00000.png", "synth_00001.png"]
    assert not (out / "val" / "labels" / "synth_00066.png").exists()
    manifest = prepare_dataset("synthetic", None, out, train_size=(16, 16), limit=2, show_progress=False)
    train = manifest[manifest.split == "train"]
    assert (train.width == 16).all() and (train.height == 16).all()
    with Image.open(out / "train" / "labels" / "synth_00001.png") as label:
        assert label.size == (16, 16)


def test_camvid_train_resized_test_native_labels_nearest(tmp_path):
    make_camvid(tmp_path / "camvid")
    out = tmp_path / "out"
    manifest = prepare_dataset("camvid", tmp_path / "camvid", out, train_size=(20, 25), splits=["train", "test"],
                               show_progress=False)
    assert list(zip(manifest.split, manifest.id)) == [
        ("test", "Seq05VD_000001"), ("train", "0001TP_000001"), ("train", "0001TP_000002"),
    ]  # fmt: skip
    assert not (out / "val").exists()
    train_label = np.asarray(Image.open(out / "train" / "labels" / "0001TP_000001.png"))
    assert train_label.shape == (20, 25)
    assert set(np.unique(train_label).tolist()) == {0, 3, 7, 255}  # only source classes; unlabelled 11 -> 255
    test_image = np.asarray(Image.open(out / "test" / "images" / "Seq05VD_000001.png"))
    source = np.asarray(Image.open(tmp_path / "camvid" / "test" / "Seq05VD_000001.png"))
    np.testing.assert_array_equal(test_image, source)  # native size, lossless copy


def test_changed_source_is_prepared_again(tmp_path):
    make_camvid(tmp_path / "camvid")
    out = tmp_path / "out"
    first = prepare_dataset("camvid", tmp_path / "camvid", out, splits=["test"], show_progress=False)
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "camvid" / "test" / "Seq05VD_000001.png")
    second = prepare_dataset("camvid", tmp_path / "camvid", out, splits=["test"], show_progress=False)
    assert first.sha256[0] != second.sha256[0] and first.source_sha256[0] != second.source_sha256[0]
    assert not np.asarray(Image.open(out / "test" / "images" / "Seq05VD_000001.png")).any()


def test_unlabelled_folder_has_no_label_files(tmp_path):
    (tmp_path / "photos" / "trip").mkdir(parents=True)
    Image.fromarray(np.full((10, 12, 3), 90, np.uint8)).save(tmp_path / "photos" / "trip" / "beach.jpg")
    Image.fromarray(np.full((9, 7), 200, np.uint8), "L").save(tmp_path / "photos" / "grey.png")
    manifest = prepare_dataset("folder", tmp_path / "photos", tmp_path / "out", show_progress=False)
    assert list(manifest.id) == ["grey", "trip/beach"] and not manifest.has_label.any()
    assert manifest.label_sha256.isna().all()
    assert (manifest.width.tolist(), manifest.height.tolist()) == ([7, 12], [9, 10])  # test split: native size
    assert (tmp_path / "out" / "test" / "images" / "trip" / "beach.png").is_file()
    assert not (tmp_path / "out" / "test" / "labels").exists()


def test_bad_arguments(tmp_path):
    with pytest.raises(UnknownDatasetError, match="has splits"):
        prepare_dataset("synthetic", None, tmp_path, splits=["holdout"], show_progress=False)
    with pytest.raises(ConfigError, match="limit"):
        prepare_dataset("synthetic", None, tmp_path, limit=0, show_progress=False)
    with pytest.raises(DatasetRootError):
        prepare_dataset("kodak", tmp_path / "absent", tmp_path / "out", show_progress=False)
    assert not (tmp_path / "out").exists()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="semlic")
    commands.register_cli(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_prepare_and_download(tmp_path, capsys):
    parser = _parser()
    args = parser.parse_args(["prepare", "--dataset", "synthetic", "--out", str(tmp_path / "out"),
                              "--size", "16", "24", "--limit", "1", "--workers", "1", "--no-progress"])
    assert args.func(args) == 0
    assert "synthetic train: 1 images" in capsys.readouterr().out
    with Image.open(tmp_path / "out" / "train" / "images" / "synth_00000.png") as image:
        assert image.size == (24, 16)
    args = parser.parse_args(["prepare", "--dataset", "camvid", "--out", str(tmp_path / "x")])
    with pytest.raises(DatasetRootError, match="--root"):
        args.func(args)
    args = parser.parse_args(["download", "cityscapes", "--root", str(tmp_path / "cs")])
    with pytest.raises(ManualDownloadError, match="gtFine"):
        args.func(args)
