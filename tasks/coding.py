"""Tasks of the code stage: one shard of test images through the baselines, DSSLIC or EDMS.

Each writes the real coded files under ``files_dir`` and its result rows (section-6 schema)
to one Parquet part; the flow merges the parts.
"""

from __future__ import annotations

from prefect import task

from .common import TASK_OPTIONS, timed, use_assigned_threads


@task(name="baselines-shard", **TASK_OPTIONS)
def baselines_shard(image_paths: list[str], codecs: list[str], sweep: dict | None, options: dict | None,
                    dataset: str, files_dir: str, part_path: str) -> dict:
    """semlic.baselines.run_baselines on a shard; rows to ``part_path``."""
    from semlic import results
    from semlic.baselines import run_baselines

    with timed({"part": part_path, "images": len(image_paths), "method": "baselines"}) as record:
        record["threads"] = use_assigned_threads()
        rows = run_baselines(image_paths, codecs, out_dir=files_dir, sweep=sweep or None, dataset=dataset,
                             workers=1, options=options or None, progress=False)
        results.write_rows(rows, part_path)
        record["rows"] = len(rows)
    return record


@task(name="dsslic-shard", **TASK_OPTIONS)
def dsslic_shard(image_paths: list[str], model_path: str, segnet_path: str | None, seg_dir: str | None,
                 config: dict, dataset: str, files_dir: str, part_path: str, device: str,
                 smapnet_path: str | None = None) -> dict:
    """semlic.coding.code_semantic on a shard, models loaded once; rows to ``part_path``.

    ``config["method"]`` (default dsslic) picks DSSLIC, edms (needs ``smapnet_path``) or
    edms_noenh. With ``segnet_path`` the encoder segments each image itself (its time is in
    enc_s, as in the paper); otherwise the maps precomputed by the segment stage are read
    from ``seg_dir`` (DSSLIC only: EDMS derives the map with the PSPNet at both ends).
    """
    from pathlib import Path

    from semlic import results
    from semlic.coding import CodingSample, SemanticModels, code_semantic
    from semlic.segnet import load_segnet
    from semlic.smapnet_training import load_smapnet
    from semlic.training import load_dsslic

    with timed({"part": part_path, "images": len(image_paths), "method": config.get("method", "dsslic")}) as record:
        record["threads"] = use_assigned_threads()
        base = load_dsslic(model_path, device)
        models = SemanticModels(base=base, segnet=load_segnet(segnet_path, device) if segnet_path else None,
                                smapnet=load_smapnet(smapnet_path, device) if smapnet_path else None)
        samples = [CodingSample(Path(p).stem, Path(p), Path(seg_dir) / f"{Path(p).stem}.png" if seg_dir else None)
                   for p in image_paths]
        fingerprints = {"model": base.fingerprint.hex(),
                        **({"smapnet": models.smapnet.fingerprint.hex()} if models.smapnet is not None else {})}
        run_hash = results.params_hash({**config, **fingerprints})
        rows = code_semantic(samples, models, dataset=dataset, out_dir=files_dir, params_hash=run_hash,
                             progress=False, **config)
        results.write_rows(rows, part_path)
        record["rows"] = len(rows)
    return record
