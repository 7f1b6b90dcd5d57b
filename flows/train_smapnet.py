"""Stage ``train_smapnet``: EDMS's SMapNet on the smap_pairs stage's pairs -> ``<paths.models>/smapnet/``.

One GPU task (semlic.smapnet_training.train_smapnet). Killed midway, the rerun resumes
from the library's checkpoint in the staging directory. Output: ``smapnet.safetensors``
and ``train_log.parquet``.
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
from flows.staging import code_signature, content_signature, staged_dir, write_live

STAGE = "train_smapnet"
SECTIONS = ("base", "paths", "train_smapnet")


def smapnet_config(params: dict) -> dict:
    """The stage's section; ``seed`` from ``base`` unless given."""
    config = dict(params[STAGE])
    config.setdefault("seed", params["base"]["seed"])
    return config


@flow(name=STAGE, task_runner=ray_runner())
def train_smapnet(params: dict | None = None) -> dict:
    from semlic.train_loop import STATE_FILE
    from tasks.edms import train_smapnet as train

    params = params or load_params(PARAMS_FILE, SECTIONS)
    base, config, paths = params["base"], smapnet_config(params), stage_paths(params)
    pairs = paths["pairs"] / base["dataset"]
    out = paths["models"] / "smapnet"
    fingerprint = [config, base["device"], code_signature(), content_signature(pairs)]
    with staged_dir(out, fingerprint) as staging:
        with remote_options(**training_options(base)):
            record = train.submit(config, str(pairs), str(staging), base["device"]).result()
        (staging / STATE_FILE).unlink(missing_ok=True)  # the model is complete
    print(f"train_smapnet: {out / Path(record['model']).name} in {record['seconds']:.0f} s", file=sys.stderr)
    write_live(STAGE, out, paths)  # DVCLive: dvc plots / dvc exp show
    return record


def main(argv: list[str] | None = None) -> int:
    run_stage(train_smapnet, STAGE, SECTIONS, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
