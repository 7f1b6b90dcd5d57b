"""Task of the train_sgfilter stage (HEVC + SG filter's enhancement networks)."""

from __future__ import annotations

from prefect import task

from .common import TASK_OPTIONS, task_device, timed, use_assigned_threads


@task(name="train-sgfilter", **TASK_OPTIONS)
def train_sgfilter(config: dict, prepared_dir: str, segnet_path: str, out_dir: str, device: str) -> dict:
    """semlic.methods.sgfilter.training.train_sgfilter of one map source, resuming from its own state."""
    from semlic.methods.sgfilter.training import train_sgfilter as train
    from semlic.model_files import load_model

    device = task_device(device)  # the GPU Ray gave this task, if any
    with timed({"out_dir": out_dir, "map_source": config["map_source"]}) as record:
        record["threads"] = use_assigned_threads()
        result = train(config, prepared_dir, out_dir, load_model(segnet_path, device, expect="pspnet"), device=device,
                       resume=True, progress=False)
        record.update(completed=result.completed, iterations=result.iteration, stopped_by=result.stopped_by,
                      model=str(result.model_path), last=result.last)
    return record
