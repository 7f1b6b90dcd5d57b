"""Stage ``train_latent_seg``: DeepLabv3 (teacher), then the compressed-domain students -> ``<paths.models>/latent_seg/``.

The teacher trains first (one unit); then each hyperprior quality's students train as their
own unit (qualities are independent; within one, the static students read the dynamic
gate's selection counts, so they follow it). Killed midway, the rerun resumes each training from
its state in the staging directory and keeps the models already written. Output:
``teacher/deeplabv3.safetensors``, ``q<Q>/<student>/latent_seg_q<Q>_<student>.safetensors``,
``q<Q>/selection_counts.json`` and every training log.
"""

from __future__ import annotations

import sys

from semlic.pipeline.executor import Executor, timed, training_resources, unit_device, unit_threads, wait_all
from semlic.pipeline.params import stage_paths, training_section
from semlic.pipeline.stage import stage
from semlic.pipeline.staging import code_signature, content_signature, staged_dir, write_live

STAGE = "train_latent_seg"


def train_teacher(config: dict, prepared_dir: str, out_dir: str, device: str) -> dict:
    """The DeepLabv3 teacher (resumes from its state; a written model is kept)."""
    from semlic.methods.latent_seg import commands

    device = unit_device(device)  # the GPU the executor gave this unit, if any
    with timed({"part": "teacher"}) as record:
        record["threads"] = unit_threads()
        result = commands.train_teacher_part(config, prepared_dir, out_dir, device, progress=False, keep_trained=True)
        record.update(completed=result["completed"], stopped_by=result["stopped_by"], iterations=result["iteration"],
                      model=result["model_path"], reused=result.get("reused", False))
    return record


def train_students(config: dict, prepared_dir: str, bank_path: str, quality: int, out_dir: str, device: str) -> dict:
    """Every student of one quality (static ones after the dynamic one: they read its gate's counts)."""
    from semlic.methods.latent_seg import commands

    device = unit_device(device)  # the GPU the executor gave this unit, if any
    with timed({"part": f"students q{quality}", "quality": quality}) as record:
        record["threads"] = unit_threads()
        results = commands.train_students(config, prepared_dir, bank_path, quality, out_dir, device, progress=False,
                                          keep_trained=True)
        record["students"] = {label: {"iterations": r["iteration"], "stopped_by": r["stopped_by"],
                                      "reused": r.get("reused", False)} for label, r in results.items()}
    return record


@stage(STAGE)
def train_latent_seg(params: dict, executor: Executor) -> dict:
    """Stage train_latent_seg: the DeepLabv3 teacher, then the compressed-domain students -> data/models/latent_seg/"""
    from semlic.methods.latent_seg.commands import latent_seg_parts
    from semlic.methods.latent_seg.hyperprior import HYPERPRIOR_FILE
    from semlic.model_files import config_of
    from semlic.train_loop import STATE_FILE

    base, config, paths = params["base"], training_section(params, STAGE), stage_paths(params)
    prepared = paths["prepared"] / base["dataset"]
    bank = paths["models"] / "hyperprior" / HYPERPRIOR_FILE
    qualities, _ = latent_seg_parts(config, config_of(bank)[1].qualities)
    fingerprint = [config, base["device"], code_signature(),
                   content_signature(prepared / "manifest.parquet", bank)]
    with staged_dir(paths["models"] / "latent_seg", fingerprint) as staging:
        teacher = executor.submit(train_teacher, config, str(prepared), str(staging), base["device"],
                                  resources=training_resources(base)).result()
        resources = training_resources(base, concurrent=len(qualities))
        students = wait_all([executor.submit(train_students, config, str(prepared), str(bank), q, str(staging),
                                             base["device"], resources=resources) for q in qualities])
        for state in staging.rglob(STATE_FILE):   # the models are written
            state.unlink()
    print(f"train_latent_seg: teacher {teacher['iterations']} iterations ({teacher['stopped_by'] or 'complete'}); "
          + "; ".join(f"q{r['quality']}: {len(r['students'])} students" for r in students), file=sys.stderr)
    write_live(STAGE, paths["models"] / "latent_seg", paths)  # DVCLive: dvc plots / dvc exp show
    return {"teacher": teacher, "students": students}
