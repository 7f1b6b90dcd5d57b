"""Stage ``train_smic``: SMIC's SS-Net and Rec-Net -> ``<paths.models>/smic/{ssnet,recnet}/``.

Rec-Net learns from maps as the decoder sees them: with ``recnet.maps: ssnet`` (the default)
the trained SS-Net draws them, so the two trainings run one after the other; with
``ground_truth`` they are independent and run as two units at once, sharing the CPUs (a
GPU each on CUDA). Killed midway, the rerun resumes from the training loops' states in the
staging directory. Output: ``ssnet/smic_ssnet.safetensors``, ``recnet/smic_recnet.safetensors``
and their ``train_log.parquet``.
"""

from __future__ import annotations

import sys

from semlic.pipeline.executor import Executor, timed, training_resources, unit_device, unit_threads, wait_all
from semlic.pipeline.params import stage_paths, training_section
from semlic.pipeline.stage import stage
from semlic.pipeline.staging import code_signature, content_signature, staged_dir, write_live

STAGE = "train_smic"


def train_smic_part(config: dict, prepared_dir: str, out_dir: str, part: str, device: str) -> dict:
    """semlic.methods.smic.commands.train_smic for ``part`` (ssnet or recnet), resuming from its own state;
    a part whose model is already written (a rerun after the stage was killed) is kept."""
    from semlic.methods.smic.commands import train_smic as train

    device = unit_device(device)  # the GPU the executor gave this unit, if any
    with timed({"out_dir": out_dir, "part": part}) as record:
        record["threads"] = unit_threads()
        result = train(config, prepared_dir, out_dir, part=part, device=device, resume=True, progress=False,
                       keep_trained=True)[part]
        record.update(completed=result["completed"], stopped_by=result["stopped_by"], iterations=result["iteration"],
                      model=result["model_path"], last=result["last"], reused=result["reused"])
    return record


@stage(STAGE)
def train_smic(params: dict, executor: Executor) -> dict:
    """Stage train_smic: SMIC's SS-Net and Rec-Net -> data/models/smic/"""
    from semlic.train_loop import STATE_FILE

    base, config, paths = params["base"], training_section(params, STAGE), stage_paths(params)
    prepared = paths["prepared"] / base["dataset"]
    fingerprint = [config, base["device"], code_signature(), content_signature(prepared / "manifest.parquet")]
    parallel = (config.get("recnet") or {}).get("maps", "ssnet") == "ground_truth"
    with staged_dir(paths["models"] / "smic", fingerprint) as staging:
        args = (config, str(prepared), str(staging))
        resources = training_resources(base, concurrent=2 if parallel else 1)
        if parallel:
            records = wait_all([executor.submit(train_smic_part, *args, part, base["device"], resources=resources)
                                for part in ("ssnet", "recnet")])
        else:
            records = [executor.submit(train_smic_part, *args, part, base["device"], resources=resources).result()
                       for part in ("ssnet", "recnet")]
        for part in ("ssnet", "recnet"):
            (staging / part / STATE_FILE).unlink(missing_ok=True)  # the models are written
    for record in records:
        print(f"train_smic: {record['part']} {record['iterations']} iterations ({record['stopped_by'] or 'complete'}) "
              f"in {record['seconds']:.0f} s", file=sys.stderr)
    write_live(STAGE, paths["models"] / "smic", paths)  # DVCLive: dvc plots / dvc exp show
    return {"parts": records}
