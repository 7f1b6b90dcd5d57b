"""Stage ``aggregate``: coded rows -> ``data/results/`` (rd.parquet, bd.parquet, metrics.json,
edms_vs_dsslic.csv, plots/*.csv for ``dvc plots``, figures/*.png). One task: semlic.aggregate.aggregate."""

from __future__ import annotations

import sys
from pathlib import Path

from prefect import flow

from flows.runtime import PARAMS_FILE, load_params, ray_runner, run_stage, staged_dir

STAGE = "aggregate"
SECTIONS = ("base", "aggregate")
OUT = Path("data/results")
CODED = Path("data/coded")
SEGMENTS = Path("data/segments")


@flow(name=STAGE, task_runner=ray_runner())
def aggregate(params: dict | None = None) -> dict:
    from tasks.aggregate import aggregate as run

    params = params or load_params(PARAMS_FILE, SECTIONS)
    cfg = params[STAGE]
    with staged_dir(OUT) as staging:
        record = run.submit(str(CODED.absolute() / "rows"), str(staging), str(CODED.absolute() / "timings.parquet"),
                            str(SEGMENTS.absolute()),
                            cfg.get("anchor", "hevc"), cfg.get("distortion", "psnr_rgb"),
                            cfg.get("bd_method", "pchip")).result()
    for dataset, methods in sorted(record["bd"].items()):
        for method, figures in sorted(methods.items()):
            print(f"aggregate: {dataset} {method} vs {cfg.get('anchor', 'hevc')}: BD-rate "
                  f"{figures['bd_rate_pct']} %, BD-PSNR {figures['bd_psnr_db']} dB", file=sys.stderr)
    for dataset, methods in sorted(record["edms_vs_dsslic"].items()):
        for method, figures in sorted(methods.items()):
            print(f"aggregate: {dataset} {method} vs dsslic: BD-rate {figures['bd_rate_pct']} %, BD-PSNR "
                  f"{figures['bd_psnr_db']} dB, time ratio encode {figures['enc_time_ratio']}, "
                  f"decode {figures['dec_time_ratio']}", file=sys.stderr)
    return record


def main(argv: list[str] | None = None) -> int:
    run_stage(aggregate, STAGE, SECTIONS, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
