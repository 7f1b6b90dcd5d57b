"""Stage ``train_dsslic_rd``: DSSLIC-RD's rate-aware base layer -> ``<paths.models>/dsslic_rd/``.

One training unit per map mode of ``maps`` (a mapping: mode -> its lambdas; [] leaves the mode
out) and each of its lambdas, all at once (they share the CPUs, or take a GPU each on CUDA), on
the prepared train images and their PSPNet maps, each resuming from its own state when the stage
was killed. ``init: dsslic`` starts every network from the train_dsslic stage's model (a path:
that file; null: from scratch); ``map: derived`` runs the segnet stage's PSPNet in the loop. The
lambdas of each map mode then merge into one bank: ``dsslic_rd.safetensors`` (map lossless),
``dsslic_rd_lossy.safetensors``, ``dsslic_rd_derived.safetensors``, which the code stage's
methods of the same names read. Each run's training log stays in ``<map>_l<level>/train_log.parquet``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from semlic.pipeline.executor import Executor, run_training, training_resources, wait_all
from semlic.pipeline.params import stage_paths
from semlic.pipeline.stage import stage
from semlic.pipeline.staging import code_signature, content_signature, staged_dir, write_live

STAGE = "train_dsslic_rd"


def runs(params: dict, paths: dict) -> dict[str, dict]:
    """The training runs, by folder name: ``<map>_l<level>`` -> the run's RDTrainConfig fields."""
    from semlic.data.datasets import get_spec
    from semlic.errors import ConfigError

    section = dict(params[STAGE])
    maps = section.pop("maps", None) or ["lossless"]
    lambdas = section.pop("lambdas", None) or [0.01]
    if not isinstance(maps, dict):   # a list of modes: every mode at every lambda of ``lambdas``
        if len(set(maps)) != len(maps):
            raise ConfigError(f"{STAGE}: maps must be distinct, got {maps}")
        maps = {mode: lambdas for mode in maps}
    maps = {mode: sorted(float(v) for v in values or []) for mode, values in maps.items()}
    maps = {mode: values for mode, values in maps.items() if values}   # []: that mode is not trained
    if not maps:
        raise ConfigError(f"{STAGE}: no map mode has a lambda to train (train_dsslic_rd.maps)")
    for mode, values in maps.items():
        if len(set(values)) != len(values):
            raise ConfigError(f"{STAGE}: the lambdas of map {mode} must be distinct, got {values}")
    section.setdefault("seed", params["base"]["seed"])
    if section.get("label_nc") is None:
        section["label_nc"] = get_spec(params["base"]["dataset"]).num_classes
    init = section.get("init")
    if init == "dsslic":
        section["init"] = str(paths["models"] / "dsslic" / "dsslic.safetensors")
    elif init:
        section["init"] = str(Path(init).absolute())
    section["segnet"] = str(paths["models"] / "segnet" / "segnet.safetensors") if "derived" in maps else None
    return {f"{m}_l{level}": {**section, "map": m, "lmbda": lmbda}
            for m, values in maps.items() for level, lmbda in enumerate(values)}


def train_dsslic_rd_unit(config: dict, image_dir: str, seg_dir: str, out_dir: str, device: str) -> dict:
    """semlic.methods.dsslic_rd.training.train_dsslic_rd: one lambda of one map mode, resuming from its state."""
    from semlic.methods.dsslic_rd.training import train_dsslic_rd as train

    return run_training(train, {"out_dir": out_dir, "map": config.get("map"), "lmbda": config.get("lmbda")},
                        config, image_dir, seg_dir, out_dir, device=device)


@stage(STAGE)
def train_dsslic_rd(params: dict, executor: Executor) -> dict:
    """Stage train_dsslic_rd: DSSLIC-RD's rate-aware base layer, one bank per map mode -> data/models/dsslic_rd/"""
    from semlic.methods.dsslic_rd.model import bank_class
    from semlic.methods.dsslic_rd.training import merge_levels
    from semlic.train_loop import STATE_FILE

    base, paths = params["base"], stage_paths(params)
    plan = runs(params, paths)
    images = paths["prepared"] / base["dataset"] / "train" / "images"
    segments = paths["segments"] / base["dataset"] / "train"
    inputs = [images.parent.parent / "manifest.parquet", segments.parent / "train.parquet"]
    inputs += sorted({Path(c[k]) for c in plan.values() for k in ("init", "segnet") if c.get(k)})
    fingerprint = [plan, base["device"], code_signature(), content_signature(*inputs)]
    with staged_dir(paths["models"] / "dsslic_rd", fingerprint) as staging:
        resources = training_resources(base, concurrent=len(plan))
        records = wait_all([executor.submit(train_dsslic_rd_unit, cfg, str(images), str(segments),
                                            str(staging / name), base["device"], resources=resources)
                            for name, cfg in plan.items()])
        for mode in dict.fromkeys(cfg["map"] for cfg in plan.values()):
            model = bank_class(mode).registry_name
            files = [staging / name / f"{model}.safetensors" for name, cfg in plan.items() if cfg["map"] == mode]
            merge_levels(files, staging / f"{model}.safetensors")
            for path in files:   # one model file per map mode below the models folder: the bank
                path.unlink()
        for name in plan:
            (staging / name / STATE_FILE).unlink(missing_ok=True)
    for record in records:
        print(f"{STAGE}: {record['map']} lambda {record['lmbda']:g}: {record['iterations']} iterations "
              f"({record['stopped_by'] or 'complete'}) in {record['seconds']:.0f} s", file=sys.stderr)
    write_live(STAGE, paths["models"] / "dsslic_rd", paths)  # DVCLive: dvc plots / dvc exp show
    return {"runs": records}
