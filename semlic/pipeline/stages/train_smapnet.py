"""Stage ``train_smapnet``: EDMS's SMapNet on the smap_pairs stage's pairs -> ``<paths.models>/smapnet/``.

One training unit (semlic.methods.edms.training.train_smapnet). Killed midway, the rerun resumes
from the library's checkpoint in the staging directory. Output: ``smapnet.safetensors`` and
``train_log.parquet``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from semlic.pipeline.executor import Executor, run_training, training_resources
from semlic.pipeline.params import seeded_section, stage_paths
from semlic.pipeline.stage import stage
from semlic.pipeline.staging import code_signature, content_signature, staged_dir, write_live

STAGE = "train_smapnet"


def train_smapnet_unit(config: dict, pairs_dir: str, out_dir: str, device: str) -> dict:
    """semlic.methods.edms.training.train_smapnet, resuming from its own state."""
    from semlic.methods.edms.training import train_smapnet as train

    return run_training(train, {"out_dir": out_dir}, config, pairs_dir, out_dir, device=device)


@stage(STAGE)
def train_smapnet(params: dict, executor: Executor) -> dict:
    """Stage train_smapnet: EDMS's SMapNet -> data/models/smapnet/"""
    from semlic.train_loop import STATE_FILE

    base, config, paths = params["base"], seeded_section(params, STAGE), stage_paths(params)
    pairs = paths["pairs"] / base["dataset"]
    out = paths["models"] / "smapnet"
    fingerprint = [config, base["device"], code_signature(), content_signature(pairs)]
    with staged_dir(out, fingerprint) as staging:
        record = executor.submit(train_smapnet_unit, config, str(pairs), str(staging), base["device"],
                                 resources=training_resources(base)).result()
        (staging / STATE_FILE).unlink(missing_ok=True)  # the model is complete
    print(f"train_smapnet: {out / Path(record['model']).name} in {record['seconds']:.0f} s", file=sys.stderr)
    write_live(STAGE, out, paths)  # DVCLive: dvc plots / dvc exp show
    return record
