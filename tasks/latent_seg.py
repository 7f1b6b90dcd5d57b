"""Tasks of the compressed-domain stages: one hyperprior quality, the teacher, one quality's students,
one shard of the evaluation."""

from __future__ import annotations

from prefect import task

from semlic.methods.latent_seg import commands

from .common import TASK_OPTIONS, task_device, timed, use_assigned_threads


def _record(record: dict, result: dict) -> None:
    record.update(completed=result["completed"], stopped_by=result["stopped_by"], iterations=result["iteration"],
                  model=result["model_path"], reused=result.get("reused", False))


@task(name="train-hyperprior", **TASK_OPTIONS)
def train_hyperprior_quality(config: dict, quality: int, prepared_dir: str, out_dir: str, device: str) -> dict:
    """One quality of the hyperprior (resumes from its state; a written model is kept)."""
    device = task_device(device)  # the GPU Ray gave this task, if any
    with timed({"part": f"hyperprior q{quality}", "quality": quality}) as record:
        record["threads"] = use_assigned_threads()
        _record(record, commands.train_hyperprior_quality(config, quality, prepared_dir, out_dir, device,
                                                          progress=False, keep_trained=True))
    return record


@task(name="train-teacher", **TASK_OPTIONS)
def train_teacher(config: dict, prepared_dir: str, out_dir: str, device: str) -> dict:
    device = task_device(device)  # the GPU Ray gave this task, if any
    with timed({"part": "teacher"}) as record:
        record["threads"] = use_assigned_threads()
        _record(record, commands.train_teacher_part(config, prepared_dir, out_dir, device, progress=False,
                                                    keep_trained=True))
    return record


@task(name="train-students", **TASK_OPTIONS)
def train_students(config: dict, prepared_dir: str, bank_path: str, quality: int, out_dir: str, device: str) -> dict:
    """Every student of one quality (static ones after the dynamic one: they read its gate's counts)."""
    device = task_device(device)  # the GPU Ray gave this task, if any
    with timed({"part": f"students q{quality}", "quality": quality}) as record:
        record["threads"] = use_assigned_threads()
        results = commands.train_students(config, prepared_dir, bank_path, quality, out_dir, device, progress=False,
                                          keep_trained=True)
        record["students"] = {label: {"iterations": r["iteration"], "stopped_by": r["stopped_by"],
                                      "reused": r.get("reused", False)} for label, r in results.items()}
    return record


@task(name="eval-latent-seg-shard", **TASK_OPTIONS)
def eval_shard(prepared_dir: str, split: str, ids: list[str], bank_path: str, models_dir: str, dataset: str,
               qualities: list[int] | None, part_path: str, device: str) -> dict:
    """semlic.methods.latent_seg.evaluate on a shard of images; rows to ``part_path``."""
    from semlic.fileio import write_parquet
    from semlic.methods.latent_seg.evaluate import evaluate, load_students
    from semlic.model_files import load_model
    from semlic.segnet.prepared import list_prepared

    device = task_device(device)  # the GPU Ray gave this task, if any
    with timed({"part": part_path, "images": len(ids)}) as record:
        record["threads"] = use_assigned_threads()
        wanted = set(ids)
        samples = [s for s in list_prepared(prepared_dir, split) if s.id in wanted]
        rows = evaluate(samples, load_model(bank_path, device, expect="hyperprior"),
                        load_model(commands.teacher_path(models_dir), device, expect="deeplabv3"),
                        load_students(models_dir, device), dataset=dataset, qualities=qualities, progress=False)
        write_parquet(rows, part_path)
        record["rows"] = len(rows)
    return record
