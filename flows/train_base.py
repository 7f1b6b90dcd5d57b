"""Stage ``train_base``: the DSSLIC base model (CompNet + FineNet) -> ``data/models/base/``.

One GPU task (semlic.training.train_base) on the prepared train images and their PSPNet
maps. Killed midway, the rerun resumes from the library's checkpoint in the staging
directory. Output: ``base.safetensors`` (+ the library's side files) and ``train_log.parquet``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from prefect import flow
from prefect_ray.context import remote_options

from flows.runtime import (PARAMS_FILE, code_signature, content_signature, load_params, ray_runner, run_stage,
                           staged_dir, training_options)

STAGE = "train_base"
SECTIONS = ("base", "train_base")
OUT = Path("data/models/base")
TRAIN_STATE = "train_state.safetensors"


def base_config(params: dict) -> dict:
    """The stage's section; ``seed`` from ``base``, ``label_nc`` null -> the data set's classes."""
    from semlic.data.datasets import get_spec

    config = dict(params[STAGE])
    config.setdefault("seed", params["base"]["seed"])
    if config.get("label_nc") is None:
        config["label_nc"] = get_spec(params["base"]["dataset"]).num_classes
    return config


@flow(name=STAGE, task_runner=ray_runner())
def train_base(params: dict | None = None) -> dict:
    from tasks.training import train_base as train

    params = params or load_params(PARAMS_FILE, SECTIONS)
    base, config = params["base"], base_config(params)
    images = Path("data/prepared").absolute() / base["dataset"] / "train" / "images"  # absolute: tasks
    segments = Path("data/segments").absolute() / base["dataset"] / "train"          # may run elsewhere
    fingerprint = [config, base["device"], code_signature(),
                   content_signature(images.parent.parent / "manifest.parquet", segments.parent / "train.parquet")]
    with staged_dir(OUT, fingerprint) as staging:
        with remote_options(**training_options(base)):
            record = train.submit(config, str(images), str(segments), str(staging), base["device"]).result()
        (staging / TRAIN_STATE).unlink(missing_ok=True)  # the model is complete
    print(f"train_base: {OUT / Path(record['model']).name} in {record['seconds']:.0f} s", file=sys.stderr)
    return record


def main(argv: list[str] | None = None) -> int:
    run_stage(train_base, STAGE, SECTIONS, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
