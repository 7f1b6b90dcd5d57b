"""semlic.live: training logs rendered by DVCLive (curves for dvc plots, headline metrics for dvc exp show)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from semlic.live import export_training, headline


def write_log(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path)


@pytest.fixture()
def stage(tmp_path):
    root = tmp_path / "models" / "hyper"
    for sub, scale in (("q1", 1.0), ("q3", 2.0)):
        write_log(root / sub / "train_log.parquet", [
            {"iteration": i, "seconds": 0.1 * i, "epoch": 0, "lr": 1e-4, "images_per_s": 50.0,
             "loss": scale * (10 - i), "bpp": 0.5 / i} for i in (1, 2, 3)])
    (root / "q1" / "summary.json").write_text(json.dumps({"eval": {"miou": 0.5, "images": 16, "per_class": [1, 2]}}))
    return root


def test_export_writes_curves_and_a_headline_summary(stage, tmp_path):
    live = tmp_path / "live" / "train_hyper"
    doc = export_training(stage, live)
    assert doc == {"hyper/q1": {"loss": 7.0, "eval_miou": 0.5}, "hyper/q3": {"loss": 14.0}}
    assert json.loads((live / "metrics.json").read_text()) == doc   # no "step" of its own: each model has its own
    curve = pd.read_csv(live / "plots" / "metrics" / "hyper" / "q3" / "loss.tsv", sep="\t")
    assert curve.columns.tolist() == ["step", "loss"] and curve.values.tolist() == [[1, 18.0], [2, 16.0], [3, 14.0]]
    plotted = {p.relative_to(live / "plots" / "metrics").as_posix() for p in live.rglob("*.tsv")}
    assert plotted == {f"hyper/{q}/{f}.tsv" for q in ("q1", "q3") for f in ("loss", "bpp", "images_per_s")}
    # a rerun (the stage rerun after more training) rewrites the curves, it does not append to them
    write_log(stage / "q3" / "train_log.parquet", [{"iteration": 5, "seconds": 1.0, "loss": 1.0}])
    assert export_training(stage, live)["hyper/q3"] == {"loss": 1.0}
    assert pd.read_csv(live / "plots" / "metrics" / "hyper" / "q3" / "loss.tsv", sep="\t").values.tolist() == [[5, 1.0]]


def test_a_log_at_the_top_takes_the_stage_folder_name_and_a_nan_is_null(tmp_path):
    root = tmp_path / "segnet"
    write_log(root / "train_log.parquet", [{"iteration": 10, "g_total": float("nan"), "l1": 0.3}])
    doc = export_training(root, tmp_path / "live")
    assert doc == {"segnet": {"g_total": None}}


def test_headline_takes_the_first_total_loss():
    log = pd.DataFrame([{"iteration": 4, "ce": 1.0, "loss": 2.0}])
    assert headline(log) == {"loss": 2.0}
    assert headline(log.drop(columns="loss")) == {"ce": 1.0}
    assert headline(pd.DataFrame(), {"eval": {"miou": 0.25, "pixels": 9, "pixel_accuracy": 0.5}}) == {"eval_miou": 0.25}


@pytest.mark.parametrize("repo", ["none", "git-without-commits", "git-without-dvc"])
def test_export_leaves_the_repository_alone(stage, tmp_path, monkeypatch, repo):
    """DVCLive's own repository lookup runs `dvc init` in a git repository without DVC and fails in one
    without commits (a fresh `git init` before the first `dvc repro`): the export does neither."""
    import subprocess

    work = tmp_path / "work"
    work.mkdir()
    if repo != "none":
        subprocess.run(["git", "init", "-q"], cwd=work, check=True)
    if repo == "git-without-dvc":
        (work / "x").write_text("x")
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "x"], cwd=work, check=True)
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"], cwd=work, check=True)
    monkeypatch.chdir(work)
    assert export_training(stage, work / "live")["hyper/q1"]["loss"] == 7.0
    assert not (work / ".dvc").exists() and not (work / "dvc.yaml").exists()
