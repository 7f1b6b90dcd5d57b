"""Stage ``smap_pairs``: SMapNet's training pairs (EDMS) -> ``<paths.pairs>/<dataset>/``.

For each image of ``smap_pairs.split`` (the train split): PSPNet's logits of the upsampled
compact image up(c^) of the DSSLIC model, and the segment stage's reference map of the
original (semlic.methods.edms.pairs.generate_pairs). Shards of ``smap_pairs.shard_size`` images
are units (each loads the two models once). Output: ``logits/<id>.safetensors``,
``targets/<id>.png``, ``pairs.json`` and ``pairs.parquet`` (per-image mIoU of PSPNet(up(c^))
against the reference, sorted by id). Finished shards of a killed run are kept.
"""

from __future__ import annotations

import shutil
import sys

from semlic.pipeline.executor import Executor, shard_resources, timed, unit_device, unit_threads, wait_all
from semlic.pipeline.params import shards, stage_paths
from semlic.pipeline.stage import stage
from semlic.pipeline.staging import code_signature, content_signature, staged_dir

STAGE = "smap_pairs"


def smap_pairs_shard(model_path: str, segnet_path: str, prepared_dir: str, split: str, seg_dir: str,
                     ids: list[str], out_dir: str, part_path: str, device: str) -> dict:
    """semlic.methods.edms.pairs.generate_pairs on a shard of ids (models loaded once); its table to ``part_path``."""
    from semlic.fileio import write_parquet
    from semlic.methods.edms.pairs import generate_pairs
    from semlic.model_files import load_model

    device = unit_device(device)  # the GPU the executor gave this unit, if any
    with timed({"part": part_path, "images": len(ids)}) as record:
        record["threads"] = unit_threads()
        table = generate_pairs(load_model(model_path, device, expect="dsslic"),
                               load_model(segnet_path, device, expect="pspnet"), prepared_dir, split, seg_dir,
                               out_dir, ids=ids, progress=False)
        write_parquet(table.sort_values("id", kind="stable"), part_path)
        record["mean_miou"] = float(table["miou"].mean())
    return record


@stage(STAGE)
def smap_pairs(params: dict, executor: Executor) -> dict:
    """Stage smap_pairs: SMapNet's training pairs (PSPNet logits of up(c^), reference maps) -> data/pairs/"""
    import pandas as pd

    from semlic.fileio import write_parquet
    from semlic.methods.dsslic.training import MODEL_FILE as DSSLIC_FILE
    from semlic.segnet.train import MODEL_FILE as SEGNET_FILE

    base, cfg, paths = params["base"], params[STAGE], stage_paths(params)
    split = cfg.get("split", "train")
    prepared = paths["prepared"] / base["dataset"]
    seg_dir = paths["segments"] / base["dataset"] / split
    dsslic, segnet = paths["models"] / "dsslic" / DSSLIC_FILE, paths["models"] / "segnet" / SEGNET_FILE
    ids = sorted(p.stem for p in (prepared / split / "images").glob("*.png"))[: cfg.get("limit") or None]
    fingerprint = [base["dataset"], base["device"], cfg, code_signature(),
                   content_signature(prepared / "manifest.parquet", dsslic, segnet,
                                     seg_dir.parent / f"{split}.parquet")]
    with staged_dir(paths["pairs"], fingerprint) as staging:
        out, parts = staging / base["dataset"], staging / "parts"
        all_parts, futures = [], []
        for index, shard in enumerate(shards(ids, cfg["shard_size"])):
            part = parts / f"{split}-{index:04d}.parquet"
            all_parts.append(part)
            if part.is_file():  # finished by an interrupted run with the same inputs
                continue
            futures.append(executor.submit(
                smap_pairs_shard, str(dsslic), str(segnet), str(prepared), split, str(seg_dir),
                shard, str(out), str(part), base["device"], resources=shard_resources(base)))
        records = wait_all(futures)
        table = pd.concat([pd.read_parquet(p) for p in all_parts], ignore_index=True).sort_values("id", kind="stable")
        write_parquet(table, out / "pairs.parquet")
        shutil.rmtree(parts)
    summary = {"pairs": len(table), "mean_miou_pspnet_up_c": float(table["miou"].mean())}
    print(f"smap_pairs: {summary} ({len(records)} of {len(all_parts)} shards run)", file=sys.stderr)
    return {**summary, "shards": records}
