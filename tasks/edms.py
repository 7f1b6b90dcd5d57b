"""Tasks of the smap_pairs and train_smapnet stages (EDMS's SMapNet)."""

from __future__ import annotations

from prefect import task

from .common import TASK_OPTIONS, timed, use_assigned_threads


@task(name="smap-pairs-shard", **TASK_OPTIONS)
def smap_pairs_shard(model_path: str, segnet_path: str, prepared_dir: str, split: str, seg_dir: str,
                     ids: list[str], out_dir: str, part_path: str, device: str) -> dict:
    """semlic.edms.generate_pairs on a shard of ids (models loaded once); its table to ``part_path``."""
    import io

    from semlic.edms import generate_pairs
    from semlic.imageio import atomic_write_bytes
    from semlic.segnet import load_segnet
    from semlic.training import load_dsslic

    with timed({"part": part_path, "images": len(ids)}) as record:
        record["threads"] = use_assigned_threads()
        table = generate_pairs(load_dsslic(model_path, device), load_segnet(segnet_path, device), prepared_dir,
                               split, seg_dir, out_dir, ids=ids, progress=False)
        buffer = io.BytesIO()
        table.sort_values("id", kind="stable").to_parquet(buffer, index=False)
        atomic_write_bytes(part_path, buffer.getvalue())
        record["mean_miou"] = float(table["miou"].mean())
    return record


@task(name="train-smapnet", **TASK_OPTIONS)
def train_smapnet(config: dict, pairs_dir: str, out_dir: str, device: str) -> dict:
    """semlic.smapnet_training.train_smapnet, resuming from its own checkpoint."""
    from semlic.smapnet_training import train_smapnet as train

    with timed({"out_dir": out_dir}) as record:
        record["threads"] = use_assigned_threads()
        record["model"] = str(train(config, pairs_dir, out_dir, device=device, resume=True))
    return record
