"""Data sets: the builtin synthetic set, real data set layouts, downloads and the prepare stage.

* :mod:`semlic.data.synthetic`: the offline smoke-test set generated from a seed.
* :mod:`semlic.data.datasets`: registry (camvid, kodak, ade20k, cityscapes, folder,
  synthetic), :func:`list_samples` and :func:`load_sample`.
* :mod:`semlic.data.download`: resumable, checksum-verified, atomic downloads.
* :mod:`semlic.data.prepare`: :func:`prepare_dataset`, the ``prepare`` stage's work.
* :mod:`semlic.data.commands`: ``semlic prepare`` and ``semlic download``.
"""

from .datasets import (
    DATASETS,
    DatasetSpec,
    Sample,
    ade20k_to_train_ids,
    cityscapes_label_ids_to_train_ids,
    get_spec,
    list_samples,
    load_sample,
    resolve_root,
)
from .download import SOURCES, DownloadSource, RemoteFile, download_dataset, download_file, download_source, extract_archive
from .prepare import MANIFEST_SCHEMA, prepare_dataset
from .synthetic import make_sample

__all__ = [
    "DATASETS",
    "DatasetSpec",
    "DownloadSource",
    "MANIFEST_SCHEMA",
    "RemoteFile",
    "SOURCES",
    "Sample",
    "ade20k_to_train_ids",
    "cityscapes_label_ids_to_train_ids",
    "download_dataset",
    "download_file",
    "download_source",
    "extract_archive",
    "get_spec",
    "list_samples",
    "load_sample",
    "make_sample",
    "prepare_dataset",
    "resolve_root",
]
