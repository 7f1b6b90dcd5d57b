"""Deployments for real: a Prefect server on loopback, a process worker, ``prefect deploy``
from the repository's prefect.yaml, ``prefect deployment run``; the flow run completes and
writes its Parquet. Everything started here is stopped by process id."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.test_flows_support import PYTHON, REPO, descendants, kill_pids, make_project, prepare_synthetic, stage_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

PREFECT = str(Path(PYTHON).parent / "prefect")
PARAMS = {"base": {"workers": 1},
          "code": {"limit": 2, "shard_size": 1, "methods": None,
                   "baselines": {"codecs": ["jpeg"], "sweep": {"jpeg": [50, 90]}}}}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process and its children by pid, SIGKILL what is left after 20 s."""
    if proc.poll() is None:
        children = descendants(proc.pid)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        kill_pids([proc.pid] + children)
    proc.wait(timeout=10)


def cli(*args: str, env: dict, cwd: Path, timeout: float = 300) -> str:
    result = subprocess.run([PREFECT, "--no-prompt", *args], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"prefect {' '.join(args)} exited {result.returncode}:\n" \
                                   f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result.stdout


def test_deployment_run_on_process_worker(tmp_path):
    project = make_project(tmp_path / "project", PARAMS)
    for name in ("flows", "semlic"):
        os.symlink(REPO / name, project / name)
    shutil.copy(REPO / "prefect.yaml", project / "prefect.yaml")
    prepare_synthetic(project, limit=2)

    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = stage_env(project, PREFECT_API_URL=api, PREFECT_SERVER_LOGGING_LEVEL="WARNING")
    started: list[subprocess.Popen] = []
    try:
        server = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                  cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append(server)
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, "the Prefect server exited"
            try:
                if httpx.get(f"{api}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the Prefect server did not start"
            time.sleep(0.5)

        cli("work-pool", "create", "semlic-process", "--type", "process", env=env, cwd=project)
        cli("deploy", "--all", env=env, cwd=project)
        worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", "semlic-process", "--type", "process"],
                                  cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append(worker)
        output = cli("deployment", "run", "code/default", "--watch", "--watch-timeout", "600",
                     env=env, cwd=project, timeout=660)
        assert "Completed" in output, output[-3000:]
    finally:
        for proc in reversed(started):
            stop(proc)

    rows = sorted((project / "data" / "coded" / "rows").rglob("*.parquet"))
    assert [p.relative_to(project / "data" / "coded" / "rows").as_posix() for p in rows] == \
        ["method=jpeg/dataset=synthetic/part-0.parquet"]
    from semlic import results

    assert len(results.read_rows(project / "data" / "coded" / "rows")) == 2 * 2  # images x qualities
