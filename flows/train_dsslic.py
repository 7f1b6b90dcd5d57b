"""Stage ``train_dsslic``: the DSSLIC generator (CompNet + FineNet) -> ``<paths.models>/dsslic/``.

One GPU task (semlic.methods.dsslic.training.train_dsslic) on the prepared train images and
their PSPNet maps. Killed midway, the rerun resumes from the training loop's state in the
staging directory. Output: ``dsslic.safetensors`` (model ``dsslic``) and ``train_log.parquet``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from prefect import flow
from prefect_ray.context import remote_options

from flows.params import PARAMS_FILE, load_params, stage_paths
from flows.ray_cluster import training_options
from flows.runner import ray_runner
from flows.stage import run_stage
from flows.staging import code_signature, content_signature, staged_dir

STAGE = "train_dsslic"
SECTIONS = ("base", "paths", "train_dsslic")


def dsslic_config(params: dict) -> dict:
    """The stage's section; ``seed`` from ``base``, ``label_nc`` null -> the data set's classes."""
    from semlic.data.datasets import get_spec

    config = dict(params[STAGE])
    config.setdefault("seed", params["base"]["seed"])
    if config.get("label_nc") is None:
        config["label_nc"] = get_spec(params["base"]["dataset"]).num_classes
    return config


@flow(name=STAGE, task_runner=ray_runner())
def train_dsslic(params: dict | None = None) -> dict:
    from semlic.train_loop import STATE_FILE
    from tasks.training import train_dsslic as train

    params = params or load_params(PARAMS_FILE, SECTIONS)
    base, config, paths = params["base"], dsslic_config(params), stage_paths(params)
    images = paths["prepared"] / base["dataset"] / "train" / "images"
    segments = paths["segments"] / base["dataset"] / "train"
    out = paths["models"] / "dsslic"
    fingerprint = [config, base["device"], code_signature(),
                   content_signature(images.parent.parent / "manifest.parquet", segments.parent / "train.parquet")]
    with staged_dir(out, fingerprint) as staging:
        with remote_options(**training_options(base)):
            record = train.submit(config, str(images), str(segments), str(staging), base["device"]).result()
        (staging / STATE_FILE).unlink(missing_ok=True)  # the model is complete
    print(f"train_dsslic: {out / Path(record['model']).name} in {record['seconds']:.0f} s", file=sys.stderr)
    return record


def main(argv: list[str] | None = None) -> int:
    run_stage(train_dsslic, STAGE, SECTIONS, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
