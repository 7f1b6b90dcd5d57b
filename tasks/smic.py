"""The train_smic stage's task: one part of SMIC (SS-Net or Rec-Net)."""

from __future__ import annotations

from prefect import task

from semlic.methods.smic.commands import train_smic

from .common import TASK_OPTIONS, task_device, timed, use_assigned_threads


@task(name="train-smic", **TASK_OPTIONS)
def train_smic_part(config: dict, prepared_dir: str, out_dir: str, part: str, device: str) -> dict:
    """semlic.methods.smic.commands.train_smic for ``part`` (ssnet or recnet), resuming from its own state;
    a part whose model is already written (a rerun after the stage was killed) is kept."""
    device = task_device(device)  # the GPU Ray gave this task, if any
    with timed({"out_dir": out_dir, "part": part}) as record:
        record["threads"] = use_assigned_threads()
        result = train_smic(config, prepared_dir, out_dir, part=part, device=device, resume=True, progress=False,
                            keep_trained=True)[part]
        record.update(completed=result["completed"], stopped_by=result["stopped_by"], iterations=result["iteration"],
                      model=result["model_path"], last=result["last"], reused=result["reused"])
    return record
