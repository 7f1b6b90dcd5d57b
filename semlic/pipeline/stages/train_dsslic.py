"""Stage ``train_dsslic``: the DSSLIC generator (CompNet + FineNet) -> ``<paths.models>/dsslic/``.

One training unit (semlic.methods.dsslic.training.train_dsslic) on the prepared train images and
their PSPNet maps. Killed midway, the rerun resumes from the training loop's state in the
staging directory. Output: ``dsslic.safetensors`` (model ``dsslic``) and ``train_log.parquet``.

``noseg: true`` also trains the paper's noSeg ablation (the same settings, no map in: model
``dsslic_noseg``, in ``noseg/``) as a second unit at the same time, each on half the CPUs (a
GPU each on CUDA), so that both get the same compute within the same budget.
"""

from __future__ import annotations

import sys
from pathlib import Path

from semlic.pipeline.executor import Executor, run_training, training_resources
from semlic.pipeline.params import stage_paths
from semlic.pipeline.stage import stage
from semlic.pipeline.staging import code_signature, content_signature, staged_dir, write_live

STAGE = "train_dsslic"


def dsslic_config(params: dict) -> dict:
    """The stage's section; ``seed`` from ``base``, ``label_nc`` null -> the data set's classes."""
    from semlic.data.datasets import get_spec

    config = dict(params[STAGE])
    config.setdefault("seed", params["base"]["seed"])
    if config.get("label_nc") is None:
        config["label_nc"] = get_spec(params["base"]["dataset"]).num_classes
    return config


def train_dsslic_unit(config: dict, image_dir: str, seg_dir: str, out_dir: str, device: str) -> dict:
    """semlic.methods.dsslic.training.train_dsslic (CompNet + FineNet), resuming from its own state."""
    from semlic.methods.dsslic.training import train_dsslic as train

    return run_training(train, {"out_dir": out_dir}, config, image_dir, seg_dir, out_dir, device=device)


@stage(STAGE)
def train_dsslic(params: dict, executor: Executor) -> dict:
    """Stage train_dsslic: the DSSLIC generator (and its noSeg ablation) -> data/models/dsslic/"""
    from semlic.train_loop import STATE_FILE

    base, config, paths = params["base"], dsslic_config(params), stage_paths(params)
    noseg = bool(config.pop("noseg", False))
    images = paths["prepared"] / base["dataset"] / "train" / "images"
    segments = paths["segments"] / base["dataset"] / "train"
    out = paths["models"] / "dsslic"
    fingerprint = [config, base["device"], code_signature(),
                   content_signature(images.parent.parent / "manifest.parquet", segments.parent / "train.parquet")]
    runs = {".": config, **({"noseg": {**config, "segmentation": False}} if noseg else {})}
    with staged_dir(out, [*fingerprint, noseg]) as staging:
        resources = training_resources(base, concurrent=len(runs))
        futures = {name: executor.submit(train_dsslic_unit, cfg, str(images), str(segments), str(staging / name),
                                         base["device"], resources=resources)
                   for name, cfg in runs.items()}
        records = {name: future.result() for name, future in futures.items()}
        for name in runs:
            (staging / name / STATE_FILE).unlink(missing_ok=True)  # the model is complete
    for record in records.values():
        print(f"train_dsslic: {Path(record['model']).name}: {record['iterations']} iterations in "
              f"{record['seconds']:.0f} s", file=sys.stderr)
    write_live(STAGE, out, paths)  # DVCLive: dvc plots / dvc exp show
    return records["."] if not noseg else {**records["."], "noseg": records["noseg"]}
