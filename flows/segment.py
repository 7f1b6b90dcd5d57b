"""Stage ``segment``: label maps of every prepared image -> ``<paths.segments>/<dataset>/``.

Shards of ``segment.shard_size`` images are mapped over Ray (each loads the PSPNet once).
Output: ``<split>/<id>.png`` (class index per pixel) and ``<split>.parquet`` (per-image
mIoU where ground truth exists, sorted by id). Finished shards of a killed run are kept.
"""

from __future__ import annotations

import shutil
import sys

import pandas as pd
from prefect import flow
from prefect_ray.context import remote_options

from flows.params import PARAMS_FILE, load_params, shards, stage_paths
from flows.ray_cluster import shard_options
from flows.runner import ray_runner, wait_all
from flows.stage import run_stage
from flows.staging import code_signature, content_signature, staged_dir

STAGE = "segment"
SECTIONS = ("base", "paths", "segment")


@flow(name=STAGE, task_runner=ray_runner())
def segment(params: dict | None = None) -> dict:
    from semlic.segnet.segment import write_segment_table
    from tasks.segnet import SEGNET_FILE, part_name, segment_shard

    params = params or load_params(PARAMS_FILE, SECTIONS)
    base, cfg, paths = params["base"], params[STAGE], stage_paths(params)
    prepared = paths["prepared"] / base["dataset"]
    segnet = paths["models"] / "segnet" / SEGNET_FILE
    fingerprint = [base["dataset"], base["device"], cfg, code_signature(),
                   content_signature(prepared / "manifest.parquet", segnet)]
    with staged_dir(paths["segments"], fingerprint) as staging:
        out, parts = staging / base["dataset"], staging / "parts"
        jobs, records = {}, []
        with remote_options(**shard_options(base)):
            for split in cfg["splits"]:
                images = sorted((prepared / split / "images").glob("*.png"))
                labels = prepared / split / "labels"
                for index, shard in enumerate(shards(images, cfg["shard_size"])):
                    part = parts / part_name(split, index)
                    jobs.setdefault(split, []).append(part)
                    if part.is_file():  # finished by an interrupted run with the same inputs
                        continue
                    records.append(segment_shard.submit(
                        str(segnet), [str(p) for p in shard], str(labels) if labels.is_dir() else None,
                        str(out / split), str(part), base["device"], int(cfg.get("batch_size", 4))))
        records = wait_all(records)
        summary = {}
        for split, split_parts in jobs.items():
            table = pd.concat([pd.read_parquet(p) for p in split_parts], ignore_index=True)
            write_segment_table(table, out / f"{split}.parquet")
            summary[split] = {"images": len(table), "mean_miou": float(table["miou"].mean())}
        shutil.rmtree(parts)
    print(f"segment: {summary} ({len(records)} shards run)", file=sys.stderr)
    return {"splits": summary, "shards": records}


def main(argv: list[str] | None = None) -> int:
    run_stage(segment, STAGE, SECTIONS, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
