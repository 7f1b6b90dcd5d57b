"""The train_base stage's task."""

from __future__ import annotations

from prefect import task

from .common import TASK_OPTIONS, timed, use_assigned_threads


@task(name="train-base", **TASK_OPTIONS)
def train_base(config: dict, image_dir: str, seg_dir: str, out_dir: str, device: str) -> dict:
    """semlic.training.train_base (CompNet + FineNet), resuming from its own checkpoint."""
    from semlic.training import train_base as train

    with timed({"out_dir": out_dir}) as record:
        record["threads"] = use_assigned_threads()
        record["model"] = str(train(config, image_dir, seg_dir, out_dir, device=device, resume=True))
    return record
