"""Stage ``prepare``: the data set named in ``base.dataset`` -> ``<paths.prepared>/<dataset>``.

One unit per data set (semlic.data.prepare.prepare_dataset): the splits as PNG images and labels,
the train split resized to ``prepare.train_size``, and ``manifest.parquet``; ``prepare.also``
names more data sets to measure the models on (every split, none resized).
"""

from __future__ import annotations

import sys
from pathlib import Path

from semlic.pipeline.executor import Executor, timed
from semlic.pipeline.params import stage_paths
from semlic.pipeline.stage import stage
from semlic.pipeline.staging import staged_dir


def dataset_root(base: dict, cfg: dict) -> str | None:
    """``prepare.root`` if given, else ``<base.data_root>/<base.dataset>`` (unused for synthetic)."""
    if cfg.get("root"):
        return str(Path(cfg["root"]).absolute())
    return str((Path(base.get("data_root", "data/raw")) / base["dataset"]).absolute())


def prepare_dataset(name: str, root: str | None, out_dir: str, train_size: list[int], splits: list[str] | None,
                    workers: int, limit: int | None, resize_splits: list[str] | None = None) -> dict:
    """semlic.data.prepare.prepare_dataset into ``out_dir``; returns image counts per split.
    ``resize_splits``: None for the default (``train``)."""
    from semlic.data.prepare import prepare_dataset as prepare

    with timed({"out_dir": out_dir}) as record:
        extra = {} if resize_splits is None else {"resize_splits": tuple(resize_splits)}
        manifest = prepare(name, root, out_dir, train_size=tuple(train_size), splits=splits, workers=workers,
                           limit=limit, show_progress=False, **extra)
        record["images"] = {str(k): int(v) for k, v in manifest.groupby("split").size().items()}
    return record


@stage("prepare")
def prepare(params: dict, executor: Executor) -> dict:
    """Stage prepare: the data set named in base.dataset -> data/prepared/<dataset>"""
    base, cfg, out = params["base"], params["prepare"], stage_paths(params)["prepared"]
    also = [name for name in (cfg.get("also") or []) if name != base["dataset"]]
    with staged_dir(out, fingerprint=[base["dataset"], cfg]) as staging:
        futures = [executor.submit(
            prepare_dataset, base["dataset"], dataset_root(base, cfg), str(staging / base["dataset"]),
            cfg["train_size"], cfg.get("splits"), int(base.get("workers", 2)), cfg.get("limit"),
        )]
        for name in also:   # other data sets to measure the models on: every split, none resized
            root = str((Path(base.get("data_root", "data/raw")) / name).absolute())
            futures.append(executor.submit(prepare_dataset, name, root, str(staging / name), cfg["train_size"], None,
                                           int(base.get("workers", 2)), None, []))
        records = [future.result() for future in futures]
    for name, record in zip([base["dataset"], *also], records):
        print(f"prepare: {record['images']} images of {name} in {out / name}", file=sys.stderr)
    return records[0] if not also else {**records[0], "also": dict(zip(also, records[1:]))}
