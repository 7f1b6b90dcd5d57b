"""The tasks of the train_dsslic and train_dsslic_rd stages."""

from __future__ import annotations

from prefect import task

from semlic.methods.dsslic.training import train_dsslic as train

from .common import TASK_OPTIONS, task_device, timed, use_assigned_threads


@task(name="train-dsslic", **TASK_OPTIONS)
def train_dsslic(config: dict, image_dir: str, seg_dir: str, out_dir: str, device: str) -> dict:
    """semlic.methods.dsslic.training.train_dsslic (CompNet + FineNet), resuming from its own state."""
    device = task_device(device)  # the GPU Ray gave this task, if any
    with timed({"out_dir": out_dir}) as record:
        record["threads"] = use_assigned_threads()
        result = train(config, image_dir, seg_dir, out_dir, device=device, resume=True, progress=False)
        record.update(completed=result.completed, iterations=result.iteration, model=str(result.model_path),
                      last=result.last)
    return record


@task(name="train-dsslic-rd", **TASK_OPTIONS)
def train_dsslic_rd(config: dict, image_dir: str, seg_dir: str, out_dir: str, device: str) -> dict:
    """semlic.methods.dsslic_rd.training.train_dsslic_rd: one lambda of one map mode, resuming from its state."""
    from semlic.methods.dsslic_rd.training import train_dsslic_rd as train

    device = task_device(device)
    with timed({"out_dir": out_dir, "map": config.get("map"), "lmbda": config.get("lmbda")}) as record:
        record["threads"] = use_assigned_threads()
        result = train(config, image_dir, seg_dir, out_dir, device=device, resume=True, progress=False)
        record.update(completed=result.completed, iterations=result.iteration, stopped_by=result.stopped_by,
                      model=str(result.model_path), last=result.last)
    return record
