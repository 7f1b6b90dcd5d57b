"""One Prefect API per stage: the stage's own server when none is configured, and the session.

A task run on a Ray worker reports to the API named in the worker's environment. With no
API URL set, every Ray worker would start its own temporary server (5-7 s each, docs/DESIGN.md
section 8), so :func:`stage_session` gives the stage ONE API for all its task runs: the
server named by ``PREFECT_API_URL`` (one you run, or a deployment's worker's), else a
:class:`StageServer` started here and stopped with the stage. Its URL goes to every Ray
worker (:func:`flows.ray_cluster.connect_ray`).

The server is Prefect's API app run by uvicorn in a child process, started with public
entry points only (``python -m uvicorn --factory prefect.server.api.server:create_app``
and Prefect settings in its environment): on 127.0.0.1 and a free port, SQLite under
``PREFECT_HOME`` (Prefect's default database), no UI, quiet logs, and none of the services
that only a long-lived server needs (the scheduler and the like; Prefect's own temporary
server leaves them out too). It is launched without waiting, so Ray connects while it
boots (both take seconds), and it gets SIGTERM from the kernel when the stage's process
dies, also when that is killed (SIGKILL).
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx

HOST = "127.0.0.1"
# Prefect settings of the stage's server (defaults: the environment may set any of them).
SERVER_SETTINGS = {
    "PREFECT_SERVER_UI_ENABLED": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_LOGGING_LEVEL": "CRITICAL",  # no shutdown noise
    # services of a long-lived server (what Prefect's temporary server does not run either)
    "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_PAUSE_EXPIRATIONS_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_REPOSSESSOR_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_CANCELLATION_CLEANUP_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_CLEANUP_RECONCILER_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_FOREMAN_ENABLED": "false",
}


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: deliver SIGTERM to this process when the process that started it dies."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def free_port(host: str = HOST, ports: range = range(8000, 9000)) -> int:
    """A TCP port in ``ports`` that nobody listens on now.

    Outside the kernel's ephemeral range (as Prefect's own temporary server does): the port is
    bound by the server seconds later, and Ray, starting meanwhile, binds ephemeral ports.
    """
    for port in random.sample(ports, len(ports)):
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free TCP port in {ports.start}-{ports.stop - 1} on {host}")



def wait_healthy(api_url: str, timeout: float, period: float = 0.2, give_up=lambda: False) -> bool:
    """Poll ``<api_url>/health`` until it answers 200 (True) or ``timeout`` passes (False);
    ``give_up()`` is asked before each try and may raise to stop waiting."""
    deadline = time.monotonic() + timeout
    with httpx.Client() as client:
        while time.monotonic() < deadline:
            give_up()
            try:
                if client.get(f"{api_url}/health", timeout=5).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(period)
    return False

class StageServer:
    """Prefect's API server in a child process: :meth:`launch`, :meth:`wait_ready`, :meth:`stop`."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None

    @property
    def api_url(self) -> str:
        return f"http://{HOST}:{self.port}/api"

    def command(self) -> list[str]:
        import prefect

        # --app-dir: the app is imported from where prefect is installed, not the working directory
        return [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(prefect.__file__).parent.parent),
                "--factory", "prefect.server.api.server:create_app",
                "--host", HOST, "--port", str(self.port), "--log-level", "error", "--lifespan", "on"]

    def environment(self) -> dict[str, str]:
        from prefect.settings import get_current_settings

        # the driver's settings (profile, PREFECT_HOME), then the stage server's defaults
        env = {**os.environ, **get_current_settings().to_environment_variables(exclude_unset=True)}
        env.pop("PREFECT_API_URL", None)
        for key, value in SERVER_SETTINGS.items():
            env.setdefault(key, value)
        return env

    def launch(self) -> str:
        """Start the process; return the API URL (not answering yet)."""
        self.process = subprocess.Popen(
            self.command(), env=self.environment(), stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        return self.api_url

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Return when the API answers; raise if the process ended or ``timeout`` passed."""
        def exited() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"the Prefect server exited with code {self.process.returncode}")
            return False

        if not wait_healthy(self.api_url, timeout, period=0.1, give_up=exited):
            raise RuntimeError(f"the Prefect server at {self.api_url} did not answer within {timeout:.0f} s")

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; reap the process."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


def drain_prefect_clients(timeout: float = 10.0) -> None:
    """Send the logs and events still queued in this process before the server goes away
    (otherwise the interpreter waits on their retries at exit)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (APILogWorker, EventsWorker):
        try:
            service.drain_all(timeout=timeout)
        except Exception:  # noqa: BLE001 - best effort at shutdown
            pass


@contextlib.contextmanager
def stage_session(base: dict, address: str | None = None) -> Iterator[str]:
    """One Prefect API and one Ray connection for a whole stage; yields the API URL.

    With PREFECT_API_URL set (a server you run, or a deployment's worker), that server is
    used; otherwise a :class:`StageServer` is started and stopped with the stage. Ray is
    connected while the server boots (:func:`flows.ray_cluster.connect_ray`).
    """
    import ray
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.ray_cluster import cluster_address, connect_ray

    url = PREFECT_API_URL.value()
    server = None
    if not url:
        server = StageServer()
        url = server.launch()
    owns_ray = False
    try:
        owns_ray = connect_ray(address or cluster_address(base), int(base.get("workers", 2)), url)
        if server is not None:
            server.wait_ready()
        with temporary_settings(updates={PREFECT_API_URL: url}):
            try:
                yield url
            finally:
                drain_prefect_clients()
    finally:
        if owns_ray and ray.is_initialized():
            ray.shutdown()
        if server is not None:
            server.stop()
