"""Stage ``train_segnet``: PSPNet on the prepared train split -> ``data/models/segnet/``.

One GPU task (semlic.segnet.train_segnet). Killed midway, the rerun resumes from the
library's checkpoint kept in the staging directory (same params and inputs only).
Output: ``segnet.safetensors``, ``segnet.train_log.parquet``, ``summary.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from prefect import flow
from prefect_ray.context import remote_options

from flows.runtime import (PARAMS_FILE, code_signature, content_signature, load_params, ray_runner, run_stage,
                           staged_dir, training_options)

STAGE = "train_segnet"
SECTIONS = ("base", "train_segnet")
OUT = Path("data/models/segnet")
MODEL_NAME = "segnet.safetensors"


def segnet_config(params: dict) -> dict:
    """The stage's section, with ``seed`` from ``base`` unless the section sets one."""
    config = dict(params[STAGE])
    config.setdefault("seed", params["base"]["seed"])
    return config


@flow(name=STAGE, task_runner=ray_runner())
def train_segnet(params: dict | None = None) -> dict:
    from tasks.segnet import train_segnet as train

    params = params or load_params(PARAMS_FILE, SECTIONS)
    base, config = params["base"], segnet_config(params)
    prepared = Path("data/prepared").absolute() / base["dataset"]  # absolute: tasks may run elsewhere
    fingerprint = [config, base["device"], content_signature(prepared / "manifest.parquet"), code_signature()]
    with staged_dir(OUT, fingerprint) as staging:
        with remote_options(**training_options(base)):
            record = train.submit(config, str(prepared), str(staging / MODEL_NAME), base["device"]).result()
        (staging / "segnet.train_state.pt").unlink(missing_ok=True)  # the model is complete
        summary = {k: record.get(k) for k in ("step", "final_loss", "train_images_per_s", "eval", "seconds")}
        (staging / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
    miou = (record.get("eval") or {}).get("miou")
    print(f"train_segnet: {record.get('step')} steps, loss {record.get('final_loss')}, "
          f"{config.get('eval_split')} mIoU {miou}", file=sys.stderr)
    return record


def main(argv: list[str] | None = None) -> int:
    run_stage(train_segnet, STAGE, SECTIONS, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
