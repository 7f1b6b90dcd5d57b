"""Task of the machines stage: one shard of labelled test images, every coded file of each through its decoder."""

from __future__ import annotations

from prefect import task

from .common import TASK_OPTIONS, task_device, timed, use_assigned_threads


@task(name="machines-shard", **TASK_OPTIONS)
def machines_shard(prepared_dir: str, split: str, ids: list[str], files_dir: str, models_dir: str, dataset: str,
                   part_path: str, device: str) -> dict:
    """semlic.machines.task_rows on a shard (the models loaded once); rows to ``part_path``."""
    from semlic import machines
    from semlic.fileio import write_parquet
    from semlic.segnet.prepared import list_prepared

    device = task_device(device)  # the GPU Ray gave this task, if any
    with timed({"part": part_path, "images": len(ids)}) as record:
        record["threads"] = use_assigned_threads()
        wanted = set(ids)
        samples = [s for s in list_prepared(prepared_dir, split) if s.id in wanted]
        receiver = machines.Receiver(models_dir, device)
        rows = machines.frame(machines.task_rows(samples, files_dir, receiver, dataset=dataset, progress=False))
        write_parquet(rows, part_path)
        record["rows"] = len(rows)
    return record
