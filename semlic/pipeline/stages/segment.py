"""Stage ``segment``: label maps of every prepared image -> ``<paths.segments>/<dataset>/``.

Shards of ``segment.shard_size`` images are units (each loads the PSPNet once). Output:
``<split>/<id>.png`` (class index per pixel) and ``<split>.parquet`` (per-image mIoU where ground
truth exists, sorted by id). Finished shards of a killed run are kept.
"""

from __future__ import annotations

import shutil
import sys

from semlic.pipeline.executor import Executor, shard_resources, timed, unit_device, unit_threads, wait_all
from semlic.pipeline.params import shards, stage_paths
from semlic.pipeline.stage import stage
from semlic.pipeline.staging import code_signature, content_signature, staged_dir

def part_name(split: str, index: int) -> str:
    return f"{split}-{index:04d}.parquet"


def segment_shard(model_path: str, image_paths: list[str], label_dir: str | None, out_dir: str, part_path: str,
                  device: str, batch_size: int) -> dict:
    """Segment one shard of images (model loaded once); write its table to ``part_path``."""
    from semlic.model_files import load_model
    from semlic.segnet.segment import segment_images, write_segment_table

    device = unit_device(device)  # the GPU the executor gave this unit, if any
    with timed({"part": part_path, "images": len(image_paths)}) as record:
        record["threads"] = unit_threads()
        model = load_model(model_path, device, expect="pspnet")
        table = segment_images(model, image_paths, out_dir, label_dir=label_dir, device=device,
                               batch_size=batch_size)
        write_segment_table(table, part_path)
        record["images_per_s"] = float(table.attrs.get("images_per_s", float("nan")))
    return record


@stage("segment")
def segment(params: dict, executor: Executor) -> dict:
    """Stage segment: PSPNet maps of every prepared image -> data/segments/<dataset>/"""
    import pandas as pd

    from semlic.segnet.segment import write_segment_table
    from semlic.segnet.train import MODEL_FILE as SEGNET_FILE

    base, cfg, paths = params["base"], params["segment"], stage_paths(params)
    prepared = paths["prepared"] / base["dataset"]
    segnet = paths["models"] / "segnet" / SEGNET_FILE
    fingerprint = [base["dataset"], base["device"], cfg, code_signature(),
                   content_signature(prepared / "manifest.parquet", segnet)]
    with staged_dir(paths["segments"], fingerprint) as staging:
        out, parts = staging / base["dataset"], staging / "parts"
        jobs, records = {}, []
        for split in cfg["splits"]:
            images = sorted((prepared / split / "images").glob("*.png"))
            labels = prepared / split / "labels"
            for index, shard in enumerate(shards(images, cfg["shard_size"])):
                part = parts / part_name(split, index)
                jobs.setdefault(split, []).append(part)
                if part.is_file():  # finished by an interrupted run with the same inputs
                    continue
                records.append(executor.submit(
                    segment_shard, str(segnet), [str(p) for p in shard], str(labels) if labels.is_dir() else None,
                    str(out / split), str(part), base["device"], int(cfg.get("batch_size", 4)),
                    resources=shard_resources(base)))
        records = wait_all(records)
        summary = {}
        for split, split_parts in jobs.items():
            table = pd.concat([pd.read_parquet(p) for p in split_parts], ignore_index=True)
            write_segment_table(table, out / f"{split}.parquet")
            summary[split] = {"images": len(table), "mean_miou": float(table["miou"].mean())}
        shutil.rmtree(parts)
    print(f"segment: {summary} ({len(records)} shards run)", file=sys.stderr)
    return {"splits": summary, "shards": records}
