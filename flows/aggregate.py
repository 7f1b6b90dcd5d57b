"""Stage ``aggregate``: coded rows -> ``<paths.results>`` (rd.parquet, bd.parquet, metrics.json,
comparisons.csv, plots/*.csv for ``dvc plots``, figures/*.png, report/index.html). Two tasks:
semlic.aggregate.aggregate, then semlic.html_report.build_report (the offline HTML page: its viewer
decodes ``aggregate.report_images`` images of each data set from the code stage's files; where the
machines stage wrote a data set's task tables, the page shows its rate-mIoU figure and table)."""

from __future__ import annotations

import sys

from prefect import flow

from flows.params import PARAMS_FILE, load_params, stage_paths
from flows.runner import ray_runner
from flows.stage import run_stage
from flows.staging import staged_dir

STAGE = "aggregate"
SECTIONS = ("base", "paths", "aggregate")
REPORT_IMAGES = 3


@flow(name=STAGE, task_runner=ray_runner())
def aggregate(params: dict | None = None) -> dict:
    from tasks.aggregate import aggregate as run
    from tasks.aggregate import report

    params = params or load_params(PARAMS_FILE, SECTIONS)
    cfg, paths = params[STAGE], stage_paths(params)
    with staged_dir(paths["results"]) as staging:
        record = run.submit(str(paths["coded"] / "rows"), str(staging), str(paths["coded"] / "timings.parquet"),
                            str(paths["segments"]),
                            cfg.get("anchor", "hevc"), cfg.get("distortion", "psnr_rgb"),
                            cfg.get("bd_method", "pchip")).result()
        page = report.submit(str(staging), str(staging / "report"), str(paths["coded"]), str(paths["prepared"]),
                             str(paths["models"]), str(paths["segments"]), int(cfg.get("report_images", REPORT_IMAGES)),
                             machines_dir=str(paths["machines"]) if "machines" in paths else None).result()
    print(f"aggregate: {paths['results'] / 'report' / 'index.html'}: viewer {page['viewer_images']} images, "
          f"{page['viewer_files']} decoded files" + (f"; left out: {page['notes']}" if page["notes"] else ""),
          file=sys.stderr)
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
