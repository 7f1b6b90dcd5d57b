"""Stage ``smap_pairs``: SMapNet's training pairs (EDMS) -> ``data/pairs/<dataset>/``.

For each image of ``smap_pairs.split`` (the train split): PSPNet's logits of the upsampled
compact image up(c^) of the DSSLIC base model, and the segment stage's reference map of
the original (semlic.edms.generate_pairs). Shards of ``smap_pairs.shard_size`` images are
mapped over Ray (each loads the two models once). Output: ``logits/<id>.safetensors``,
``targets/<id>.png``, ``pairs.json`` and ``pairs.parquet`` (per-image mIoU of PSPNet(up(c^))
against the reference, sorted by id). Finished shards of a killed run are kept.
"""

from __future__ import annotations

import io
import shutil
import sys
from pathlib import Path

import pandas as pd
from prefect import flow
from prefect_ray.context import remote_options

from flows.runtime import (PARAMS_FILE, code_signature, content_signature, load_params, ray_runner, run_stage,
                           shard_options, shards, staged_dir, wait_all)

STAGE = "smap_pairs"
SECTIONS = ("base", "smap_pairs")
OUT = Path("data/pairs")
BASE_MODEL = Path("data/models/base/base.safetensors")
SEGNET = Path("data/models/segnet/segnet.safetensors")


@flow(name=STAGE, task_runner=ray_runner())
def smap_pairs(params: dict | None = None) -> dict:
    from semlic.imageio import atomic_write_bytes
    from tasks.edms import smap_pairs_shard

    params = params or load_params(PARAMS_FILE, SECTIONS)
    base, cfg = params["base"], params[STAGE]
    split = cfg.get("split", "train")
    prepared = Path("data/prepared").absolute() / base["dataset"]  # absolute: tasks may run elsewhere
    seg_dir = Path("data/segments").absolute() / base["dataset"] / split
    ids = sorted(p.stem for p in (prepared / split / "images").glob("*.png"))[: cfg.get("limit") or None]
    fingerprint = [base["dataset"], base["device"], cfg, code_signature(),
                   content_signature(prepared / "manifest.parquet", BASE_MODEL, SEGNET, seg_dir.parent / f"{split}.parquet")]
    with staged_dir(OUT, fingerprint) as staging:
        out, parts = staging / base["dataset"], staging / "parts"
        all_parts, futures = [], []
        with remote_options(**shard_options(base)):
            for index, shard in enumerate(shards(ids, cfg["shard_size"])):
                part = parts / f"{split}-{index:04d}.parquet"
                all_parts.append(part)
                if part.is_file():  # finished by an interrupted run with the same inputs
                    continue
                futures.append(smap_pairs_shard.submit(
                    str(BASE_MODEL.absolute()), str(SEGNET.absolute()), str(prepared), split, str(seg_dir),
                    shard, str(out), str(part), base["device"]))
        records = wait_all(futures)
        table = pd.concat([pd.read_parquet(p) for p in all_parts], ignore_index=True).sort_values("id", kind="stable")
        buffer = io.BytesIO()
        table.to_parquet(buffer, index=False)
        atomic_write_bytes(out / "pairs.parquet", buffer.getvalue())
        shutil.rmtree(parts)
    summary = {"pairs": len(table), "mean_miou_pspnet_up_c": float(table["miou"].mean())}
    print(f"smap_pairs: {summary} ({len(records)} of {len(all_parts)} shards run)", file=sys.stderr)
    return {**summary, "shards": records}


def main(argv: list[str] | None = None) -> int:
    run_stage(smap_pairs, STAGE, SECTIONS, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
