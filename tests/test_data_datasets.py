"""Data set registry and loaders, each on a tiny tree shaped exactly like the real data set."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from semlic.data.datasets import (
    DATASETS,
    Sample,
    ade20k_to_train_ids,
    cityscapes_label_ids_to_train_ids,
    get_spec,
    list_samples,
    load_sample,
    resolve_root,
)
from semlic.data.synthetic import make_sample
from semlic.errors import DatasetLayoutError, DatasetRootError, SemlicError, UnknownDatasetError

SHARED_DATA = Path(os.environ.get("SEMLIC_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
RNG = np.random.default_rng(1234)


def write_rgb(path: Path, height: int = 6, width: int = 8, fmt: str = "PNG") -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = RNG.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    Image.fromarray(image, "RGB").save(path, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return image


def write_grey(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint8), "L").save(path)


def make_camvid(root: Path, counts=None) -> None:
    """root/{train,val,test}/<seq>_<frame>.png + root/<split>annot/ with values 0..11."""
    for split, count in (counts or {"train": 3, "val": 2, "test": 2}).items():
        for k in range(count):
            name = f"0001TP_{(count - k) * 30:06d}.png"  # written in reverse id order
            write_rgb(root / split / name)
            write_grey(root / f"{split}annot" / name, np.arange(48).reshape(6, 8) % 12)


# --- registry -------------------------------------------------------------------------------
def test_registry_specs():
    assert set(DATASETS) == {"camvid", "kodak", "ade20k", "cityscapes", "folder", "synthetic"}
    camvid = get_spec("camvid")
    assert (camvid.num_classes, camvid.ignore_index, camvid.splits) == (11, 255, ("train", "val", "test"))
    assert camvid.class_names[0] == "Sky" and camvid.class_names[10] == "Bicyclist"
    ade = get_spec("ade20k")
    assert (ade.num_classes, ade.ignore_index, ade.splits) == (150, 255, ("train", "val"))
    assert len(ade.class_names) == 150 == len(set(ade.class_names))
    assert ade.class_names[:3] == ("wall", "building", "sky") and ade.class_names[-1] == "flag"
    city = get_spec("cityscapes")
    assert (city.num_classes, city.ignore_index, len(city.class_names)) == (19, 255, 19)
    assert not get_spec("kodak").has_labels and get_spec("synthetic").has_labels
    with pytest.raises(UnknownDatasetError, match="expected one of"):
        get_spec("imagenet")
    with pytest.raises(UnknownDatasetError, match="has splits"):
        list_samples("kodak", "/nonexistent", "train")


def test_resolve_root_searches_the_configured_directories(tmp_path, monkeypatch):
    (tmp_path / "second" / "kodak").mkdir(parents=True)
    monkeypatch.setenv("SEMLIC_DATA_DIRS", os.pathsep.join([str(tmp_path / "first"), str(tmp_path / "second")]))
    assert resolve_root("kodak") == tmp_path / "second" / "kodak"
    assert resolve_root("kodak", root=tmp_path / "elsewhere") == tmp_path / "elsewhere"
    assert resolve_root("synthetic") is None
    with pytest.raises(DatasetRootError, match="none of"):
        resolve_root("camvid")


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetRootError, match="does not exist"):
        list_samples("camvid", tmp_path / "absent", "train")
    with pytest.raises(DatasetRootError, match="needs a root"):
        list_samples("camvid", None, "train")


# --- camvid ---------------------------------------------------------------------------------
def test_camvid_tree(tmp_path):
    make_camvid(tmp_path)
    train = list_samples("camvid", tmp_path, "train")
    assert [s.id for s in train] == ["0001TP_000030", "0001TP_000060", "0001TP_000090"]
    assert train[0].label_path == tmp_path / "trainannot" / "0001TP_000030.png"
    assert [len(list_samples("camvid", tmp_path, s)) for s in ("val", "test")] == [2, 2]
    image, label = load_sample(train[0])
    assert image.shape == (6, 8, 3) and image.dtype == np.uint8
    stored = np.arange(48).reshape(6, 8) % 12
    np.testing.assert_array_equal(label, np.where(stored == 11, 255, stored))  # unlabelled 11 -> ignore 255


def test_camvid_wrong_layout_says_what_was_expected_and_found(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetLayoutError, match=r"expected .*/train and .*/trainannot.*found images/, train/"):
        list_samples("camvid", tmp_path, "train")


def test_camvid_missing_label_and_bad_values(tmp_path):
    make_camvid(tmp_path)
    (tmp_path / "valannot" / "0001TP_000030.png").unlink()
    with pytest.raises(DatasetLayoutError, match="1 missing: 0001TP_000030.png"):
        list_samples("camvid", tmp_path, "val")
    sample = list_samples("camvid", tmp_path, "test")[0]
    write_grey(sample.label_path, np.full((6, 8), 12))
    with pytest.raises(DatasetLayoutError, match="0..11"):
        load_sample(sample)
    write_grey(sample.label_path, np.zeros((5, 8)))
    with pytest.raises(DatasetLayoutError, match="label is 8x5 but its image"):
        load_sample(sample)


# --- kodak ----------------------------------------------------------------------------------
def test_kodak_tree(tmp_path):
    for n in range(1, 25):
        write_rgb(tmp_path / f"kodim{n:02d}.png", *((8, 6) if n in (4, 9) else (6, 8)))
    (tmp_path / "SOURCE.md").write_text("not an image")
    samples = list_samples("kodak", tmp_path, "test")
    assert [s.id for s in samples] == [f"kodim{n:02d}" for n in range(1, 25)]
    image, label = load_sample(samples[3])
    assert image.shape == (8, 6, 3) and label is None
    (tmp_path / "kodim07.png").unlink()
    with pytest.raises(DatasetLayoutError, match=r"1 missing \(kodim07.png\)"):
        list_samples("kodak", tmp_path, "test")


# --- ade20k ---------------------------------------------------------------------------------
@pytest.mark.parametrize("wrapped", [True, False], ids=["root/ADEChallengeData2016", "root=ADEChallengeData2016"])
def test_ade20k_tree_and_label_shift(tmp_path, wrapped):
    base = tmp_path / "ADEChallengeData2016" if wrapped else tmp_path
    for folder, names in (("training", ["ADE_train_00000002", "ADE_train_00000001"]), ("validation", ["ADE_val_00000001"])):
        for name in names:
            write_rgb(base / "images" / folder / f"{name}.jpg", fmt="JPEG")
            stored = np.array([[0, 1, 2, 150, 75, 0, 0, 1]] * 6)
            write_grey(base / "annotations" / folder / f"{name}.png", stored)
    train = list_samples("ade20k", tmp_path, "train")
    assert [s.id for s in train] == ["ADE_train_00000001", "ADE_train_00000002"]
    assert train[0].label_path == base / "annotations" / "training" / "ADE_train_00000001.png"
    val = list_samples("ade20k", tmp_path, "val")
    assert [s.id for s in val] == ["ADE_val_00000001"]
    image, label = load_sample(val[0])
    assert image.shape == (6, 8, 3)
    np.testing.assert_array_equal(label[0], [255, 0, 1, 149, 74, 255, 255, 0])


def test_ade20k_wrong_layout(tmp_path):
    (tmp_path / "images" / "training").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match="expected .*ADEChallengeData2016/images"):
        list_samples("ade20k", tmp_path, "train")


def test_ade20k_mapping_table():
    stored = np.arange(256, dtype=np.uint8)
    mapped = ade20k_to_train_ids(stored)
    assert mapped[0] == 255 and mapped[1] == 0 and mapped[150] == 149 and (mapped[151:] == 255).all()


# --- cityscapes -----------------------------------------------------------------------------
def make_cityscapes(root: Path) -> None:
    label_ids = np.array([[0, 7, 8, 11, 26, 33, 9, 24]] * 6)
    for split, cities in (("train", ("aachen", "bremen")), ("val", ("frankfurt",)), ("test", ("berlin",))):
        for city in cities:
            for frame in (19, 20):
                stem = f"{city}_000000_{frame:06d}"
                write_rgb(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
                if split != "test":
                    write_grey(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", label_ids)
                    write_grey(root / "gtFine" / split / city / f"{stem}_gtFine_instanceIds.png", label_ids)


def test_cityscapes_tree_and_train_ids(tmp_path):
    make_cityscapes(tmp_path)
    train = list_samples("cityscapes", tmp_path, "train")
    assert [s.id for s in train] == [
        "aachen_000000_000019", "aachen_000000_000020", "bremen_000000_000019", "bremen_000000_000020",
    ]  # fmt: skip
    assert train[2].label_path == tmp_path / "gtFine" / "train" / "bremen" / "bremen_000000_000019_gtFine_labelIds.png"
    image, label = load_sample(train[0])
    assert image.shape == (6, 8, 3)
    np.testing.assert_array_equal(label[0], [255, 0, 1, 2, 13, 18, 255, 11])
    test = list_samples("cityscapes", tmp_path, "test")
    assert len(test) == 2 and all(s.label_path is None for s in test)
    assert load_sample(test[0])[1] is None


def test_cityscapes_label_id_to_train_id_table():
    # cityscapesScripts helpers/labels.py: the 19 evaluated ids, everything else 255.
    expected = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
                24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}  # fmt: skip
    all_ids = np.arange(256, dtype=np.uint8).reshape(16, 16)  # any shape, vectorised
    mapped = cityscapes_label_ids_to_train_ids(all_ids).ravel()
    for label_id in range(256):
        assert mapped[label_id] == expected.get(label_id, 255), label_id
    assert mapped.dtype == np.uint8


def test_cityscapes_missing_gtfine_explains_where_files_go(tmp_path):
    write_rgb(tmp_path / "leftImg8bit" / "val" / "lindau" / "lindau_000000_000019_leftImg8bit.png")
    with pytest.raises(DatasetLayoutError, match="gtFine_trainvaltest.zip"):
        list_samples("cityscapes", tmp_path, "val")


# --- folder ---------------------------------------------------------------------------------
def test_folder_is_recursive_and_skips_non_images(tmp_path):
    write_rgb(tmp_path / "b.png")
    write_rgb(tmp_path / "a.jpg", fmt="JPEG")
    write_rgb(tmp_path / "nested" / "deeper" / "c.PNG")
    write_rgb(tmp_path / ".hidden" / "d.png")
    write_rgb(tmp_path / ".e.png")
    (tmp_path / "notes.txt").write_text("not an image")
    samples = list_samples("folder", tmp_path, "test")
    assert [s.id for s in samples] == ["a", "b", "nested/deeper/c"]
    image, label = load_sample(samples[2])
    assert image.shape == (6, 8, 3) and label is None


def test_folder_duplicate_ids_and_empty_folder(tmp_path):
    write_rgb(tmp_path / "x.png")
    write_rgb(tmp_path / "x.jpg", fmt="JPEG")
    with pytest.raises(DatasetLayoutError, match="two images give the id 'x'"):
        list_samples("folder", tmp_path, "test")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match="expected image files"):
        list_samples("folder", tmp_path / "empty", "test")


# --- synthetic ------------------------------------------------------------------------------
def test_synthetic_through_the_registry():
    train = list_samples("synthetic", None, "train")
    assert len(train) == 64 and [s.synthetic_index for s in train] == list(range(64))
    test = list_samples("synthetic", "/ignored", "test")
    assert [s.synthetic_index for s in test] == list(range(80, 88))
    assert all(s.image_path is None and s.label_path is None for s in test)
    image, label = load_sample(test[0])
    expected_image, expected_label = make_sample(80)
    assert np.array_equal(image, expected_image) and np.array_equal(label, expected_label)


def test_hand_made_sample_reads_labels_as_stored(tmp_path):
    write_rgb(tmp_path / "img.png")
    write_grey(tmp_path / "lab.png", np.full((6, 8), 200))
    image, label = load_sample(Sample("img", "test", tmp_path / "img.png", tmp_path / "lab.png"))
    assert (label == 200).all()


def test_errors_are_semlic_errors():
    assert issubclass(DatasetLayoutError, SemlicError) and DatasetLayoutError.exit_code == 2


# --- the real CamVid copy in ../shared/data (skipped where absent) ----------------------------
@pytest.mark.shared_data
@pytest.mark.skipif(not (SHARED_DATA / "camvid" / "trainannot").is_dir(), reason="../shared/data/camvid absent")
def test_shared_camvid_is_read_correctly():
    root = SHARED_DATA / "camvid"
    counts = {}
    for split in ("train", "val", "test"):
        samples = list_samples("camvid", root, split)
        counts[split] = len(samples)
        assert [s.id for s in samples] == sorted(s.id for s in samples)
        for sample in samples:  # label values of every file: 0..11
            assert int(np.asarray(Image.open(sample.label_path)).max()) <= 11, sample.label_path
        image, label = load_sample(samples[0])
        assert image.shape == (360, 480, 3) and label.shape == (360, 480)
        assert set(np.unique(label).tolist()) <= set(range(11)) | {255}
    assert counts == {"train": 367, "val": 101, "test": 233}
