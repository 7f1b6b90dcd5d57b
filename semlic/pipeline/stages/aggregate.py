"""Stage ``aggregate``: coded rows -> ``<paths.results>`` (rd.parquet, bd.parquet, metrics.json,
comparisons.csv, plots/*.csv for ``dvc plots``, figures/*.png, report/index.html). Two units:
semlic.aggregate.aggregate, then semlic.html_report.build_report (the offline HTML page: its viewer
decodes ``aggregate.report_images`` images of each data set from the code stage's files; where the
machines stage wrote a data set's task tables, the page shows its rate-mIoU figure and table)."""

from __future__ import annotations

import sys

from semlic.pipeline.executor import Executor, timed
from semlic.pipeline.params import stage_paths
from semlic.pipeline.stage import stage
from semlic.pipeline.staging import staged_dir

STAGE = "aggregate"
REPORT_IMAGES = 3


def aggregate_rows(rows_root: str, out_dir: str, timings: str | None, segments_dir: str | None, anchor: str,
                   distortion: str, bd_method: str) -> dict:
    """semlic.aggregate.aggregate; returns the BD and comparison parts of the metrics document."""
    from semlic.aggregate import aggregate as run

    with timed({"out_dir": out_dir}) as record:
        doc = run(rows_root, out_dir, timings=timings, segments_dir=segments_dir, anchor=anchor,
                  distortion=distortion, bd_method=bd_method)
        record["bd"] = doc["bd"]
        record["comparisons"] = doc.get("comparisons", {})
    return record


def report(results_dir: str, out_dir: str, coded_dir: str, prepared_dir: str, models_dir: str, segments_dir: str,
           viewer_images: int, device: str = "cpu", machines_dir: str | None = None) -> dict:
    """semlic.html_report.build_report: the offline HTML page with its image viewer."""
    from semlic.html_report import build_report

    with timed({"out_dir": out_dir}) as record:
        record.update(build_report(results_dir, out_dir, coded_dir=coded_dir, prepared_dir=prepared_dir,
                                   models_dir=models_dir, segments_dir=segments_dir, machines_dir=machines_dir,
                                   viewer_images=viewer_images, device=device, progress=False))
    return record


@stage(STAGE)
def aggregate(params: dict, executor: Executor) -> dict:
    """Stage aggregate: coded rows -> RD and BD tables, figures and the HTML report in data/results/"""
    cfg, paths = params[STAGE], stage_paths(params)
    with staged_dir(paths["results"]) as staging:
        record = executor.submit(aggregate_rows, str(paths["coded"] / "rows"), str(staging),
                                 str(paths["coded"] / "timings.parquet"), str(paths["segments"]),
                                 cfg.get("anchor", "hevc"), cfg.get("distortion", "psnr_rgb"),
                                 cfg.get("bd_method", "pchip")).result()
        page = executor.submit(report, str(staging), str(staging / "report"), str(paths["coded"]),
                               str(paths["prepared"]), str(paths["models"]), str(paths["segments"]),
                               int(cfg.get("report_images", REPORT_IMAGES)),
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
