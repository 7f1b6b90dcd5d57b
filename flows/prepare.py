"""Stage ``prepare``: the data set named in ``base.dataset`` -> ``<paths.prepared>/<dataset>``.

One task (semlic.data.prepare.prepare_dataset, threaded over ``base.workers``): preparing is
I/O bound and quick next to the other stages, so it is not sharded across nodes.
"""

from __future__ import annotations

import sys
from pathlib import Path

from prefect import flow

from flows.params import PARAMS_FILE, load_params, stage_paths
from flows.runner import ray_runner
from flows.stage import run_stage
from flows.staging import staged_dir

STAGE = "prepare"
SECTIONS = ("base", "paths", "prepare")


def dataset_root(base: dict, cfg: dict) -> str | None:
    """``prepare.root`` if given, else ``<base.data_root>/<base.dataset>`` (unused for synthetic)."""
    if cfg.get("root"):
        return str(Path(cfg["root"]).absolute())
    return str((Path(base.get("data_root", "data/raw")) / base["dataset"]).absolute())


@flow(name=STAGE, task_runner=ray_runner())
def prepare(params: dict | None = None) -> dict:
    from tasks.data import prepare_dataset

    params = params or load_params(PARAMS_FILE, SECTIONS)
    base, cfg, out = params["base"], params[STAGE], stage_paths(params)["prepared"]
    with staged_dir(out, fingerprint=[base["dataset"], cfg]) as staging:
        record = prepare_dataset.submit(
            base["dataset"], dataset_root(base, cfg), str(staging / base["dataset"]), cfg["train_size"],
            cfg.get("splits"), int(base.get("workers", 2)), cfg.get("limit"),
        ).result()
    print(f"prepare: {record['images']} images of {base['dataset']} in {out / base['dataset']}", file=sys.stderr)
    return record


def main(argv: list[str] | None = None) -> int:
    run_stage(prepare, STAGE, SECTIONS, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
