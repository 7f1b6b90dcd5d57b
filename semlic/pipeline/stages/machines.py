"""Stage ``machines``: the segmentation every coded file delivers at the receiver -> ``<paths.machines>``.

Coding for machines (semlic.machines): for each labelled data set the code stage coded, every file
under ``<paths.coded>/files/<dataset>`` is decoded from its bytes as a receiver would; the pipeline's
PSPNet segments the decoded image (output ``decoded``, bytes = the file) and each method's decoder
maps are read from the layers they need (output ``map``, ``derived``, ...; bytes = those layers and
the header). Shards of ``machines.shard_size`` images are units, each loading the
models once. The task rows of ``machines.include`` (other stages' rows in the same schema: the
compressed-domain students of eval_latent_seg) are added. Output: ``rows.parquet`` (DuckDB view
``task`` of ``semlic results``), ``summary.csv`` (per method, output and quality: mIoU from the summed
confusion matrices), ``machines.csv`` (BD-rate on mIoU against HEVC + PSPNet, bits to 90 % / 95 %
of the uncompressed mIoU), ``figures/rate_miou_<dataset>.png`` and ``metrics.json`` (DVC metrics). Data
sets without ground truth (Kodak) are left out. Finished shards of a killed run are kept.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from semlic.pipeline.executor import Executor, shard_resources, timed, unit_device, unit_threads, wait_all
from semlic.pipeline.params import shards, stage_paths
from semlic.pipeline.stage import stage
from semlic.pipeline.staging import code_signature, content_signature, staged_dir

STAGE = "machines"


def machines_shard(prepared_dir: str, split: str, ids: list[str], files_dir: str, models_dir: str, dataset: str,
                   part_path: str, device: str) -> dict:
    """semlic.machines.task_rows on a shard (the models loaded once); rows to ``part_path``."""
    from semlic import machines
    from semlic.fileio import write_parquet
    from semlic.segnet.prepared import list_prepared

    device = unit_device(device)  # the GPU the executor gave this unit, if any
    with timed({"part": part_path, "images": len(ids)}) as record:
        record["threads"] = unit_threads()
        wanted = set(ids)
        samples = [s for s in list_prepared(prepared_dir, split) if s.id in wanted]
        receiver = machines.Receiver(models_dir, device)
        rows = machines.frame(machines.task_rows(samples, files_dir, receiver, dataset=dataset, progress=False))
        write_parquet(rows, part_path)
        record["rows"] = len(rows)
    return record


@stage(STAGE, sections=("base", "paths", "code", "machines"))
def machines(params: dict, executor: Executor) -> dict:
    """Stage machines: the segmentation every coded file delivers at the receiver -> data/machines/"""
    from semlic import machines as task_rows
    from semlic.errors import ConfigError

    base, cfg, paths = params["base"], params[STAGE], stage_paths(params)
    split = params["code"].get("split", "test")
    sets = task_rows.labelled_sets(paths["coded"], paths["prepared"], split)
    if not sets:
        raise ConfigError(f"machines: no labelled {split} images with coded files under {paths['coded']}/files")
    include = [Path(p) for p in cfg.get("include") or []]
    missing = [str(p) for p in include if not p.is_file()]
    if missing:
        raise ConfigError(f"machines.include: {', '.join(missing)} not found (run the stage that writes it)")
    fingerprint = [sets, base["device"], cfg, code_signature(),
                   content_signature(paths["coded"], paths["models"], *include,
                                     *(paths["prepared"] / d / "manifest.parquet" for d in sets))]
    with staged_dir(paths["machines"], fingerprint) as staging:
        parts, futures, all_parts = staging / "parts", [], []
        for dataset, ids in sets.items():
            for index, shard in enumerate(shards(ids, cfg.get("shard_size", 4))):
                part = parts / f"{dataset}-{index:04d}.parquet"
                all_parts.append(part)
                if not part.is_file():
                    futures.append(executor.submit(
                        machines_shard, str(paths["prepared"] / dataset), split, shard,
                        str(paths["coded"] / "files" / dataset), str(paths["models"]), dataset, str(part),
                        base["device"], resources=shard_resources(base)))
        records = wait_all(futures)
        rows = task_rows.read_rows(all_parts + include)
        headline = task_rows.write_outputs(rows, staging)
        shutil.rmtree(parts, ignore_errors=True)
    print(f"machines: {len(rows)} rows for {sum(map(len, sets.values()))} images ({len(records)} of {len(all_parts)} "
          f"shard tasks run)", file=sys.stderr)
    for dataset, values in sorted(headline["bd_rate_miou_pct"].items()):
        for name, value in sorted(values.items()):
            print(f"machines: {dataset} {name}: BD-rate on mIoU against HEVC + PSPNet {value:+.1f} %", file=sys.stderr)
    return {"rows": len(rows), "metrics": headline}
