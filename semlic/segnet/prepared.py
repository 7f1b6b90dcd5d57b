"""Reading a prepared data set (what ``semlic prepare`` writes) for training and inference.

Layout: ``<dir>/<split>/images/<id>.png`` (RGB), ``<dir>/<split>/labels/<id>.png`` (8-bit class
indices, 255 = ignore) and ``<dir>/manifest.parquet`` (id, split, width, height, sha256,
has_label). The manifest, when present, gives the ids and their order; without it the images
folder is listed (sorted by id).

Datasets here return torch tensors: an image as 3 x H x W float32 in [0, 1], a label map as
H x W int64.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..errors import DatasetError, LabelMapError
from ..imageio import load_image, load_label_map
from .augment import augment_pair


@dataclass(frozen=True)
class PreparedSample:
    """One image of a prepared split; ``label_path`` is None when it has no ground truth."""

    id: str
    image_path: Path
    label_path: Path | None


MAX_MANIFEST_ROWS = 10_000_000   # images of one prepared data set (OpenImages has 9 million)


def check_manifest_size(manifest: Path) -> None:
    """Refuse, from its footer alone, a manifest whose row groups declare more rows than the file (a
    damaged footer declaring 14 billion rows made pyarrow allocate gigabytes: found by fuzzing)."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(manifest).metadata
    rows = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    if not 0 <= meta.num_rows <= MAX_MANIFEST_ROWS or any(r < 0 for r in rows) or sum(rows) != meta.num_rows:
        raise DatasetError(f"{manifest}: declares {meta.num_rows} rows in row groups of {rows} rows (at most "
                           f"{MAX_MANIFEST_ROWS}): damaged; prepare the data set again (semlic prepare)")


def list_prepared(prepared_dir: str | os.PathLike, split: str) -> list[PreparedSample]:
    """The samples of ``split`` in a prepared directory (module docstring); DatasetError if none."""
    root = Path(prepared_dir)
    images_dir, labels_dir = root / split / "images", root / split / "labels"
    manifest = root / "manifest.parquet"
    if manifest.is_file():
        try:
            check_manifest_size(manifest)
            table = pd.read_parquet(manifest, columns=["id", "split"])
            ids = table.loc[table["split"] == split, "id"].astype(str).tolist()
        except DatasetError:
            raise
        except Exception as exc:  # noqa: BLE001 - pyarrow / pandas raise many types on a damaged file
            raise DatasetError(f"{manifest}: not a readable manifest ({type(exc).__name__}: {exc}); prepare the data "
                               "set again (semlic prepare)") from exc
        bad = next((i for i in ids  # a missing id (pandas gives NaN for it), an empty one, a path
                    if not isinstance(i, str) or not i or i in (".", "..") or any(c in i for c in "/\\\0")), None)
        if bad is not None:
            raise DatasetError(f"{manifest}: image id {bad!r} is not a plain file name; prepare the data set again")
    else:
        ids = sorted(path.stem for path in images_dir.glob("*.png"))
    if not ids:
        raise DatasetError(f"{root}: no images in split {split!r} (expected {images_dir}/<id>.png)")
    samples = []
    for sample_id in ids:
        image_path, label_path = images_dir / f"{sample_id}.png", labels_dir / f"{sample_id}.png"
        if not image_path.is_file():
            raise DatasetError(f"{root}: the manifest lists {sample_id!r} but {image_path} is missing")
        samples.append(PreparedSample(sample_id, image_path, label_path if label_path.is_file() else None))
    return samples


def image_to_tensor(image: np.ndarray) -> Tensor:
    """HxWx3 uint8 -> 3 x H x W float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)


def check_label_values(label: np.ndarray, num_classes: int, ignore_index: int, source: object) -> None:
    """Raise LabelMapError if ``label`` holds a value that is neither a class nor the ignore index."""
    values = np.unique(label)
    bad = values[(values >= num_classes) & (values != ignore_index)]
    if bad.size:
        raise LabelMapError(
            f"{source}: label values must be 0..{num_classes - 1} or {ignore_index} (ignore), found {bad.tolist()}"
        )


def load_labelled_pair(sample: PreparedSample) -> tuple[np.ndarray, np.ndarray]:
    """Read an image and its label map; LabelMapError if their sizes differ."""
    image, label = load_image(sample.image_path), load_label_map(sample.label_path)
    if image.shape[:2] != label.shape:
        raise LabelMapError(f"{sample.label_path}: label map is {label.shape}, image is {image.shape[:2]}")
    return image, label


class AugmentedTrainingSet(Dataset):
    """Labelled samples, augmented; indexed by ``(epoch, index)`` so each draw is reproducible.

    The augmentation generator is seeded with (seed, epoch, index): the same key always gives the
    same crop, in any worker. Returns (3 x crop_h x crop_w float image, crop_h x crop_w int64 labels).
    """

    def __init__(self, samples: list[PreparedSample], crop_size: tuple[int, int], scale_range: tuple[float, float],
                 flip: bool, num_classes: int, ignore_index: int, seed: int) -> None:
        self.samples = [sample for sample in samples if sample.label_path is not None]
        self.crop_size, self.scale_range, self.flip = crop_size, scale_range, flip
        self.num_classes, self.ignore_index, self.seed = num_classes, ignore_index, seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, Tensor]:
        epoch, index = key
        sample = self.samples[index]
        image, label = load_labelled_pair(sample)
        check_label_values(label, self.num_classes, self.ignore_index, sample.label_path)
        rng = np.random.default_rng([self.seed, epoch, index])
        image, label = augment_pair(image, label, rng, self.crop_size, self.scale_range, self.flip, self.ignore_index)
        return image_to_tensor(image), torch.from_numpy(label.astype(np.int64))


class NativeSizeSet(Dataset):
    """Samples at native size for inference: (id, 3 x H x W float image, H x W int64 label or None)."""

    def __init__(self, samples: list[PreparedSample]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[str, Tensor, Tensor | None]:
        sample = self.samples[index]
        if sample.label_path is None:
            return sample.id, image_to_tensor(load_image(sample.image_path)), None
        image, label = load_labelled_pair(sample)
        return sample.id, image_to_tensor(image), torch.from_numpy(label.astype(np.int64))


def load_labelled(prepared_dir, split: str = "train", progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, H, W) uint8 images and (N, H, W) uint8 labels of a prepared split (one size)."""
    samples = [s for s in list_prepared(prepared_dir, split) if s.label_path is not None]
    if not samples:
        raise DatasetError(f"{prepared_dir}: split {split!r} has no labelled images")
    images, labels = [], []
    for sample in tqdm(samples, desc=f"load {split}", leave=False, disable=not progress):
        image, label = load_image(sample.image_path), load_label_map(sample.label_path)
        if label.shape != image.shape[:2] or (images and image.shape != images[0].shape):
            raise DatasetError(f"{sample.image_path}: image {image.shape[:2]} / labels {label.shape}: training "
                               "on whole images needs one size (the prepare stage resizes the train split)")
        images.append(image)
        labels.append(label)
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(np.stack(labels))
