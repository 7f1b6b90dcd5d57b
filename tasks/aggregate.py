"""The aggregate stage's task."""

from __future__ import annotations

from prefect import task

from semlic.aggregate import aggregate as run

from .common import TASK_OPTIONS, timed


@task(name="aggregate", **TASK_OPTIONS)
def aggregate(rows_root: str, out_dir: str, timings: str | None, segments_dir: str | None, anchor: str,
              distortion: str, bd_method: str) -> dict:
    """semlic.aggregate.aggregate; returns the BD and comparison parts of the metrics document."""
    with timed({"out_dir": out_dir}) as record:
        doc = run(rows_root, out_dir, timings=timings, segments_dir=segments_dir, anchor=anchor,
                  distortion=distortion, bd_method=bd_method)
        record["bd"] = doc["bd"]
        record["comparisons"] = doc.get("comparisons", {})
    return record


@task(name="report", **TASK_OPTIONS)
def report(results_dir: str, out_dir: str, coded_dir: str, prepared_dir: str, models_dir: str, segments_dir: str,
           viewer_images: int, device: str = "cpu", machines_dir: str | None = None) -> dict:
    """semlic.html_report.build_report: the offline HTML page with its image viewer."""
    from semlic.html_report import build_report

    with timed({"out_dir": out_dir}) as record:
        record.update(build_report(results_dir, out_dir, coded_dir=coded_dir, prepared_dir=prepared_dir,
                                   models_dir=models_dir, segments_dir=segments_dir, machines_dir=machines_dir,
                                   viewer_images=viewer_images, device=device, progress=False))
    return record
