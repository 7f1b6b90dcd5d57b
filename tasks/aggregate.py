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
