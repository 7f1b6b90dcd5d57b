"""Stage ``train_sgfilter``: HEVC + SG filter's enhancement networks -> ``<paths.models>/sgfilter/``.

One training unit per map source of ``variants`` (derived: model ``sgfilter``; none:
``sgfilter_nomap``; sent: ``sgfilter_sent``), all at once, on the prepared train images coded at
``qps`` and the segment stage's PSPNet, each resuming from its own state when the stage was killed.
Each network is written as ``<source>/<model>.safetensors`` beside its ``train_log.parquet``; the
coded training set each run caches is removed once its network is complete.
"""

from __future__ import annotations

import sys

from semlic.pipeline.executor import Executor, run_training, training_resources, unit_device, wait_all
from semlic.pipeline.params import stage_paths
from semlic.pipeline.stage import stage
from semlic.pipeline.staging import code_signature, content_signature, staged_dir, write_live

STAGE = "train_sgfilter"


def runs(params: dict) -> dict[str, dict]:
    """The training runs by map source: the section's SGFilterTrainConfig fields (``seed`` from ``base``)."""
    from semlic.errors import ConfigError

    section = dict(params[STAGE])
    variants = section.pop("variants", None) or ["derived"]
    if len(set(variants)) != len(variants):
        raise ConfigError(f"{STAGE}: variants must be distinct, got {variants}")
    section.setdefault("seed", params["base"]["seed"])
    return {source: {**section, "map_source": source} for source in variants}


def train_sgfilter_unit(config: dict, prepared_dir: str, segnet_path: str, out_dir: str, device: str) -> dict:
    """semlic.methods.sgfilter.training.train_sgfilter of one map source, resuming from its own state."""
    from semlic.methods.sgfilter.training import train_sgfilter as train
    from semlic.model_files import load_model

    device = unit_device(device)  # the segmenter on the unit's device
    return run_training(train, {"out_dir": out_dir, "map_source": config["map_source"]}, config, prepared_dir,
                        out_dir, load_model(segnet_path, device, expect="pspnet"), device=device)


@stage(STAGE)
def train_sgfilter(params: dict, executor: Executor) -> dict:
    """Stage train_sgfilter: HEVC + SG filter's enhancement networks, one per map source -> data/models/sgfilter/"""
    from semlic.methods.sgfilter.training import CACHE_FILE
    from semlic.train_loop import STATE_FILE

    base, paths = params["base"], stage_paths(params)
    plan = runs(params)
    prepared = paths["prepared"] / base["dataset"]
    segnet = paths["models"] / "segnet" / "segnet.safetensors"
    fingerprint = [plan, base["device"], code_signature(), content_signature(prepared / "manifest.parquet", segnet)]
    with staged_dir(paths["models"] / "sgfilter", fingerprint) as staging:
        resources = training_resources(base, concurrent=len(plan))
        records = wait_all([executor.submit(train_sgfilter_unit, cfg, str(prepared), str(segnet),
                                            str(staging / source), base["device"], resources=resources)
                            for source, cfg in plan.items()])
        for source in plan:
            (staging / source / STATE_FILE).unlink(missing_ok=True)
            (staging / source / CACHE_FILE).unlink(missing_ok=True)
    for record in records:
        print(f"{STAGE}: {record['map_source']}: {record['iterations']} iterations ({record['stopped_by'] or 'complete'}) "
              f"in {record['seconds']:.0f} s", file=sys.stderr)
    write_live(STAGE, paths["models"] / "sgfilter", paths)  # DVCLive: dvc plots / dvc exp show
    return {"runs": records}
