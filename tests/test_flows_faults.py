"""Faults in the middle of a stage: a Ray worker node lost, the stage's Prefect API restarted.

* The two-node loopback cluster of tests/test_flows_ray_cluster.py runs the code stage; once a
  shard has finished, the worker node's raylet and every process under it are killed by pid. Ray
  retries the tasks that were on it on the surviving head node, and the stage's Parquet output is
  byte for byte that of an undisturbed local run.
* The stage's own Prefect API (a uvicorn child of the stage, flows/prefect_api.py) is killed while
  the last shard is still at work (held, below) and started again on the same port and database:
  Prefect's client retries and the stage finishes with the same bytes.
* The API killed for good while the last shard is at work: the stage stops with a message naming
  the API (flows/stage.py); its output is the previous one or the complete new one, never a part;
  a rerun finishes, without redoing the shards that had finished, with the same bytes as an
  undisturbed run.

"Held": a sitecustomize on the stage's PYTHONPATH (its Ray workers inherit it) makes the task of one
shard wait before it writes its part while a hold file exists, so the fault always lands before the
work is done, whatever the machine's speed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import psutil
import pytest

from tests.test_flows_ray_cluster import two_node_cluster  # noqa: F401  (fixture)
from tests.test_flows_support import kill_pids, kill_tree, make_project, prepare_synthetic, run_stage, stage_env, \
    start_stage, tree_bytes

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

PARAMS = {
    "base": {"workers": 2},
    "code": {"limit": 8, "shard_size": 1, "methods": None, "lpips": False,
             "baselines": {"codecs": ["jpeg", "webp", "jxl"],
                           "sweep": {"jpeg": [30, 60, 90], "webp": [30, 60, 90], "jxl": [30, 60, 90]}}},
}
SHARDS = 8


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Prepared images and the code stage's output of an undisturbed local run."""
    root = make_project(tmp_path_factory.mktemp("reference"), PARAMS)
    prepare_synthetic(root, limit=8)
    run_stage("code", root, stage_env(root))
    return root, tree_bytes(root / "data" / "coded", exclude=("timings.parquet",))


def fresh_copy(reference_root, destination):
    destination.mkdir(parents=True)
    shutil.copy(reference_root / "params.yaml", destination / "params.yaml")
    shutil.copytree(reference_root / "data" / "prepared", destination / "data" / "prepared")
    return destination


def wait_for_a_finished_shard(project, proc, timeout=600, at_least=1):
    parts = project / "data" / ".staging" / "data__coded" / "parts"
    deadline = time.monotonic() + timeout
    while not (parts.is_dir() and len(list(parts.glob("*.parquet"))) >= at_least):
        assert proc.poll() is None, f"the stage ended first:\n{proc.stdout.read()[-4000:]}"
        assert time.monotonic() < deadline, "no shard finished in time"
        time.sleep(0.05)
    return len(list(parts.glob("*.parquet")))


HELD_PART = f"baselines-{SHARDS - 1:04d}.parquet"
HOLD = '''
import os, time
import semlic.results as _results
_write_rows = _results.write_rows
def write_rows(rows, path, *args, **kwargs):
    hold = os.environ.get("SEMLIC_TEST_HOLD", "")
    if hold and os.fspath(path).endswith(os.environ.get("SEMLIC_TEST_HOLD_PART", "")):
        deadline = time.monotonic() + 300
        while os.path.exists(hold) and time.monotonic() < deadline:
            time.sleep(0.05)
    return _write_rows(rows, path, *args, **kwargs)
_results.write_rows = write_rows
'''


def holding(tmp_path) -> tuple[dict, "os.PathLike"]:
    """Environment entries that hold the last shard's part until the returned file is removed."""
    inject = tmp_path / "hold_inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(HOLD)
    hold = tmp_path / "hold"
    hold.write_text("held")
    from tests.test_flows_support import REPO

    return {"PYTHONPATH": f"{inject}{os.pathsep}{REPO}", "SEMLIC_TEST_HOLD": str(hold),
            "SEMLIC_TEST_HOLD_PART": HELD_PART}, hold


def node_pids(node) -> list[int]:
    """The raylet of a node of ray.cluster_utils.Cluster and every process under it (its workers)."""
    pids = []
    for infos in node.all_processes.values():
        for info in infos:
            pids.append(info.process.pid)
            try:
                pids += [c.pid for c in psutil.Process(info.process.pid).children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
    return pids


def test_losing_the_worker_node_midway(reference, tmp_path, two_node_cluster):  # noqa: F811
    cluster, ray_tmp = two_node_cluster
    root, expected = reference
    worker = next(node for node in cluster.worker_nodes)
    project = fresh_copy(root, tmp_path / "cluster")
    env = stage_env(project, SEMLIC_RAY_ADDRESS=cluster.address, RAY_TMPDIR=ray_tmp,
                    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    proc = start_stage("code", project, env)
    try:
        finished = wait_for_a_finished_shard(project, proc)
        assert finished < SHARDS, "every shard had finished: nothing was left to retry"
        pids = node_pids(worker)
        assert len(pids) >= 2   # a raylet and at least one worker process
        kill_pids(pids)          # the node is gone: no graceful shutdown
        output, _ = proc.communicate(timeout=600)
    finally:
        kill_tree(proc)
    assert proc.returncode == 0, output[-6000:]
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in pids)
    assert tree_bytes(project / "data" / "coded", exclude=("timings.parquet",)) == expected


def stage_server(proc) -> psutil.Process:
    for child in psutil.Process(proc.pid).children(recursive=True):
        try:
            if "uvicorn" in " ".join(child.cmdline()) and "prefect.server" in " ".join(child.cmdline()):
                return child
        except psutil.NoSuchProcess:
            continue
    raise AssertionError("the stage's Prefect server process was not found")


def test_restarting_the_prefect_api_midway(reference, tmp_path):
    root, expected = reference
    project = fresh_copy(root, tmp_path / "restart")
    held, hold = holding(tmp_path)
    env = stage_env(project, **held)
    proc = start_stage("code", project, env)
    restarted = None
    try:
        wait_for_a_finished_shard(project, proc, at_least=SHARDS - 1)   # every shard but the held one
        parts = project / "data" / ".staging" / "data__coded" / "parts"
        assert not (parts / HELD_PART).exists()   # the fault lands while a shard is at work
        server = stage_server(proc)
        command, server_env, cwd = server.cmdline(), server.environ(), server.cwd()
        server.kill()   # the stage's child: it stays a zombie until the stage reaps it, its port is free
        deadline = time.monotonic() + 30
        while server.is_running() and server.status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "the killed server did not die"
            time.sleep(0.05)
        time.sleep(2)   # task runs report to a dead API meanwhile
        restarted = subprocess.Popen(command, env=server_env, cwd=cwd, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        hold.unlink()   # the held shard finishes and reports to the restarted API
        output, _ = proc.communicate(timeout=600)
    finally:
        hold.unlink(missing_ok=True)
        kill_tree(proc)
        if restarted is not None:
            restarted.kill()
            restarted.wait()
    assert proc.returncode == 0, output[-6000:]
    assert tree_bytes(project / "data" / "coded", exclude=("timings.parquet",)) == expected


def test_losing_the_prefect_api_for_good_then_rerunning(reference, tmp_path):
    """The API killed and not restarted: the stage stops with a message naming it; the rerun redoes only
    the shards that had not finished."""
    root, expected = reference
    project = fresh_copy(root, tmp_path / "lost")
    held, hold = holding(tmp_path)
    env = stage_env(project, PREFECT_CLIENT_MAX_RETRIES="1", **held)
    proc = start_stage("code", project, env)
    try:
        finished = wait_for_a_finished_shard(project, proc, at_least=SHARDS - 1)   # every shard but the held one
        assert finished == SHARDS - 1
        stage_server(proc).kill()
        hold.unlink()   # the held shard finishes with no API to report to
        output, _ = proc.communicate(timeout=600)
    finally:
        hold.unlink(missing_ok=True)
        kill_tree(proc)
    coded = project / "data" / "coded"
    assert proc.returncode != 0, output[-6000:]   # a task ended after the API went: the stage cannot finish
    assert "lost its Prefect API" in output and "rerun" in output, output[-6000:]
    swapped_in = coded.exists()   # the API went after the work was done: the whole new output is there
    assert not swapped_in or tree_bytes(coded, exclude=("timings.parquet",)) == expected, "a partial output"
    record = run_stage("code", project, stage_env(project))
    if not swapped_in:
        assert len(record["result"]["shards"]) <= SHARDS - finished   # the finished shards were kept
    assert tree_bytes(coded, exclude=("timings.parquet",)) == expected
