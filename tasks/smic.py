"""The train_smic stage's task: one part of SMIC (SS-Net or Rec-Net)."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task

from semlic.methods.smic.commands import train_smic

from .common import TASK_OPTIONS, timed, use_assigned_threads


@task(name="train-smic", **TASK_OPTIONS)
def train_smic_part(config: dict, prepared_dir: str, out_dir: str, part: str, device: str) -> dict:
    """semlic.methods.smic.commands.train_smic for ``part`` (ssnet or recnet), resuming from its own state.

    A part whose model file is already in ``out_dir`` (a rerun after the stage was killed
    during the other part) is not trained again: with a ``minutes`` budget that would add
    another budget's worth of training to it.
    """
    from semlic.methods.smic.training import RECNET_FILE, SSNET_FILE
    from semlic.model_files import read_metadata

    with timed({"out_dir": out_dir, "part": part}) as record:
        record["threads"] = use_assigned_threads()
        model = Path(out_dir) / part / {"ssnet": SSNET_FILE, "recnet": RECNET_FILE}[part]
        if model.is_file():
            meta = read_metadata(model)
            iterations, planned = (int(json.loads(meta.get(k, "0"))) for k in ("iterations", "planned_iterations"))
            record.update(completed=iterations >= planned, stopped_by=None if iterations >= planned else "budget",
                          iterations=iterations, model=str(model), last={}, reused=True)
            return record
        result = train_smic(config, prepared_dir, out_dir, part=part, device=device, resume=True, progress=False)[part]
        record.update(completed=result["completed"], stopped_by=result["stopped_by"], iterations=result["iteration"],
                      model=result["model_path"], last=result["last"], reused=False)
    return record
