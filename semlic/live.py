"""Training curves and headline figures in DVCLive's layout, for ``dvc plots`` and ``dvc exp show``.

The training loop's log (``train_log.parquet``, :mod:`semlic.train_loop`) stays the record: it is
written atomically with the checkpoints, so a resumed run's log equals an uninterrupted one's.
:func:`export_training` renders every log under a training stage's output with DVCLive into
``live_dir``:

* ``plots/metrics/<model>/<figure>.tsv``: one curve per logged figure (step = iteration), for
  ``dvc plots show`` / ``diff``; ``<model>`` is the stage's output folder and the log's folder
  under it (``dsslic``; ``hyperprior/q3``, ``latent_seg/q3/dynamic`` for a stage that trains
  several models);
* ``metrics.json``: the headline figures, one or two columns per model in ``dvc exp show``: its
  total loss at the end (the first of :data:`TOTALS` it logs) and the evaluation scores of
  :data:`EVAL_HEADLINE` a trainer wrote to ``summary.json`` under ``eval`` (PSPNet's ``miou`` on
  its eval split). How far each model got is the curves' last step (and the model file's
  ``iterations``).

Figures of bookkeeping (:data:`NOT_PLOTTED`) are not drawn.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd

from .errors import import_extra
from .train_loop import LOG_FILE

TOTALS = ("loss", "g_total", "ce")   # the total loss of a log: the first of these it has
NOT_PLOTTED = frozenset({"iteration", "seconds", "epoch", "lr", "selected", "factor"})
EVAL_HEADLINE = ("miou", "psnr", "bpp")   # summary.json eval scores shown in dvc exp show


def _value(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def model_name(log: Path, root: Path) -> str:
    relative = log.parent.relative_to(root).as_posix()
    return root.name if relative == "." else f"{root.name}/{relative}"


def headline(log: pd.DataFrame, summary: dict | None = None) -> dict:
    """One model's metrics.json entry: its total loss at the end, its headline eval scores."""
    out: dict = {}
    total = next((k for k in TOTALS if k in log.columns), None)
    if len(log) and total is not None:
        out[total] = _value(log.iloc[-1][total])
    evaluation = (summary or {}).get("eval")
    if isinstance(evaluation, dict):
        for key in EVAL_HEADLINE:
            value = evaluation.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[f"eval_{key}"] = _value(value)
    return out


def _writer(live_dir: Path):
    """DVCLive as the writer of the stage's files only: no DVC repository lookup. The stage is the
    DVC integration; DVCLive's own would ``dvc init`` a git repository that has no DVC, and fails
    in a git repository without commits."""
    dvclive = import_extra("dvclive", "pipeline", "the training stages' DVCLive curves")

    class StageLive(dvclive.Live):
        def _init_dvc(self) -> None:
            self._dvc_file = "dvc.yaml"

    # Not a DVC experiment of its own (the stage is one): no dvc.yaml, no experiment, no report.
    return StageLive(dir=str(live_dir), save_dvc_exp=False, dvcyaml=False, report=None)


def export_training(models_dir: str | os.PathLike, live_dir: str | os.PathLike) -> dict:
    """DVCLive's plots and metrics.json for every training log under ``models_dir`` (module
    docstring); returns the metrics document."""
    root, live_dir = Path(models_dir), Path(live_dir)
    live = _writer(live_dir)
    doc: dict = {}
    for log_path in sorted(root.rglob(LOG_FILE)):
        name = model_name(log_path, root)
        log = pd.read_parquet(log_path)
        figures = [c for c in log.columns if c not in NOT_PLOTTED and pd.api.types.is_numeric_dtype(log[c])]
        for row in log.itertuples(index=False):
            live.step = int(row.iteration)
            for figure in figures:
                value = getattr(row, figure)
                if value is not None and math.isfinite(float(value)):
                    live.log_metric(f"{name}/{figure}", float(value))
        summary_path = log_path.parent / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
        doc[name] = headline(log, summary)
    live.summary = doc   # the headline only (DVCLive would keep the last value of every curve)
    live._step = None    # no top-level "step": each model has its own iterations
    live.make_summary()
    return doc
