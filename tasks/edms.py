"""Tasks of the smap_pairs and train_smapnet stages (EDMS's SMapNet)."""

from __future__ import annotations

from prefect import task

from semlic.fileio import write_parquet
from semlic.methods.edms.pairs import generate_pairs
from semlic.methods.edms.training import train_smapnet as train
from semlic.model_files import load_model

from .common import TASK_OPTIONS, task_device, timed, use_assigned_threads


@task(name="smap-pairs-shard", **TASK_OPTIONS)
def smap_pairs_shard(model_path: str, segnet_path: str, prepared_dir: str, split: str, seg_dir: str,
                     ids: list[str], out_dir: str, part_path: str, device: str) -> dict:
    """semlic.methods.edms.pairs.generate_pairs on a shard of ids (models loaded once); its table to ``part_path``."""
    device = task_device(device)  # the GPU Ray gave this task, if any
    with timed({"part": part_path, "images": len(ids)}) as record:
        record["threads"] = use_assigned_threads()
        table = generate_pairs(load_model(model_path, device, expect="dsslic"),
                               load_model(segnet_path, device, expect="pspnet"), prepared_dir, split, seg_dir,
                               out_dir, ids=ids, progress=False)
        write_parquet(table.sort_values("id", kind="stable"), part_path)
        record["mean_miou"] = float(table["miou"].mean())
    return record


@task(name="train-smapnet", **TASK_OPTIONS)
def train_smapnet(config: dict, pairs_dir: str, out_dir: str, device: str) -> dict:
    """semlic.methods.edms.training.train_smapnet, resuming from its own state."""
    device = task_device(device)  # the GPU Ray gave this task, if any
    with timed({"out_dir": out_dir}) as record:
        record["threads"] = use_assigned_threads()
        result = train(config, pairs_dir, out_dir, device=device, resume=True, progress=False)
        record.update(completed=result.completed, iterations=result.iteration, model=str(result.model_path),
                      last=result.last)
    return record
