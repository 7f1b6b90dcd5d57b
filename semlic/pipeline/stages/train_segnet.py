"""Stage ``train_segnet``: PSPNet -> ``<paths.models>/segnet/``.

One training unit (semlic.segnet.train.train_segnet) on the prepared train split, scored on
``eval_split``; killed midway, the rerun resumes from the training loop's state in the staging
directory. Output: ``segnet.safetensors``, ``train_log.parquet``, ``summary.json``.
"""

from __future__ import annotations

import json
import sys

from semlic.pipeline.executor import Executor, timed, training_resources, unit_device, unit_threads
from semlic.pipeline.params import seeded_section, stage_paths
from semlic.pipeline.stage import stage
from semlic.pipeline.staging import code_signature, content_signature, staged_dir, write_live

STAGE = "train_segnet"


def train_segnet_unit(config: dict, prepared_dir: str, out_dir: str, device: str) -> dict:
    """semlic.segnet.train.train_segnet into ``out_dir``, resuming from a state left by an interrupted run."""
    from semlic.segnet.train import train_segnet as train

    device = unit_device(device)  # the GPU the executor gave this unit, if any
    with timed({"out_dir": out_dir}) as record:
        record["threads"] = unit_threads()
        summary = train(config, prepared_dir, out_dir, device=device, resume=True, progress=False)
        record.update({k: summary.get(k) for k in ("completed", "stopped_by", "step", "total_steps", "final_loss",
                                                   "train_images_per_s", "eval", "model_path")})
    return record


@stage(STAGE)
def train_segnet(params: dict, executor: Executor) -> dict:
    """Stage train_segnet: PSPNet -> data/models/segnet/"""
    from semlic.train_loop import STATE_FILE

    base, config, paths = params["base"], seeded_section(params, STAGE), stage_paths(params)
    prepared = paths["prepared"] / base["dataset"]
    fingerprint = [config, base["device"], content_signature(prepared / "manifest.parquet"), code_signature()]
    with staged_dir(paths["models"] / "segnet", fingerprint) as staging:
        record = executor.submit(train_segnet_unit, config, str(prepared), str(staging), base["device"],
                                 resources=training_resources(base)).result()
        (staging / STATE_FILE).unlink(missing_ok=True)  # the model is complete
        summary = {k: record.get(k) for k in ("step", "total_steps", "stopped_by", "final_loss", "train_images_per_s",
                                              "eval", "seconds")}
        (staging / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
    miou = (record.get("eval") or {}).get("miou")
    print(f"train_segnet: {record.get('step')} steps, loss {record.get('final_loss')}, "
          f"{config.get('eval_split')} mIoU {miou}", file=sys.stderr)
    write_live(STAGE, paths["models"] / "segnet", paths)  # DVCLive: dvc plots / dvc exp show
    return record
