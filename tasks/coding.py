"""Tasks of the code stage: one shard of test images through the baselines or one registered method.

Each writes the real coded files under ``files_dir`` and its result rows (section-6 schema)
to one Parquet part; the flow merges the parts.
"""

from __future__ import annotations

from prefect import task

from semlic import results
from semlic.baselines import run_baselines
from semlic.code_stage import code_shard

from .common import TASK_OPTIONS, task_device, timed, use_assigned_threads


@task(name="baselines-shard", **TASK_OPTIONS)
def baselines_shard(image_paths: list[str], codecs: list[str], sweep: dict | None, options: dict | None,
                    dataset: str, files_dir: str, part_path: str, with_lpips: bool = True) -> dict:
    """semlic.baselines.run_baselines on a shard; rows to ``part_path``."""
    with timed({"part": part_path, "images": len(image_paths), "method": "baselines"}) as record:
        record["threads"] = use_assigned_threads()
        rows = run_baselines(image_paths, codecs, out_dir=files_dir, sweep=sweep or None, dataset=dataset,
                             workers=1, options=options or None, progress=False, with_lpips=with_lpips)
        results.write_rows(rows, part_path)
        record["rows"] = len(rows)
    return record


@task(name="method-shard", **TASK_OPTIONS)
def method_shard(image_paths: list[str], method: str, section: dict | None, models_dir: str, seg_dir: str | None,
                 dataset: str, files_dir: str, part_path: str, device: str, with_lpips: bool = True) -> dict:
    """semlic.code_stage.code_shard: one registered method on a shard, its models (found by name
    in ``models_dir``) loaded once; rows to ``part_path``."""
    device = task_device(device)  # the GPU Ray gave this task, if any
    with timed({"part": part_path, "images": len(image_paths), "method": method}) as record:
        record["threads"] = use_assigned_threads()
        rows = code_shard(image_paths, method, section, models_dir=models_dir, dataset=dataset, seg_dir=seg_dir,
                          out_dir=files_dir, device=device, with_lpips=with_lpips)
        results.write_rows(rows, part_path)
        record["rows"] = len(rows)
    return record
