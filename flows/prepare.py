"""Stage ``prepare``: the data set named in ``base.dataset`` -> ``<paths.prepared>/<dataset>``.

One task (semlic.data.prepare.prepare_dataset, threaded over ``base.workers``): preparing is
I/O bound and quick next to the other stages, so it is not sharded across nodes. ``prepare.also``
names more data sets (e.g. ``kodak``) read from ``<base.data_root>/<name>``, prepared at their
native size into ``<paths.prepared>/<name>``, for the code stage to measure the models on
(``code.also``), as the papers test generalisation.
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
    also = [name for name in (cfg.get("also") or []) if name != base["dataset"]]
    with staged_dir(out, fingerprint=[base["dataset"], cfg]) as staging:
        futures = [prepare_dataset.submit(
            base["dataset"], dataset_root(base, cfg), str(staging / base["dataset"]), cfg["train_size"],
            cfg.get("splits"), int(base.get("workers", 2)), cfg.get("limit"),
        )]
        for name in also:   # other data sets to measure the models on: every split, none resized
            root = str((Path(base.get("data_root", "data/raw")) / name).absolute())
            futures.append(prepare_dataset.submit(name, root, str(staging / name), cfg["train_size"], None,
                                                  int(base.get("workers", 2)), None, []))
        records = [future.result() for future in futures]
    for name, record in zip([base["dataset"], *also], records):
        print(f"prepare: {record['images']} images of {name} in {out / name}", file=sys.stderr)
    return records[0] if not also else {**records[0], "also": dict(zip(also, records[1:]))}


def main(argv: list[str] | None = None) -> int:
    run_stage(prepare, STAGE, SECTIONS, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
