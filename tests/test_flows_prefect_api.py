"""The stage's own Prefect server (flows.prefect_api.StageServer): it answers on loopback,
keeps its SQLite database under PREFECT_HOME, prints nothing, and dies with the stage's
process even when that is killed with SIGKILL."""

from __future__ import annotations

import signal
import subprocess
import time

import psutil
import pytest

from tests.test_flows_support import PYTHON, kill_pids, stage_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

DRIVER = """
import sys
from flows.prefect_api import StageServer

server = StageServer()
url = server.launch()  # returns at once: the stage connects Ray meanwhile
server.wait_ready()
print(server.process.pid, url, flush=True)
sys.stdin.read()  # until killed
"""


def test_stage_server_answers_then_dies_with_a_killed_stage(tmp_path):
    import httpx

    env = stage_env(tmp_path)
    driver = subprocess.Popen([PYTHON, "-c", DRIVER], cwd=tmp_path, env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    server_pid = None
    try:
        line = driver.stdout.readline()
        assert line, f"the driver ended: {driver.stderr.read()[-3000:]}"
        server_pid, url = int(line.split()[0]), line.split()[1]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/api")
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
        assert (tmp_path / ".prefect" / "prefect.db").is_file()  # SQLite under PREFECT_HOME
        assert psutil.Process(server_pid).ppid() == driver.pid
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
        deadline = time.monotonic() + 30
        while psutil.pid_exists(server_pid) and psutil.Process(server_pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "the Prefect server outlived its stage"
            time.sleep(0.1)
        assert driver.stderr.read() == ""  # quiet: no server logs
    finally:
        kill_pids([p for p in (driver.pid, server_pid) if p])
        driver.wait(timeout=30)
