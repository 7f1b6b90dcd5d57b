"""The weights stage's task."""

from __future__ import annotations

from prefect import task

from semlic.weights import fetch_weights

from .common import TASK_OPTIONS, timed


@task(name="weights", **TASK_OPTIONS)
def weights(names: list[str], out_dir: str, keep_from: str) -> dict:
    """semlic.weights.fetch_weights: the weights files the stages use, kept or converted; the manifest."""
    with timed({"out_dir": out_dir}) as record:
        record["manifest"] = fetch_weights(names, out_dir, keep_from=keep_from)
    return record
