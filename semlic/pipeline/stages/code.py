"""Stage ``code``: the test images through every method of ``code.methods`` and every baseline -> ``<paths.coded>``.

``code.also`` names more data sets (prepared by ``prepare.also``) whose ``test`` split is coded
with the same models; ``code.sample`` codes an evenly spaced sample of N images of each. Shards of ``code.shard_size`` images are units: one baselines unit and one unit per
registered method named in ``code.methods`` (its section: ``qualities`` and the method's
options, semlic.code_stage.MethodPlan; ``{}`` for the method's defaults, null to leave it out)
per shard; each unit finds the models its method needs
by name below ``<paths.models>`` and loads them once. A method that takes a segmentation map
runs its segmentation network on each image (``segmentation: segnet``, the time counted in
enc_s as in the papers) or reads the segment stage's maps (``precomputed``). Output::

    files/<dataset>/<method>/<image>_<quality>.<ext>   every coded file (bpp is measured on it)
    rows/method=<m>/dataset=<d>/part-0.parquet          section-6 rows, sorted (hive partitions)
    timings.parquet                                     enc_s, dec_s per row

The rows are a pure function of the inputs, so a rerun (or a run on other machines) gives
byte-identical Parquet: their ``enc_s``/``dec_s`` are left NaN and the measured times, which
differ from run to run, go to ``timings.parquet``; aggregate joins them back into rd.parquet.
Finished shards of a killed run are kept; the rest are redone.
"""

from __future__ import annotations

import math
import shutil
import sys
from pathlib import Path

from semlic.pipeline.executor import Executor, shard_resources, timed, unit_device, unit_threads, wait_all
from semlic.pipeline.params import shards, stage_paths
from semlic.pipeline.stage import stage
from semlic.pipeline.staging import code_signature, content_signature, staged_dir

STAGE = "code"
TIMING_COLUMNS = ("enc_s", "dec_s")
KEY_COLUMNS = ("dataset", "method", "image_id", "quality")


def coded_sets(dataset: str, split: str, also: list | None) -> list[tuple[str, str]]:
    """(data set, split) pairs the stage codes: ``split`` of ``dataset``, then the ``test`` split (or
    the last) of each data set in ``code.also`` (models trained on ``dataset``, as the papers
    test generalisation)."""
    from semlic.data.datasets import get_spec

    sets = [(dataset, split)]
    for name in also or []:
        if name != dataset:
            splits = get_spec(name).splits
            sets.append((name, "test" if "test" in splits else splits[-1]))
    return sets


def split_timings(rows):
    """(the rows with NaN timings, their timings keyed like the rows): parts of the stage's tasks
    with the measured times taken out, so that the rows are a pure function of the inputs."""
    import pyarrow as pa

    timings = rows.select(list(KEY_COLUMNS + TIMING_COLUMNS))
    nan = pa.array([math.nan] * rows.num_rows, pa.float64())
    for column in TIMING_COLUMNS:
        rows = rows.set_column(rows.schema.get_field_index(column), column, nan)
    return rows, timings


def merge_parts(parts: list[Path], rows_dir: Path, timings_path: Path) -> tuple[int, list[str]]:
    """The tasks' parts -> the hive tree of rows (NaN timings) and ``timings.parquet``, one partition
    at a time: the driver holds one partition's rows, never every image's (reports/load.md).
    Returns (rows, methods)."""
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    from semlic import results

    schema = pa.schema([(k, pa.float64() if k in ("quality",) + TIMING_COLUMNS else pa.string())
                        for k in KEY_COLUMNS + TIMING_COLUMNS])
    tmp = timings_path.with_name(f".{timings_path.name}.tmp-{os.getpid()}")
    count, methods = 0, set()
    try:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            # partitions by (dataset, method): the timings file comes out sorted by its key
            for timings in results.merge_partitioned(parts, rows_dir, order=("dataset", "method"), split=split_timings):
                writer.write_table(timings.cast(schema))
                count += timings.num_rows
                methods.update(timings["method"].unique().to_pylist())
        os.replace(tmp, timings_path)
    finally:
        tmp.unlink(missing_ok=True)
    return count, sorted(methods)

def baselines_shard(image_paths: list[str], codecs: list[str], sweep: dict | None, options: dict | None,
                    dataset: str, files_dir: str, part_path: str, with_lpips: bool = True) -> dict:
    """semlic.baselines.run_baselines on a shard; rows to ``part_path``."""
    from semlic import results
    from semlic.baselines import run_baselines

    with timed({"part": part_path, "images": len(image_paths), "method": "baselines"}) as record:
        record["threads"] = unit_threads()
        rows = run_baselines(image_paths, codecs, out_dir=files_dir, sweep=sweep or None, dataset=dataset,
                             workers=1, options=options or None, progress=False, with_lpips=with_lpips)
        results.write_rows(rows, part_path)
        record["rows"] = len(rows)
    return record


def method_shard(image_paths: list[str], method: str, section: dict | None, models_dir: str, seg_dir: str | None,
                 dataset: str, files_dir: str, part_path: str, device: str, with_lpips: bool = True) -> dict:
    """semlic.code_stage.code_shard: one registered method on a shard, its models (found by name
    in ``models_dir``) loaded once; rows to ``part_path``."""
    from semlic import results
    from semlic.code_stage import code_shard

    device = unit_device(device)  # the GPU the executor gave this unit, if any
    with timed({"part": part_path, "images": len(image_paths), "method": method}) as record:
        record["threads"] = unit_threads()
        rows = code_shard(image_paths, method, section, models_dir=models_dir, dataset=dataset, seg_dir=seg_dir,
                          out_dir=files_dir, device=device, with_lpips=with_lpips)
        results.write_rows(rows, part_path)
        record["rows"] = len(rows)
    return record


@stage(STAGE)
def code(params: dict, executor: Executor) -> dict:
    """Stage code: the test images through every method and baseline -> data/coded/ (files, rows, timings)"""
    from semlic.code_stage import MethodPlan, sample_images
    from semlic.errors import ConfigError

    base, cfg, paths = params["base"], params[STAGE], stage_paths(params)
    split = cfg.get("split", "test")
    sets = coded_sets(base["dataset"], split, cfg.get("also"))
    baselines = cfg.get("baselines")
    with_lpips = bool(cfg.get("lpips", True))
    methods = {name: section or {} for name, section in (cfg.get("methods") or {}).items() if section is not None}
    plans = {name: MethodPlan.from_section(name, section)   # refuse unknown methods or options before any work
             for name, section in sorted(methods.items())}
    inputs = [paths["models"]]
    images: dict[str, list[Path]] = {}
    for dataset, set_split in sets:
        prepared = paths["prepared"] / dataset
        if not (prepared / "manifest.parquet").is_file():
            raise ConfigError(f"code: data set {dataset} is not prepared ({prepared}/manifest.parquet missing): "
                              f"name it in prepare.also")
        images[dataset] = sample_images(sorted((prepared / set_split / "images").glob("*.png")), cfg.get("sample"),
                                        cfg.get("limit"))
        inputs.append(prepared / "manifest.parquet")
        seg_table = paths["segments"] / dataset / f"{set_split}.parquet"
        if seg_table.is_file():
            inputs.append(seg_table)
        needing = [name for name, plan in plans.items() if plan.segmentation == "precomputed"]
        if needing and not seg_table.is_file():
            raise ConfigError(f"code: {', '.join(needing)} read precomputed maps, but the segment stage made none "
                              f"for {dataset}/{set_split}: use segmentation: segnet")
    fingerprint = [sets, base["device"], cfg, code_signature(), content_signature(*inputs)]
    with staged_dir(paths["coded"], fingerprint) as staging:
        parts = staging / "parts"
        all_parts, futures = [], []
        for dataset, set_split in sets:
            files, seg_dir = staging / "files" / dataset, paths["segments"] / dataset / set_split
            tag = "" if dataset == base["dataset"] else f"{dataset}-"
            for index, shard in enumerate(shards([str(p) for p in images[dataset]], cfg["shard_size"])):
                if baselines:
                    part = parts / f"{tag}baselines-{index:04d}.parquet"
                    all_parts.append(part)
                    if not part.is_file():   # the codecs run on CPU
                        futures.append(executor.submit(
                            baselines_shard, shard, list(baselines["codecs"]), baselines.get("sweep"),
                            baselines.get("options"), dataset, str(files), str(part), with_lpips,
                            resources=shard_resources(base, gpu=False)))
                for name, section in sorted(methods.items()):
                    part = parts / f"{tag}{name}-{index:04d}.parquet"
                    all_parts.append(part)
                    if not part.is_file():
                        futures.append(executor.submit(
                            method_shard, shard, name, section, str(paths["models"]), str(seg_dir), dataset,
                            str(files), str(part), base["device"], with_lpips, resources=shard_resources(base)))
        records = wait_all(futures)
        count, coded = merge_parts(all_parts, staging / "rows", staging / "timings.parquet")
        shutil.rmtree(parts, ignore_errors=True)
    print(f"code: {count} rows for {sum(map(len, images.values()))} images of {[d for d, _ in sets]}, "
          f"methods {coded} "
          f"({len(records)} of {len(all_parts)} shard tasks run)", file=sys.stderr)
    return {"rows": count, "methods": coded, "shards": records}
