"""Stage ``train_sgfilter``: HEVC + SG filter's enhancement networks -> ``<paths.models>/sgfilter/``.

One Ray task per map source of ``variants`` (derived: model ``sgfilter``; none: ``sgfilter_nomap``;
sent: ``sgfilter_sent``), all at once, on the prepared train images coded at ``qps`` and the
segment stage's PSPNet, each resuming from its own state when the stage was killed. Each network
is written as ``<source>/<model>.safetensors`` beside its ``train_log.parquet``; the coded training
set each run caches is removed once its network is complete.
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

STAGE = "train_sgfilter"
SECTIONS = ("base", "paths", STAGE)


def runs(params: dict) -> dict[str, dict]:
    """The training runs by map source: the section's SGFilterTrainConfig fields (``seed`` from ``base``)."""
    from semlic.errors import ConfigError

    section = dict(params[STAGE])
    variants = section.pop("variants", None) or ["derived"]
    if len(set(variants)) != len(variants):
        raise ConfigError(f"{STAGE}: variants must be distinct, got {variants}")
    section.setdefault("seed", params["base"]["seed"])
    return {source: {**section, "map_source": source} for source in variants}


@flow(name=STAGE, task_runner=ray_runner())
def train_sgfilter(params: dict | None = None) -> dict:
    from semlic.methods.sgfilter.training import CACHE_FILE
    from semlic.train_loop import STATE_FILE
    from tasks.sgfilter import train_sgfilter as train

    params = params or load_params(PARAMS_FILE, SECTIONS)
    base, paths = params["base"], stage_paths(params)
    plan = runs(params)
    prepared = paths["prepared"] / base["dataset"]
    segnet = paths["models"] / "segnet" / "segnet.safetensors"
    fingerprint = [plan, base["device"], code_signature(), content_signature(prepared / "manifest.parquet", segnet)]
    with staged_dir(paths["models"] / "sgfilter", fingerprint) as staging:
        with remote_options(**training_options(base, concurrent=len(plan))):
            records = wait_all([train.submit(cfg, str(prepared), str(segnet), str(staging / source), base["device"])
                                for source, cfg in plan.items()])
        for source in plan:
            (staging / source / STATE_FILE).unlink(missing_ok=True)
            (staging / source / CACHE_FILE).unlink(missing_ok=True)
    for record in records:
        print(f"{STAGE}: {record['map_source']}: {record['iterations']} iterations ({record['stopped_by'] or 'complete'}) "
              f"in {record['seconds']:.0f} s", file=sys.stderr)
    write_live(STAGE, paths["models"] / "sgfilter", paths)  # DVCLive: dvc plots / dvc exp show
    return {"runs": records}


def main(argv: list[str] | None = None) -> int:
    run_stage(train_sgfilter, STAGE, SECTIONS, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
