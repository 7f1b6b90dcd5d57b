"""Stage ``train_smic``: SMIC's SS-Net and Rec-Net -> ``<paths.models>/smic/{ssnet,recnet}/``.

Rec-Net learns from maps as the decoder sees them: with ``recnet.maps: ssnet`` (the default)
the trained SS-Net draws them, so the two trainings run one after the other; with
``ground_truth`` they are independent and run as two Ray tasks at once, sharing the CPUs (a
GPU each on CUDA). Killed midway, the rerun resumes from the training loops' states in the
staging directory. Output: ``ssnet/smic_ssnet.safetensors``, ``recnet/smic_recnet.safetensors``
and their ``train_log.parquet``.
"""

from __future__ import annotations

import sys

from prefect import flow
from prefect_ray.context import remote_options

from flows.params import PARAMS_FILE, load_params, stage_paths, training_section
from flows.ray_cluster import training_options
from flows.runner import ray_runner, wait_all
from flows.stage import run_stage
from flows.staging import code_signature, content_signature, staged_dir, write_live

STAGE = "train_smic"
SECTIONS = ("base", "paths", "train_smic")


@flow(name=STAGE, task_runner=ray_runner())
def train_smic(params: dict | None = None) -> dict:
    from semlic.train_loop import STATE_FILE
    from tasks.smic import train_smic_part

    params = params or load_params(PARAMS_FILE, SECTIONS)
    base, config, paths = params["base"], training_section(params, STAGE), stage_paths(params)
    prepared = paths["prepared"] / base["dataset"]
    fingerprint = [config, base["device"], code_signature(), content_signature(prepared / "manifest.parquet")]
    parallel = (config.get("recnet") or {}).get("maps", "ssnet") == "ground_truth"
    with staged_dir(paths["models"] / "smic", fingerprint) as staging:
        args = (config, str(prepared), str(staging))
        with remote_options(**training_options(base, concurrent=2 if parallel else 1)):
            if parallel:
                records = wait_all([train_smic_part.submit(*args, part, base["device"]) for part in ("ssnet", "recnet")])
            else:
                records = [train_smic_part.submit(*args, part, base["device"]).result() for part in ("ssnet", "recnet")]
        for part in ("ssnet", "recnet"):
            (staging / part / STATE_FILE).unlink(missing_ok=True)  # the models are written
    for record in records:
        print(f"train_smic: {record['part']} {record['iterations']} iterations ({record['stopped_by'] or 'complete'}) "
              f"in {record['seconds']:.0f} s", file=sys.stderr)
    write_live(STAGE, paths["models"] / "smic", paths)  # DVCLive: dvc plots / dvc exp show
    return {"parts": records}


def main(argv: list[str] | None = None) -> int:
    run_stage(train_smic, STAGE, SECTIONS, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
