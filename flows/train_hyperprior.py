"""Stage ``train_hyperprior``: CompressAI's bmshj2018-hyperprior -> ``<paths.models>/hyperprior/``.

Each quality of ``train_hyperprior.qualities`` trains as its own Ray task (they are
independent: they share the CPUs, or take a GPU each on CUDA), resuming from its state in
the staging directory when the stage was killed. The qualities then merge into one model file,
``hyperprior.safetensors`` (model ``hyperprior``, entropy tables included), which the code
stage (method ``hyperprior``) and the compressed-domain stages read; each quality's training
log stays in ``q<Q>/train_log.parquet``.
"""

from __future__ import annotations

import sys

from prefect import flow
from prefect_ray.context import remote_options

from flows.params import PARAMS_FILE, load_params, stage_paths
from flows.ray_cluster import training_options
from flows.runner import ray_runner, wait_all
from flows.stage import run_stage
from flows.staging import code_signature, content_signature, staged_dir, write_live

STAGE = "train_hyperprior"
SECTIONS = ("base", "paths", "train_hyperprior")


def hyperprior_config(params: dict) -> dict:
    config = dict(params[STAGE])
    config.setdefault("seed", params["base"]["seed"])
    return config


@flow(name=STAGE, task_runner=ray_runner())
def train_hyperprior(params: dict | None = None) -> dict:
    from semlic.methods.latent_seg.commands import hyperprior_qualities
    from semlic.methods.latent_seg.hyperprior import HYPERPRIOR_FILE, merge_banks
    from semlic.train_loop import STATE_FILE
    from tasks.latent_seg import train_hyperprior_quality

    params = params or load_params(PARAMS_FILE, SECTIONS)
    base, config, paths = params["base"], hyperprior_config(params), stage_paths(params)
    prepared = paths["prepared"] / base["dataset"]
    qualities = hyperprior_qualities(config)
    fingerprint = [config, base["device"], code_signature(), content_signature(prepared / "manifest.parquet")]
    with staged_dir(paths["models"] / "hyperprior", fingerprint) as staging:
        with remote_options(**training_options(base, concurrent=len(qualities))):
            records = wait_all([train_hyperprior_quality.submit(config, q, str(prepared), str(staging), base["device"])
                                for q in qualities])
        merge_banks([staging / f"q{q}" / HYPERPRIOR_FILE for q in qualities], staging / HYPERPRIOR_FILE)
        for q in qualities:   # one hyperprior model file below the models folder: the bank
            (staging / f"q{q}" / HYPERPRIOR_FILE).unlink(missing_ok=True)
            (staging / f"q{q}" / STATE_FILE).unlink(missing_ok=True)
    for record in records:
        print(f"train_hyperprior: {record['part']} {record['iterations']} iterations "
              f"({record['stopped_by'] or 'complete'}) in {record['seconds']:.0f} s", file=sys.stderr)
    write_live(STAGE, paths["models"] / "hyperprior", paths)  # DVCLive: dvc plots / dvc exp show
    return {"qualities": records}


def main(argv: list[str] | None = None) -> int:
    run_stage(train_hyperprior, STAGE, SECTIONS, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
