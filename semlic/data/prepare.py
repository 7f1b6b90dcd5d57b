"""The ``prepare`` stage's work: copy a data set into resized, uniform PNGs plus a manifest.

Output layout under ``out_dir``::

    <split>/images/<id>.png     HxWx3 uint8 RGB
    <split>/labels/<id>.png     HxW uint8 training ids (only where the data set has labels)
    manifest.parquet            one row per image, sorted by (split, id)

Splits named in ``resize_splits`` (default: ``train``) are resized to ``train_size`` =
(height, width), as DSSLIC trains on ADE20K at 256x256 (docs/REFERENCE.md): images with Pillow's
LANCZOS filter, labels with NEAREST (so only values that were there survive). The other
splits (val, test) keep their native size: they are what the codecs are measured on.
The aspect ratio is not kept (DSSLIC's official training resizes the same way).

Manifest columns: ``id``, ``split``, ``width``, ``height``, ``sha256`` (of the written image
PNG), ``has_label``, and, to make reruns verifiable, ``label_sha256`` (of the written label
PNG, null without one) and ``source_sha256`` (a fingerprint of the source: SHA-256 over the
source image's and label's SHA-256, or over the generator parameters for the synthetic set).
The preparation parameters are stored as JSON in the Parquet key-value metadata under
``semlic.prepare``. The file is written with pyarrow from an explicit schema (no pandas
index), rows sorted, so rerunning on the same inputs gives the same bytes.

Idempotent: a sample whose manifest row has the same parameters and source fingerprint, and
whose output files still hash to the recorded values, is skipped: a rerun writes nothing,
not even the manifest when its bytes would not change; a sample processed again rewrites only
the files whose bytes change. Every file is written atomically
(temporary file + rename); the manifest last. PNGs left in a prepared split's folders by an
earlier run (e.g. with a larger ``limit``) that are not in the new manifest are removed.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from tqdm import tqdm

from ..errors import ConfigError, UnknownDatasetError
from ..fileio import atomic_write_bytes
from . import synthetic
from .datasets import Sample, get_spec, list_samples, load_sample

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.parquet"
MANIFEST_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("split", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("sha256", pa.string()),
        ("has_label", pa.bool_()),
        ("label_sha256", pa.string()),
        ("source_sha256", pa.string()),
    ]
)
_METADATA_KEY = b"semlic.prepare"
_FORMAT_VERSION = 1


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def source_fingerprint(sample: Sample) -> str:
    """SHA-256 (hex) identifying a sample's source content, cheap next to decoding it."""
    digest = hashlib.sha256(f"{sample.dataset}\n".encode())
    if sample.synthetic_index is not None:   # generated: its recipe is its source
        height, width = synthetic.NATIVE_SIZE
        digest.update(
            f"synthetic v{synthetic.GENERATOR_VERSION} seed {synthetic.DEFAULT_SEED} "
            f"index {sample.synthetic_index} size {height}x{width}".encode()
        )
        return digest.hexdigest()
    for path in (sample.image_path, sample.label_path):
        digest.update((_sha256_file(path) if path is not None else "none").encode() + b"\n")
    return digest.hexdigest()


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8), "L" if array.ndim == 2 else "RGB").save(
        buffer, format="PNG"
    )
    return buffer.getvalue()


def _write_if_changed(path: Path, data: bytes) -> None:
    """Write ``data`` atomically unless ``path`` already holds exactly these bytes."""
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return
    atomic_write_bytes(path, data)


def _output_paths(out_dir: Path, sample: Sample) -> tuple[Path, Path]:
    split_dir = out_dir / sample.split
    return split_dir / "images" / f"{sample.id}.png", split_dir / "labels" / f"{sample.id}.png"


def _still_valid(row: dict | None, fingerprint: str, image_path: Path, label_path: Path) -> bool:
    if row is None or row["source_sha256"] != fingerprint:
        return False
    if not image_path.is_file() or _sha256_file(image_path) != row["sha256"]:
        return False
    if row["has_label"]:
        return label_path.is_file() and _sha256_file(label_path) == row["label_sha256"]
    return not label_path.exists()


def _prepare_one(sample: Sample, out_dir: Path, size: tuple[int, int] | None, previous: dict | None) -> tuple[dict, bool]:
    """Write one sample's PNGs (unless still valid); return (manifest row, whether it wrote)."""
    image_path, label_path = _output_paths(out_dir, sample)
    fingerprint = source_fingerprint(sample)
    if _still_valid(previous, fingerprint, image_path, label_path):
        return dict(previous), False
    image, label = load_sample(sample)
    if size is not None and image.shape[:2] != size:
        pil_size = (size[1], size[0])  # Pillow wants (width, height)
        image = np.asarray(Image.fromarray(image, "RGB").resize(pil_size, Image.Resampling.LANCZOS))
        if label is not None:
            label = np.asarray(Image.fromarray(label, "L").resize(pil_size, Image.Resampling.NEAREST))
    image_png = _png_bytes(image)
    _write_if_changed(image_path, image_png)
    label_sha256 = None
    if label is not None:
        label_png = _png_bytes(label)
        _write_if_changed(label_path, label_png)
        label_sha256 = hashlib.sha256(label_png).hexdigest()
    elif label_path.exists():
        label_path.unlink()
    row = {
        "id": sample.id,
        "split": sample.split,
        "width": int(image.shape[1]),
        "height": int(image.shape[0]),
        "sha256": hashlib.sha256(image_png).hexdigest(),
        "has_label": label is not None,
        "label_sha256": label_sha256,
        "source_sha256": fingerprint,
    }
    return row, True


def _read_previous(manifest_path: Path, parameters: bytes) -> dict[tuple[str, str], dict]:
    """Rows of an existing manifest made with the same parameters, keyed by (split, id)."""
    if not manifest_path.is_file():
        return {}
    try:
        table = pq.read_table(manifest_path)
    except (OSError, pa.ArrowException) as exc:
        log.warning("%s is unreadable (%s): preparing everything again", manifest_path, exc)
        return {}
    if (table.schema.metadata or {}).get(_METADATA_KEY) != parameters or table.schema.names != MANIFEST_SCHEMA.names:
        return {}
    return {(row["split"], row["id"]): row for row in table.to_pylist()}


def _remove_stale(out_dir: Path, split: str, rows: list[dict]) -> None:
    """Delete PNGs (and leftover temporary files) of ``split`` that the new manifest does not list."""
    keep = {
        "images": {f"{row['id']}.png" for row in rows},
        "labels": {f"{row['id']}.png" for row in rows if row["has_label"]},
    }
    for kind, names in keep.items():
        folder = out_dir / split / kind
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*"), reverse=True):  # children before their folders
            relative = path.relative_to(folder).as_posix()
            if path.is_dir():
                if not any(path.iterdir()):
                    path.rmdir()
            elif (path.suffix == ".png" and relative not in names) or ".tmp-" in path.name:
                log.info("removing stale %s", path)
                path.unlink()


def prepare_dataset(
    name: str,
    root: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    train_size: tuple[int, int] = (256, 256),
    splits: Sequence[str] | None = None,
    workers: int = 2,
    limit: int | None = None,
    *,
    resize_splits: Sequence[str] = ("train",),
    show_progress: bool = True,
) -> pd.DataFrame:
    """Prepare ``splits`` (default: all of the data set's) of data set ``name`` into ``out_dir``.

    Args:
        name: a registered data set (:data:`semlic.data.datasets.DATASETS`).
        root: its root directory (ignored for ``synthetic``).
        out_dir: output directory (layout: module docstring).
        train_size: (height, width) the ``resize_splits`` are resized to.
        splits: which splits to prepare; the manifest lists exactly these.
        workers: threads (Pillow and hashlib release the GIL while they work).
        limit: keep only the first ``limit`` ids (sorted) of each split, for quick runs.
        resize_splits: splits resized to ``train_size``; the others keep their native size.
        show_progress: show a tqdm progress bar.

    Returns:
        The manifest as a DataFrame (columns of :data:`MANIFEST_SCHEMA`, sorted by split, id).
    """
    spec = get_spec(name)
    splits = tuple(spec.splits if splits is None else splits)
    for split in splits:
        if split not in spec.splits:
            raise UnknownDatasetError(f"data set {name!r} has splits {list(spec.splits)}, not {split!r}")
    height, width = (int(v) for v in train_size)
    if height < 1 or width < 1:
        raise ConfigError(f"train_size must be two positive integers (height, width), found {train_size}")
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be a positive number of images per split, found {limit}")
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, found {workers}")
    out_dir = Path(out_dir)
    parameters = json.dumps(
        {
            "version": _FORMAT_VERSION,
            "dataset": name,
            "train_size": [height, width],
            "resize_splits": sorted(resize_splits),
            "image_filter": "LANCZOS",
            "label_filter": "NEAREST",
        },
        sort_keys=True,
    ).encode()
    manifest_path = out_dir / MANIFEST_NAME
    previous = _read_previous(manifest_path, parameters)

    jobs = []
    for split in splits:
        samples = list_samples(name, root, split)
        size = (height, width) if split in resize_splits else None
        for sample in samples[:limit] if limit is not None else samples:
            jobs.append((sample, out_dir, size, previous.get((split, sample.id))))

    rows: list[dict] = []
    written = 0
    with tqdm(total=len(jobs), desc=f"prepare {name}", unit="img", disable=not show_progress) as bar:
        with ThreadPoolExecutor(max_workers=workers) as executor:
            futures = [executor.submit(_prepare_one, *job) for job in jobs]
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    if future.exception() is not None:
                        for other in pending:
                            other.cancel()
                        raise future.exception()
                    row, wrote = future.result()
                    rows.append(row)
                    written += wrote
                    bar.update(1)

    rows.sort(key=lambda r: (r["split"], r["id"]))
    for split in splits:
        _remove_stale(out_dir, split, [r for r in rows if r["split"] == split])
    table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA).replace_schema_metadata({_METADATA_KEY: parameters})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    manifest_bytes = buffer.getvalue()
    if not manifest_path.is_file() or manifest_path.read_bytes() != manifest_bytes:
        atomic_write_bytes(manifest_path, manifest_bytes)
    log.info("prepare %s: %d images (%d written, %d unchanged) in %s", name, len(rows), written, len(rows) - written, out_dir)
    return table.to_pandas()
