"""Stage ``aggregate``: coded rows -> ``<paths.results>`` (rd.parquet, bd.parquet, metrics.json,
comparisons.csv, plots/*.csv for ``dvc plots``, figures/*.png). One task: semlic.aggregate.aggregate."""

from __future__ import annotations

import sys

from prefect import flow

from flows.params import PARAMS_FILE, load_params, stage_paths
from flows.runner import ray_runner
from flows.stage import run_stage
from flows.staging import staged_dir

STAGE = "aggregate"
SECTIONS = ("base", "paths", "aggregate")


@flow(name=STAGE, task_runner=ray_runner())
def aggregate(params: dict | None = None) -> dict:
    from tasks.aggregate import aggregate as run

    params = params or load_params(PARAMS_FILE, SECTIONS)
    cfg, paths = params[STAGE], stage_paths(params)
    with staged_dir(paths["results"]) as staging:
        record = run.submit(str(paths["coded"] / "rows"), str(staging), str(paths["coded"] / "timings.parquet"),
                            str(paths["segments"]),
                            cfg.get("anchor", "hevc"), cfg.get("distortion", "psnr_rgb"),
                            cfg.get("bd_method", "pchip")).result()
    for dataset, methods in sorted(record["bd"].items()):
        for method, figures in sorted(methods.items()):
            print(f"aggregate: {dataset} {method} vs {cfg.get('anchor', 'hevc')}: BD-rate "
                  f"{figures['bd_rate_pct']} %, BD-PSNR {figures['bd_psnr_db']} dB", file=sys.stderr)
    for dataset, methods in sorted(record["comparisons"].items()):
        for method, figures in sorted(methods.items()):
            print(f"aggregate: {dataset} {method} vs {figures['anchor']}: BD-rate {figures['bd_rate_pct']} %, BD-PSNR "
                  f"{figures['bd_psnr_db']} dB, time ratio encode {figures['enc_time_ratio']}, "
                  f"decode {figures['dec_time_ratio']}", file=sys.stderr)
    return record


def main(argv: list[str] | None = None) -> int:
    run_stage(aggregate, STAGE, SECTIONS, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
