"""Interruption safety: the code stage killed with SIGKILL midway, then rerun, writes the
same bytes as a run that was never interrupted, and never leaves a half-written output."""

from __future__ import annotations

import shutil
import signal
import time

import pytest

from tests.test_flows_support import kill_tree, make_project, prepare_synthetic, run_stage, stage_env, start_stage, \
    tiny_models, tree_bytes

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

CODE_PARAMS = {
    "base": {"workers": 1},
    "code": {"limit": 4, "shard_size": 1,
             "methods": {"dsslic": {"qualities": [40, 30], "chroma": "420", "lossless": "png", "segmentation": "segnet"},
                         # the EDMS tasks are the same task (and need a SMapNet); SMIC and the hyperprior need theirs
                         "edms": None, "edms_noenh": None, "smic": None, "hyperprior": None, "dsslic_rd": None,
                         "sgfilter": None, "sgfilter_nomap": None, "sgfilter_sent": None},
             "baselines": {"codecs": ["jpeg", "webp"], "sweep": {"jpeg": [50, 90], "webp": [50, 90]}}},
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Prepared images and two tiny models, built once (by the library, not the flows)."""
    root = make_project(tmp_path_factory.mktemp("inputs"), CODE_PARAMS)
    prepare_synthetic(root, limit=4)
    tiny_models(root)
    return root


def copy_project(inputs, destination):
    shutil.copytree(inputs / "data", destination / "data")
    shutil.copy(inputs / "params.yaml", destination / "params.yaml")
    return destination


def test_sigkill_midway_then_rerun_gives_identical_parquet(inputs, tmp_path):
    reference = copy_project(inputs, tmp_path / "reference")
    run_stage("code", reference, stage_env(reference))
    expected = tree_bytes(reference / "data" / "coded", exclude=("timings.parquet",))
    assert any(name.startswith("rows/method=dsslic/") for name in expected)

    project = copy_project(inputs, tmp_path / "interrupted")
    env = stage_env(project)
    parts = project / "data" / ".staging" / "data__coded" / "parts"
    proc = start_stage("code", project, env)
    try:
        deadline = time.monotonic() + 600
        while not (parts.is_dir() and any(parts.glob("*.parquet"))):  # at least one shard finished
            assert proc.poll() is None, f"the stage ended before it could be killed:\n{proc.stdout.read()}"
            assert time.monotonic() < deadline, "no shard finished in time"
            time.sleep(0.05)
        finished_before_kill = len(list(parts.glob("*.parquet")))
        proc.send_signal(signal.SIGKILL)
    finally:
        kill_tree(proc)  # the driver, its Prefect server, its Ray processes: by pid
    assert proc.returncode == -signal.SIGKILL
    assert finished_before_kill < 8, "the stage had finished every shard: nothing was interrupted"
    assert not (project / "data" / "coded").exists(), "a killed stage must not leave a partial output"

    record = run_stage("code", project, env)
    assert len(record["result"]["shards"]) <= 8 - finished_before_kill  # finished shards were kept
    assert tree_bytes(project / "data" / "coded", exclude=("timings.parquet",)) == expected
    assert not (project / "data" / ".staging" / "data__coded").exists()
