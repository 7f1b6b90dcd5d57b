"""Precomputing segmentation maps: one uint8 label PNG per image, and a per-image table.

DSSLIC sends the PSPNet label map of every image (docs/REFERENCE.md: the maps are predictions,
not ground truth); this stage computes them once. Output: ``<out_dir>/<id>.png`` (8-bit grey,
pixel = class index, native size, written atomically) and a table with one row per image:

=================  ==========================================================================
column             meaning
=================  ==========================================================================
id                 image id (file stem)
height, width      size of the image and of its label map
classes_present    sorted class indices that occur in the predicted map (list of int)
miou               mIoU of this image against its ground truth (classes absent from both are
                   left out), null when the image has no ground truth
pixel_accuracy     share of correctly labelled pixels (ignore pixels not counted), or null
=================  ==========================================================================
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ..errors import ConfigError
from ..imageio import save_png
from .inference import iter_predictions, place_model, resolve_device
from .metrics import confusion_matrix, scores_from_confusion
from .prepared import PreparedSample, list_prepared
from .pspnet import PSPNet

SEGMENT_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("height", pa.int32()),
    ("width", pa.int32()),
    ("classes_present", pa.list_(pa.int16())),
    ("miou", pa.float64()),
    ("pixel_accuracy", pa.float64()),
])


def segment_images(model: PSPNet, image_paths: list[str | os.PathLike], out_dir: str | os.PathLike,
                   label_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                   batch_size: int = 4, num_workers: int = 0) -> pd.DataFrame:
    """Segment image files; ground truth, if any, is ``<label_dir>/<stem>.png``.

    Returns the per-image table (module docstring), in input order; ``df.attrs["images_per_s"]``
    holds the throughput (PNG decoding, inference and writing included).
    """
    stems = [Path(path).stem for path in image_paths]
    if len(set(stems)) != len(stems):
        repeated = sorted({stem for stem in stems if stems.count(stem) > 1})
        raise ConfigError(f"image file names must be unique (each names its label map), repeated: {repeated}")
    samples = []
    for path in map(Path, image_paths):
        label_path = Path(label_dir) / f"{path.stem}.png" if label_dir is not None else None
        samples.append(PreparedSample(path.stem, path, label_path if label_path and label_path.is_file() else None))
    return _segment_samples(model, samples, Path(out_dir), resolve_device(device), batch_size, num_workers)


def segment_split(model: PSPNet, prepared_dir: str | os.PathLike, split: str, out_dir: str | os.PathLike,
                  device: str | torch.device = "cpu", batch_size: int = 4, num_workers: int = 0) -> pd.DataFrame:
    """Segment every image of a prepared split, scoring against its labels where they exist."""
    samples = list_prepared(prepared_dir, split)
    return _segment_samples(model, samples, Path(out_dir), resolve_device(device), batch_size, num_workers)


def _segment_samples(model: PSPNet, samples: list[PreparedSample], out_dir: Path, device: torch.device,
                     batch_size: int, num_workers: int) -> pd.DataFrame:
    model = place_model(model, device)
    num_classes, ignore_index = model.config.num_classes, model.config.ignore_index
    rows = []
    started = time.perf_counter()
    for batch in iter_predictions(model, samples, device, batch_size, num_workers):
        predictions = batch.predictions.cpu()
        for sample_id, prediction, label in zip(batch.ids, predictions, batch.labels):
            save_png(out_dir / f"{sample_id}.png", prediction.numpy())
            scores = None
            if label is not None:
                scores = scores_from_confusion(confusion_matrix(prediction, label, num_classes, ignore_index)).to_dict()
            rows.append({
                "id": sample_id,
                "height": prediction.shape[0],
                "width": prediction.shape[1],
                "classes_present": torch.unique(prediction).tolist(),
                "miou": scores["miou"] if scores else None,
                "pixel_accuracy": scores["pixel_accuracy"] if scores else None,
            })
    elapsed = time.perf_counter() - started
    table = pd.DataFrame(rows, columns=SEGMENT_SCHEMA.names)
    table["miou"] = table["miou"].astype("float64")
    table["pixel_accuracy"] = table["pixel_accuracy"].astype("float64")
    table.attrs["images_per_s"] = len(rows) / elapsed if elapsed > 0 else float("nan")
    return table


def write_segment_table(table: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write the table as Parquet, rows sorted by id (deterministic bytes for DVC)."""
    ordered = table.sort_values("id", kind="stable").reset_index(drop=True)
    arrow = pa.Table.from_pandas(ordered, schema=SEGMENT_SCHEMA, preserve_index=False)
    arrow = arrow.replace_schema_metadata(None)  # no pandas metadata (it would carry attrs, e.g. timings)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(arrow, temporary)
    os.replace(temporary, path)
