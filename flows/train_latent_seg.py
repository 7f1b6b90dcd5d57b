"""Stage ``train_latent_seg``: DeepLabv3 (teacher), then the compressed-domain students -> ``<paths.models>/latent_seg/``.

The teacher trains first (one task); then each hyperprior quality's students train as their
own Ray task (qualities are independent; within one, the static students read the dynamic
gate's selection counts, so they follow it). Killed midway, the rerun resumes each training from
its state in the staging directory and keeps the models already written. Output:
``teacher/deeplabv3.safetensors``, ``q<Q>/<student>/latent_seg_q<Q>_<student>.safetensors``,
``q<Q>/selection_counts.json`` and every training log.
"""

from __future__ import annotations

import sys

from prefect import flow
from prefect_ray.context import remote_options

from flows.params import PARAMS_FILE, load_params, stage_paths, training_section
from flows.ray_cluster import training_options
from flows.runner import ray_runner, wait_all
from flows.stage import run_stage
from flows.staging import code_signature, content_signature, staged_dir, write_live

STAGE = "train_latent_seg"
SECTIONS = ("base", "paths", "train_latent_seg")


@flow(name=STAGE, task_runner=ray_runner())
def train_latent_seg(params: dict | None = None) -> dict:
    from semlic.methods.latent_seg.commands import latent_seg_parts
    from semlic.methods.latent_seg.hyperprior import HYPERPRIOR_FILE
    from semlic.model_files import config_of
    from semlic.train_loop import STATE_FILE
    from tasks.latent_seg import train_students, train_teacher

    params = params or load_params(PARAMS_FILE, SECTIONS)
    base, config, paths = params["base"], training_section(params, STAGE), stage_paths(params)
    prepared = paths["prepared"] / base["dataset"]
    bank = paths["models"] / "hyperprior" / HYPERPRIOR_FILE
    qualities, _ = latent_seg_parts(config, config_of(bank)[1].qualities)
    fingerprint = [config, base["device"], code_signature(),
                   content_signature(prepared / "manifest.parquet", bank)]
    with staged_dir(paths["models"] / "latent_seg", fingerprint) as staging:
        with remote_options(**training_options(base)):
            teacher = train_teacher.submit(config, str(prepared), str(staging), base["device"]).result()
        with remote_options(**training_options(base, concurrent=len(qualities))):
            students = wait_all([train_students.submit(config, str(prepared), str(bank), q, str(staging),
                                                       base["device"]) for q in qualities])
        for state in staging.rglob(STATE_FILE):   # the models are written
            state.unlink()
    print(f"train_latent_seg: teacher {teacher['iterations']} iterations ({teacher['stopped_by'] or 'complete'}); "
          + "; ".join(f"q{r['quality']}: {len(r['students'])} students" for r in students), file=sys.stderr)
    write_live(STAGE, paths["models"] / "latent_seg", paths)  # DVCLive: dvc plots / dvc exp show
    return {"teacher": teacher, "students": students}


def main(argv: list[str] | None = None) -> int:
    run_stage(train_latent_seg, STAGE, SECTIONS, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
