"""Stage ``train_hyperprior``: CompressAI's bmshj2018-hyperprior -> ``<paths.models>/hyperprior/``.

Each quality of ``train_hyperprior.qualities`` trains as its own unit (they are
independent: they share the CPUs, or take a GPU each on CUDA), resuming from its state in
the staging directory when the stage was killed. The qualities then merge into one model file,
``hyperprior.safetensors`` (model ``hyperprior``, entropy tables included), which the code
stage (method ``hyperprior``) and the compressed-domain stages read; each quality's training
log stays in ``q<Q>/train_log.parquet``.
"""

from __future__ import annotations

import sys

from semlic.pipeline.executor import Executor, timed, training_resources, unit_device, unit_threads, wait_all
from semlic.pipeline.params import seeded_section, stage_paths
from semlic.pipeline.stage import stage
from semlic.pipeline.staging import code_signature, content_signature, staged_dir, write_live

STAGE = "train_hyperprior"


def train_hyperprior_quality(config: dict, quality: int, prepared_dir: str, out_dir: str, device: str) -> dict:
    """One quality of the hyperprior (resumes from its state; a written model is kept)."""
    from semlic.methods.latent_seg import commands

    device = unit_device(device)  # the GPU the executor gave this unit, if any
    with timed({"part": f"hyperprior q{quality}", "quality": quality}) as record:
        record["threads"] = unit_threads()
        result = commands.train_hyperprior_quality(config, quality, prepared_dir, out_dir, device, progress=False,
                                                   keep_trained=True)
        record.update(completed=result["completed"], stopped_by=result["stopped_by"], iterations=result["iteration"],
                      model=result["model_path"], reused=result.get("reused", False))
    return record


@stage(STAGE)
def train_hyperprior(params: dict, executor: Executor) -> dict:
    """Stage train_hyperprior: CompressAI's bmshj2018-hyperprior, one bank of qualities -> data/models/hyperprior/"""
    from semlic.methods.latent_seg.commands import hyperprior_qualities
    from semlic.methods.latent_seg.hyperprior import HYPERPRIOR_FILE, merge_banks
    from semlic.train_loop import STATE_FILE

    base, config, paths = params["base"], seeded_section(params, STAGE), stage_paths(params)
    prepared = paths["prepared"] / base["dataset"]
    qualities = hyperprior_qualities(config)
    fingerprint = [config, base["device"], code_signature(), content_signature(prepared / "manifest.parquet")]
    with staged_dir(paths["models"] / "hyperprior", fingerprint) as staging:
        resources = training_resources(base, concurrent=len(qualities))
        records = wait_all([executor.submit(train_hyperprior_quality, config, q, str(prepared), str(staging),
                                            base["device"], resources=resources) for q in qualities])
        merge_banks([staging / f"q{q}" / HYPERPRIOR_FILE for q in qualities], staging / HYPERPRIOR_FILE)
        for q in qualities:   # one hyperprior model file below the models folder: the bank
            (staging / f"q{q}" / HYPERPRIOR_FILE).unlink(missing_ok=True)
            (staging / f"q{q}" / STATE_FILE).unlink(missing_ok=True)
    for record in records:
        print(f"train_hyperprior: {record['part']} {record['iterations']} iterations "
              f"({record['stopped_by'] or 'complete'}) in {record['seconds']:.0f} s", file=sys.stderr)
    write_live(STAGE, paths["models"] / "hyperprior", paths)  # DVCLive: dvc plots / dvc exp show
    return {"qualities": records}
