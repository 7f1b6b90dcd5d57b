"""Stage ``code``: the test images through DSSLIC, EDMS and every baseline -> ``data/coded/``.

Shards of ``code.shard_size`` images are mapped over Ray: one baselines task, one DSSLIC
task and one task per EDMS method (``code.edms.methods``: edms, edms_noenh) per shard (the
models are loaded once per shard). DSSLIC's encoder segments each image with the PSPNet
(``code.dsslic.segmentation: segnet``, its time counted in enc_s as in the paper) or reads
the segment stage's maps (``precomputed``). EDMS codes at DSSLIC's residual QPs, chroma and
lossless codecs; its encoder always segments with the PSPNet (the decoder derives the map
from the compact image with the same network, and SMapNet for ``edms``). Output::

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

from prefect import flow
from prefect_ray.context import remote_options

from flows.runtime import (PARAMS_FILE, code_signature, content_signature, load_params, ray_runner, run_stage,
                           shard_options, shards, staged_dir, wait_all)

STAGE = "code"
SECTIONS = ("base", "code")
OUT = Path("data/coded")
BASE_MODEL = Path("data/models/base/base.safetensors")
SEGNET = Path("data/models/segnet/segnet.safetensors")
SMAPNET = Path("data/models/smapnet/smapnet.safetensors")
TIMING_COLUMNS = ("enc_s", "dec_s")
KEY_COLUMNS = ("dataset", "method", "image_id", "quality")


def split_timings(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """(rows with NaN timings, timing records keyed like the rows)."""
    timings = [{**{k: row[k] for k in KEY_COLUMNS}, **{k: row[k] for k in TIMING_COLUMNS}} for row in rows]
    return [{**row, **{k: math.nan for k in TIMING_COLUMNS}} for row in rows], timings


def write_timings(timings: list[dict], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    timings = sorted(timings, key=lambda r: tuple(r[k] for k in KEY_COLUMNS))
    table = pa.Table.from_pylist(timings, schema=pa.schema(
        [(k, pa.float64() if k in ("quality",) + TIMING_COLUMNS else pa.string()) for k in KEY_COLUMNS + TIMING_COLUMNS]))
    pq.write_table(table, path)


@flow(name=STAGE, task_runner=ray_runner())
def code(params: dict | None = None) -> dict:
    from semlic import results
    from tasks.coding import baselines_shard, dsslic_shard

    params = params or load_params(PARAMS_FILE, SECTIONS)
    base, cfg = params["base"], params[STAGE]
    dataset, split = base["dataset"], cfg.get("split", "test")
    prepared = Path("data/prepared").absolute() / dataset  # absolute: tasks may run elsewhere
    images = sorted((prepared / split / "images").glob("*.png"))[: cfg.get("limit") or None]
    seg_dir = Path("data/segments").absolute() / dataset / split
    baselines, dsslic = cfg.get("baselines"), dict(cfg.get("dsslic") or {})
    segmentation = dsslic.pop("segmentation", "segnet")  # segnet: the encoder segments; precomputed: segment stage's maps
    if segmentation not in ("segnet", "precomputed"):
        raise SystemExit(f"code.dsslic.segmentation must be segnet or precomputed, got {segmentation!r}")
    # EDMS codes at DSSLIC's settings: no code.dsslic, no EDMS rows either
    edms_methods = list((cfg.get("edms") or {}).get("methods") or []) if dsslic else []
    base_model, segnet = BASE_MODEL.absolute(), SEGNET.absolute() if segmentation == "segnet" else None
    smapnet = SMAPNET.absolute() if "edms" in edms_methods else None
    semantic = ([("dsslic", dsslic, segnet, None)] if dsslic else []) + [
        (method, {**dsslic, "method": method}, SEGNET.absolute(), smapnet if method == "edms" else None)
        for method in edms_methods]  # (method, code_semantic keywords, segnet, smapnet)
    inputs = [prepared / "manifest.parquet"]
    if dsslic:
        inputs += [base_model, segnet or seg_dir.parent / f"{split}.parquet"]
    if edms_methods:
        inputs += [SEGNET.absolute()] + ([smapnet] if smapnet else [])
    fingerprint = [dataset, base["device"], cfg, code_signature(), content_signature(*inputs)]
    with staged_dir(OUT, fingerprint) as staging:
        files, parts = staging / "files" / dataset, staging / "parts"
        all_parts, futures = [], []
        for index, shard in enumerate(shards([str(p) for p in images], cfg["shard_size"])):
            if baselines:
                part = parts / f"baselines-{index:04d}.parquet"
                all_parts.append(part)
                if not part.is_file():
                    with remote_options(**shard_options(base, gpu=False)):  # the codecs run on CPU
                        futures.append(baselines_shard.submit(
                            shard, list(baselines["codecs"]), baselines.get("sweep"), baselines.get("options"),
                            dataset, str(files), str(part)))
            for method, config, method_segnet, method_smapnet in semantic:
                part = parts / f"{method}-{index:04d}.parquet"
                all_parts.append(part)
                if not part.is_file():
                    with remote_options(**shard_options(base)):
                        futures.append(dsslic_shard.submit(
                            shard, str(base_model), method_segnet and str(method_segnet),
                            None if method_segnet else str(seg_dir), config, dataset, str(files), str(part),
                            base["device"], method_smapnet and str(method_smapnet)))
        records = wait_all(futures)
        rows = [row for part in all_parts for row in results.read_rows(part)]
        rows, timings = split_timings(rows)
        results.write_partitioned(rows, staging / "rows")
        write_timings(timings, staging / "timings.parquet")
        shutil.rmtree(parts, ignore_errors=True)
    methods = sorted({row["method"] for row in rows})
    print(f"code: {len(rows)} rows for {len(images)} images, methods {methods} "
          f"({len(records)} of {len(all_parts)} shard tasks run)", file=sys.stderr)
    return {"rows": len(rows), "methods": methods, "shards": records}


def main(argv: list[str] | None = None) -> int:
    run_stage(code, STAGE, SECTIONS, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
