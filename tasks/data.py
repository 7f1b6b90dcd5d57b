"""The prepare stage's task."""

from __future__ import annotations

from prefect import task

from semlic.data.prepare import prepare_dataset as prepare

from .common import TASK_OPTIONS, timed


@task(name="prepare-dataset", **TASK_OPTIONS)
def prepare_dataset(name: str, root: str | None, out_dir: str, train_size: list[int], splits: list[str] | None,
                    workers: int, limit: int | None, resize_splits: list[str] | None = None) -> dict:
    """semlic.data.prepare.prepare_dataset into ``out_dir``; returns image counts per split.
    ``resize_splits``: None for the default (``train``)."""
    with timed({"out_dir": out_dir}) as record:
        extra = {} if resize_splits is None else {"resize_splits": tuple(resize_splits)}
        manifest = prepare(name, root, out_dir, train_size=tuple(train_size), splits=splits, workers=workers,
                           limit=limit, show_progress=False, **extra)
        record["images"] = {str(k): int(v) for k, v in manifest.groupby("split").size().items()}
    return record
