"""Stage ``eval_latent_seg``: rate-mIoU of pixel-domain and compressed-domain segmentation -> ``<paths.latent_seg>``.

Shards of ``eval_latent_seg.shard_size`` test images are mapped over Ray; each task loads the
hyperprior, the teacher and every student once and codes each image at each quality into real
files (semlic.methods.latent_seg.evaluate). Output: ``rows.parquet`` (one row per image,
method and quality; DuckDB view ``latent_seg`` of ``semlic results``), ``summary.csv`` (mIoU
from the summed confusion matrices, mean bpp, median times), ``macs.csv`` (each transform
module), ``rate_miou.png`` and ``metrics.json`` (DVC metrics). Finished shards of a killed run
are kept.
"""

from __future__ import annotations

import shutil
import sys

from prefect import flow
from prefect_ray.context import remote_options

from flows.params import PARAMS_FILE, load_params, shards, stage_paths
from flows.ray_cluster import shard_options
from flows.runner import ray_runner, wait_all
from flows.stage import run_stage
from flows.staging import code_signature, content_signature, staged_dir

STAGE = "eval_latent_seg"
SECTIONS = ("base", "paths", "eval_latent_seg")


@flow(name=STAGE, task_runner=ray_runner())
def eval_latent_seg(params: dict | None = None) -> dict:
    import pandas as pd

    from semlic.imageio import load_image
    from semlic.methods.latent_seg.evaluate import load_students, write_outputs
    from semlic.methods.latent_seg.hyperprior import HYPERPRIOR_FILE
    from semlic.segnet.prepared import list_prepared
    from tasks.latent_seg import eval_shard

    params = params or load_params(PARAMS_FILE, SECTIONS)
    base, cfg, paths = params["base"], params[STAGE], stage_paths(params)
    dataset, split = base["dataset"], cfg.get("split", "test")
    prepared = paths["prepared"] / dataset
    samples = [s for s in list_prepared(prepared, split) if s.label_path is not None][: cfg.get("limit") or None]
    bank, models = paths["models"] / "hyperprior" / HYPERPRIOR_FILE, paths["models"] / "latent_seg"
    qualities = cfg.get("qualities")
    fingerprint = [dataset, base["device"], cfg, code_signature(),
                   content_signature(prepared / "manifest.parquet", bank, models)]
    with staged_dir(paths["latent_seg"], fingerprint) as staging:
        parts, futures, all_parts = staging / "parts", [], []
        for index, shard in enumerate(shards([s.id for s in samples], cfg.get("shard_size", 8))):
            part = parts / f"part-{index:04d}.parquet"
            all_parts.append(part)
            if not part.is_file():
                with remote_options(**shard_options(base)):
                    futures.append(eval_shard.submit(str(prepared), split, shard, str(bank), str(models), dataset,
                                                     qualities, str(part), base["device"]))
        records = wait_all(futures)
        rows = pd.concat([pd.read_parquet(p) for p in all_parts], ignore_index=True)
        rows = rows.sort_values(["dataset", "method", "quality", "image_id"], kind="stable").reset_index(drop=True)
        size = load_image(samples[0].image_path).shape[:2]
        metrics = write_outputs(rows, staging, load_students(models), size)
        shutil.rmtree(parts, ignore_errors=True)
    print(f"eval_latent_seg: {len(rows)} rows for {len(samples)} images ({len(records)} of {len(all_parts)} shard "
          f"tasks run)", file=sys.stderr)
    for name, figures in sorted(metrics.items()):
        print(f"eval_latent_seg: {name}: {figures['bpp']} bpp, mIoU {figures['miou']}", file=sys.stderr)
    return {"rows": len(rows), "metrics": metrics}


def main(argv: list[str] | None = None) -> int:
    run_stage(eval_latent_seg, STAGE, SECTIONS, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
