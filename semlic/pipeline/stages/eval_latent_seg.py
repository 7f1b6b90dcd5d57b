"""Stage ``eval_latent_seg``: rate-mIoU of pixel-domain and compressed-domain segmentation -> ``<paths.latent_seg>``.

Shards of ``eval_latent_seg.shard_size`` test images are units; each loads the
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

from semlic.pipeline.executor import Executor, shard_resources, timed, unit_device, unit_threads, wait_all
from semlic.pipeline.params import shards, stage_paths
from semlic.pipeline.stage import stage
from semlic.pipeline.staging import code_signature, content_signature, staged_dir

STAGE = "eval_latent_seg"


def eval_shard(prepared_dir: str, split: str, ids: list[str], bank_path: str, models_dir: str, dataset: str,
               qualities: list[int] | None, part_path: str, device: str) -> dict:
    """semlic.methods.latent_seg.evaluate on a shard of images; rows to ``part_path``."""
    from semlic.fileio import write_parquet
    from semlic.methods.latent_seg import commands
    from semlic.methods.latent_seg.evaluate import evaluate, load_students
    from semlic.model_files import load_model
    from semlic.segnet.prepared import list_prepared

    device = unit_device(device)  # the GPU the executor gave this unit, if any
    with timed({"part": part_path, "images": len(ids)}) as record:
        record["threads"] = unit_threads()
        wanted = set(ids)
        samples = [s for s in list_prepared(prepared_dir, split) if s.id in wanted]
        rows = evaluate(samples, load_model(bank_path, device, expect="hyperprior"),
                        load_model(commands.teacher_path(models_dir), device, expect="deeplabv3"),
                        load_students(models_dir, device), dataset=dataset, qualities=qualities, progress=False)
        write_parquet(rows, part_path)
        record["rows"] = len(rows)
    return record


@stage(STAGE)
def eval_latent_seg(params: dict, executor: Executor) -> dict:
    """Stage eval_latent_seg: rate-mIoU of pixel- and compressed-domain segmentation -> data/latent_seg/"""
    import pandas as pd

    from semlic.imageio import load_image
    from semlic.methods.latent_seg.evaluate import load_students, write_outputs
    from semlic.methods.latent_seg.hyperprior import HYPERPRIOR_FILE
    from semlic.segnet.prepared import list_prepared

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
                futures.append(executor.submit(eval_shard, str(prepared), split, shard, str(bank), str(models),
                                               dataset, qualities, str(part), base["device"],
                                               resources=shard_resources(base)))
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
