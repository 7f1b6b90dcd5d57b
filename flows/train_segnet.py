"""Stage ``train_segnet``: PSPNet on the prepared train split -> ``<paths.models>/segnet/``.

One GPU task (semlic.segnet.train.train_segnet). Killed midway, the rerun resumes from the
training loop's state kept in the staging directory (same params and inputs only).
Output: ``segnet.safetensors`` (model ``pspnet``), ``train_log.parquet``, ``summary.json``.
"""

from __future__ import annotations

import json
import sys

from prefect import flow
from prefect_ray.context import remote_options

from flows.params import PARAMS_FILE, load_params, stage_paths
from flows.ray_cluster import training_options
from flows.runner import ray_runner
from flows.stage import run_stage
from flows.staging import code_signature, content_signature, staged_dir, write_live

STAGE = "train_segnet"
SECTIONS = ("base", "paths", "train_segnet")


def segnet_config(params: dict) -> dict:
    """The stage's section, with ``seed`` from ``base`` unless the section sets one."""
    config = dict(params[STAGE])
    config.setdefault("seed", params["base"]["seed"])
    return config


@flow(name=STAGE, task_runner=ray_runner())
def train_segnet(params: dict | None = None) -> dict:
    from semlic.train_loop import STATE_FILE
    from tasks.segnet import train_segnet as train

    params = params or load_params(PARAMS_FILE, SECTIONS)
    base, config, paths = params["base"], segnet_config(params), stage_paths(params)
    prepared = paths["prepared"] / base["dataset"]
    fingerprint = [config, base["device"], content_signature(prepared / "manifest.parquet"), code_signature()]
    with staged_dir(paths["models"] / "segnet", fingerprint) as staging:
        with remote_options(**training_options(base)):
            record = train.submit(config, str(prepared), str(staging), base["device"]).result()
        (staging / STATE_FILE).unlink(missing_ok=True)  # the model is complete
        summary = {k: record.get(k) for k in ("step", "total_steps", "stopped_by", "final_loss", "train_images_per_s",
                                              "eval", "seconds")}
        (staging / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
    miou = (record.get("eval") or {}).get("miou")
    print(f"train_segnet: {record.get('step')} steps, loss {record.get('final_loss')}, "
          f"{config.get('eval_split')} mIoU {miou}", file=sys.stderr)
    write_live(STAGE, paths["models"] / "segnet", paths)  # DVCLive: dvc plots / dvc exp show
    return record


def main(argv: list[str] | None = None) -> int:
    run_stage(train_segnet, STAGE, SECTIONS, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
