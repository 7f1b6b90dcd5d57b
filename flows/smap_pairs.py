"""Stage ``smap_pairs``: SMapNet's training pairs (EDMS) -> ``<paths.pairs>/<dataset>/``.

For each image of ``smap_pairs.split`` (the train split): PSPNet's logits of the upsampled
compact image up(c^) of the DSSLIC model, and the segment stage's reference map of the
original (semlic.methods.edms.pairs.generate_pairs). Shards of ``smap_pairs.shard_size`` images are
mapped over Ray (each loads the two models once). Output: ``logits/<id>.safetensors``,
``targets/<id>.png``, ``pairs.json`` and ``pairs.parquet`` (per-image mIoU of PSPNet(up(c^))
against the reference, sorted by id). Finished shards of a killed run are kept.
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

STAGE = "smap_pairs"
SECTIONS = ("base", "paths", "smap_pairs")


@flow(name=STAGE, task_runner=ray_runner())
def smap_pairs(params: dict | None = None) -> dict:
    from semlic.fileio import write_parquet
    from semlic.methods.dsslic.training import MODEL_FILE as DSSLIC_FILE
    from tasks.edms import smap_pairs_shard
    from tasks.segnet import SEGNET_FILE

    params = params or load_params(PARAMS_FILE, SECTIONS)
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
        with remote_options(**shard_options(base)):
            for index, shard in enumerate(shards(ids, cfg["shard_size"])):
                part = parts / f"{split}-{index:04d}.parquet"
                all_parts.append(part)
                if part.is_file():  # finished by an interrupted run with the same inputs
                    continue
                futures.append(smap_pairs_shard.submit(
                    str(dsslic), str(segnet), str(prepared), split, str(seg_dir),
                    shard, str(out), str(part), base["device"]))
        records = wait_all(futures)
        table = pd.concat([pd.read_parquet(p) for p in all_parts], ignore_index=True).sort_values("id", kind="stable")
        write_parquet(table, out / "pairs.parquet")
        shutil.rmtree(parts)
    summary = {"pairs": len(table), "mean_miou_pspnet_up_c": float(table["miou"].mean())}
    print(f"smap_pairs: {summary} ({len(records)} of {len(all_parts)} shards run)", file=sys.stderr)
    return {**summary, "shards": records}


def main(argv: list[str] | None = None) -> int:
    run_stage(smap_pairs, STAGE, SECTIONS, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
