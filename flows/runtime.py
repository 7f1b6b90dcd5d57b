"""Wiring shared by every flow: params, shards, staged outputs, the Prefect API, Ray.

A flow is run three ways, all through this module:

* ``python -m flows.<stage>`` (what ``dvc repro`` does): :func:`run_stage` loads the stage's
  params sections, opens ONE Prefect API and one Ray connection for the whole run
  (:func:`stage_session`), and calls the flow with the runner of :func:`ray_runner`.
* ``prefect deployment run <flow>/<deployment>``: a process worker calls the flow function
  with PREFECT_API_URL already set; the decorator's default runner resolves the cluster
  from the environment or ``params.yaml``.
* tests and benchmarks call ``main(argv)`` with ``--params`` / ``--set`` overrides.

Cluster address (first that is set wins): ``SEMLIC_RAY_ADDRESS``, ``RAY_ADDRESS``,
``base.cluster`` in params. ``None`` (null) starts a private local Ray on loopback (never
attaches to another Ray instance on the machine); ``"auto"`` joins the cluster this driver
runs inside; anything else (``host:port``, ``ray://host:10001``) is connected to. The tasks
read and write files under the repository: a multi-machine cluster needs the repository
on a shared file system at the same path.

Why one Prefect API: a task run on a Ray worker talks to the API named in the settings
serialized by the driver. With no API URL set, every Ray worker would start its own
temporary server (5-7 s each, DESIGN.md section 8). :func:`stage_session` starts one
server in the driver when none is configured and gives its URL to every Ray worker
(``runtime_env``); the runner's ``submit`` leaves the driver's settings out of what it ships
with each task (rebuilding them cost ~0.3 s per task run in a worker), and a worker start-up
hook opens one API client per worker process (:func:`worker_setup`).

Per-task overhead measured here: reports/pipeline.md (benchmarks/pipeline_overhead.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from flows import _env  # noqa: F401  (environment defaults, before Prefect or Ray load)
import yaml  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PARAMS_FILE = "params.yaml"
STAGING = Path("data") / ".staging"
# Passed to every Ray worker process (runtime_env env_vars) besides PREFECT_API_URL.
# Thread counts are not passed: a task sets torch's threads to the CPUs Ray gave it.
WORKER_ENV_KEYS = ("PREFECT_SERVER_ANALYTICS_ENABLED", "PREFECT_LOGGING_LEVEL", "PREFECT_HOME",
                   "PREFECT_API_AUTH_STRING", "PREFECT_API_KEY")


# --- params ---------------------------------------------------------------------------------
def _parse_value(text: str) -> Any:
    return yaml.safe_load(text)


def apply_overrides(params: dict, overrides: Iterable[str]) -> dict:
    """Apply ``section.key=value`` overrides (values parsed as YAML), like ``dvc exp run -S``."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set takes section.key=value, got {item!r}")
        node = params
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = _parse_value(value)
    return params


def load_params(path: str | os.PathLike = PARAMS_FILE, sections: Sequence[str] = ("base",),
                overrides: Iterable[str] = ()) -> dict:
    """The named sections of a params file (``{section: {...}}``) after overrides."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise SystemExit(f"{path}: no such params file") from None
    data = apply_overrides(data, overrides)
    missing = [s for s in sections if s not in data]
    if missing:
        raise SystemExit(f"{path}: missing params sections {missing}")
    return {s: data[s] for s in sections}


def shards(items: Sequence, size: int) -> list[list]:
    """Consecutive chunks of at most ``size`` items (the items' order is kept)."""
    size = max(1, int(size))
    items = list(items)
    return [items[i:i + size] for i in range(0, len(items), size)]


# --- outputs --------------------------------------------------------------------------------
@contextlib.contextmanager
def staged_dir(final: str | os.PathLike, fingerprint: Any = None) -> Iterator[Path]:
    """A staging directory that replaces ``final`` only when the block succeeds.

    The staging path is absolute: tasks on other nodes (a shared file system) write there.
    Nothing half-written ever sits at ``final``: the work goes to ``data/.staging/<name>``
    (same file system), then two renames swap it in. A run killed midway leaves only the
    staging directory. ``fingerprint`` (JSON data: the stage's params) decides what the next
    run does with it: the same fingerprint keeps it, so work that resumes (training
    checkpoints, finished shards) resumes; another one, or ``None``, starts from empty.
    """
    final = Path(final).absolute()
    staging = Path.cwd() / STAGING / Path(final).relative_to(Path.cwd()).as_posix().replace("/", "__")
    old = staging.with_name(staging.name + ".old")
    stamp = staging / ".fingerprint.json"
    text = None if fingerprint is None else json.dumps(fingerprint, sort_keys=True, default=str)
    if old.exists():
        shutil.rmtree(old)
    if staging.exists() and (text is None or not stamp.is_file() or stamp.read_text() != text):
        shutil.rmtree(staging)
    staging.mkdir(parents=True, exist_ok=True)
    if text is not None:
        stamp.write_text(text)
    yield staging
    stamp.unlink(missing_ok=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        os.replace(final, old)
    os.replace(staging, final)
    if old.exists():
        shutil.rmtree(old)


def content_signature(*paths: str | os.PathLike) -> str:
    """SHA-256 over files (directories: every file below, sorted), for staging fingerprints.

    Used on small inputs (manifests, models, tables) and the library's source, so a staging
    directory left by a killed run is reused only if nothing it was made from has changed.
    """
    import hashlib

    digest = hashlib.sha256()
    for path in map(Path, paths):
        files = sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts) \
            if path.is_dir() else [path]
        for file in files:
            digest.update(file.as_posix().encode() + b"\0")
            digest.update(hashlib.sha256(file.read_bytes()).digest() if file.is_file() else b"missing")
    return digest.hexdigest()


def code_signature() -> str:
    """Signature of the code a stage runs: semlic/ and tasks/."""
    return content_signature(REPO / "semlic", REPO / "tasks")


# --- Prefect API ---------------------------------------------------------------------------
def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: deliver SIGTERM to this process when the process that started it dies."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _stage_server():
    """Prefect's temporary server (uvicorn on 127.0.0.1, SQLite under PREFECT_HOME), started
    without waiting, and stopped by the kernel too if this stage is killed (SIGKILL)."""
    import subprocess

    import httpx
    from prefect.server.api.server import SubprocessASGIServer

    class StageServer(SubprocessASGIServer):
        def _run_uvicorn_command(self):
            popen = subprocess.Popen

            def popen_dying_with_parent(*args, **kwargs):
                if sys.platform.startswith("linux"):
                    kwargs.setdefault("preexec_fn", _die_with_parent)
                return popen(*args, **kwargs)

            subprocess.Popen = popen_dying_with_parent
            try:
                return super()._run_uvicorn_command()
            finally:
                subprocess.Popen = popen

        def launch(self) -> str:
            """Start the process; return the API URL (not answering yet)."""
            self.port = self.port or self.find_available_port()
            self.server_process = self._run_uvicorn_command()
            self.running = True
            return self.api_url

        def wait_ready(self, timeout: float = 120.0) -> None:
            deadline = time.monotonic() + timeout
            with httpx.Client() as client:
                while time.monotonic() < deadline:
                    if self.server_process.poll() is not None:
                        raise RuntimeError(f"the Prefect server exited with code {self.server_process.returncode}")
                    try:
                        if client.get(f"{self.api_url}/health", timeout=5).status_code == 200:
                            return
                    except httpx.HTTPError:
                        pass
                    time.sleep(0.1)
            raise RuntimeError(f"the Prefect server at {self.api_url} did not answer within {timeout:.0f} s")

    return StageServer()


def _drain_prefect_clients(timeout: float = 10.0) -> None:
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
    used; otherwise one temporary server is started and stopped with the stage. Ray is
    connected while the server boots (both take seconds).
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    import ray

    url = PREFECT_API_URL.value()
    server = None
    if not url:
        os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "CRITICAL")  # no shutdown noise
        server = _stage_server()
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
                _drain_prefect_clients()
    finally:
        if owns_ray and ray.is_initialized():
            ray.shutdown()
        if server is not None:
            server.stop()


# --- Ray ------------------------------------------------------------------------------------
def cluster_address(base: dict | None = None) -> str | None:
    """Where the tasks run: env ``SEMLIC_RAY_ADDRESS``, env ``RAY_ADDRESS``, ``base.cluster``."""
    for name in ("SEMLIC_RAY_ADDRESS", "RAY_ADDRESS"):
        if os.environ.get(name):
            return os.environ[name]
    if base is None:
        base = _base_from_file()
    return base.get("cluster") or None


def _base_from_file() -> dict:
    try:
        return load_params(PARAMS_FILE, ["base"])["base"]
    except SystemExit:
        return {}


def _worker_env(api_url: str | None) -> dict[str, str]:
    env = {k: os.environ[k] for k in WORKER_ENV_KEYS if k in os.environ}
    if api_url:
        env["PREFECT_API_URL"] = api_url
    # tasks and flows are pickled by reference: workers import them from the repository
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def _ray_loopback() -> None:
    """Make a local Ray bind 127.0.0.1 only (DESIGN.md section 8)."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # inherited by raylet, GCS, workers
    import ray._private.ray_constants as ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False  # read at call time by services.get_node_ip_address


def connect_ray(address: str | None, num_cpus: int, api_url: str | None) -> bool:
    """Connect this driver to Ray; return True if it started or joined a session it must end.

    ``address`` None/"local": a private Ray on 127.0.0.1 with ``num_cpus`` CPUs (never one
    that happens to run on this machine); "auto": the cluster this driver runs inside; else
    that address. Every worker process gets PREFECT_API_URL, PYTHONPATH and a start-up hook
    (:func:`worker_setup`) through the job's ``runtime_env``.
    """
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = dict(
        namespace="semlic", log_to_driver=False,
        runtime_env={"env_vars": _worker_env(api_url), "worker_process_setup_hook": "flows.runtime.worker_setup"},
    )
    if address in (None, "", "local"):
        _ray_loopback()
        kwargs.update(address="local", num_cpus=num_cpus, include_dashboard=False)
    else:
        kwargs.update(address=address)
    # Connect here rather than in RayTaskRunner (which treats "auto" as "start one").
    ray.init(**kwargs)
    return True


def _make_runner_class():
    from prefect_ray import RayTaskRunner

    class SemlicRayTaskRunner(RayTaskRunner):
        """RayTaskRunner that connects through :func:`connect_ray` when the flow starts.

        Inside :func:`stage_session` (``python -m flows.<stage>``) Ray is already connected
        and is reused. Run by a deployment's worker, it resolves the cluster itself
        (:func:`cluster_address`) and disconnects when the flow ends.
        """

        _remote_functions: dict

        def __enter__(self):
            from prefect.settings import PREFECT_API_URL

            self._remote_functions = {}

            owns = connect_ray(self.address or cluster_address(),
                               int(self.init_kwargs.get("num_cpus") or _base_from_file().get("workers", 2)),
                               PREFECT_API_URL.value())
            super().__enter__()
            self._owns_ray = owns
            return self

        def submit(self, task, parameters, wait_for=None, dependencies=None):
            # prefect-ray 0.6's submit, less the settings context: serializing it costs ~0.1 s
            # in the driver and a worker rebuilds a full Settings model from it for every task
            # run (~0.3 s, measured here); the worker's settings come from its environment.
            from uuid import uuid4

            from prefect.utilities.engine import collect_task_run_inputs_sync
            from prefect_ray.context import RemoteOptionsContext
            from prefect_ray.task_runners import PrefectRayFuture

            import ray

            if not self._started:
                raise RuntimeError("The task runner must be started before submitting work.")
            task_run_id = uuid4()
            task_inputs = {k: collect_task_run_inputs_sync(v, future_cls=PrefectRayFuture)
                           for k, v in parameters.items()}
            context = _serialize_context_without_settings({
                "task": task, "task_run_id": task_run_id, "task_inputs": task_inputs,
                "copy_to_child_ctx": True})
            parameters, upstream = self._exchange_prefect_for_ray_futures(parameters)
            options = RemoteOptionsContext.get().current_remote_options
            # one Ray function per set of options (prefect-ray makes, and exports, a new one per task run)
            key = json.dumps(options, sort_keys=True, default=repr)
            remote = self._remote_functions.get(key)
            if remote is None:
                remote = (ray.remote(**options) if options else ray.remote)(self._run_prefect_task)
                self._remote_functions[key] = remote
            ref = remote.options(name=task.name).remote(
                *upstream, task=task, task_run_id=task_run_id, parameters=parameters,
                wait_for=wait_for, dependencies=dependencies, context=context)
            return PrefectRayFuture(task_run_id=task_run_id, wrapped_future=ref)

    return SemlicRayTaskRunner


def _serialize_context_without_settings(asset_ctx_kwargs: dict) -> dict:
    """prefect.context.serialize_context less the settings (serializing them costs ~0.1 s per
    task run in the driver, and rebuilding them ~0.3 s in the worker)."""
    try:
        from prefect.context import (AssetContext, EngineContext, TagsContext, TaskRunContext, _deployment_id,
                                     _deployment_parameters)
    except ImportError:  # another Prefect: its own function, settings dropped afterwards
        from prefect.context import serialize_context

        return {**serialize_context(asset_ctx_kwargs=asset_ctx_kwargs), "settings_context": {}}
    flow_run_context, task_run_context, tags_context = EngineContext.get(), TaskRunContext.get(), TagsContext.get()
    deployment_id = _deployment_id.get()
    return {
        "flow_run_context": flow_run_context.serialize() if flow_run_context else {},
        "task_run_context": task_run_context.serialize() if task_run_context else {},
        "tags_context": tags_context.serialize() if tags_context else {},
        "settings_context": {},
        "asset_context": AssetContext.from_task_and_inputs(**asset_ctx_kwargs).serialize(),
        "deployment_id": str(deployment_id) if deployment_id else None,
        "deployment_parameters": _deployment_parameters.get(),
    }


_WORKER_CLIENT = None


def worker_setup() -> None:
    """Ray worker start-up hook: import Prefect while the worker is idle, open one API client.

    The client is entered once for the worker's life, so each task run reuses it instead of
    building a new HTTP client and TLS context (about 0.08 s each, twice per task run).
    """
    global _WORKER_CLIENT
    import prefect.task_engine  # noqa: F401
    import prefect_ray.task_runners  # noqa: F401

    url = os.environ.get("PREFECT_API_URL")
    if not url or _WORKER_CLIENT is not None:
        return
    import httpx

    deadline = time.monotonic() + 120  # the driver may still be starting the server
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    try:
        from prefect.context import SyncClientContext

        client = SyncClientContext()
        client.__enter__()
        _WORKER_CLIENT = client
    except Exception:  # noqa: BLE001 - each task run then opens its own client
        pass


_RUNNER_CLASS = None


def ray_runner(base: dict | None = None, address: str | None = None):
    """The task runner for a flow: local Ray with ``base.workers`` CPUs, or the cluster."""
    global _RUNNER_CLASS
    if _RUNNER_CLASS is None:
        _RUNNER_CLASS = _make_runner_class()
    init_kwargs: dict[str, Any] = {"namespace": "semlic"}
    if base is not None:
        address = address or cluster_address(base)
        init_kwargs["num_cpus"] = int(base.get("workers", 2))
    return _RUNNER_CLASS(address=address, init_kwargs=init_kwargs)


def gpu_options(base: dict) -> dict:
    """Ray remote options for a GPU task: one GPU when the device is CUDA and the cluster has one."""
    device = str(base.get("device", "cpu"))
    if not device.startswith("cuda"):
        return {}
    import ray

    if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) >= 1:
        return {"num_gpus": 1}
    return {}


def shard_options(base: dict, gpu: bool = True) -> dict:
    """Ray remote options for a shard task: one CPU (and one GPU for a model on CUDA when
    ``gpu``), spread over the nodes."""
    return {"num_cpus": 1, "scheduling_strategy": base.get("scheduling", "SPREAD"),
            **(gpu_options(base) if gpu else {})}


def training_options(base: dict) -> dict:
    """Ray remote options for a training task: ``base.workers`` CPUs (at most a node's), a GPU on CUDA."""
    import ray

    cpus = int(base.get("workers", 2))
    if ray.is_initialized():
        largest = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=1)
        cpus = max(1, min(cpus, int(largest)))
    return {"num_cpus": cpus, **gpu_options(base)}


def wait_all(futures: list) -> list:
    """Results of every future, in order; waits for all before raising the first failure."""
    for future in futures:
        future.wait()
    return [future.result() for future in futures]


# --- entry point ----------------------------------------------------------------------------
def argument_parser(stage: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m flows.{stage}",
                                     description=f"Run the {stage} stage as a Prefect flow on Ray.")
    parser.add_argument("--params", default=PARAMS_FILE, help="params file (default: params.yaml)")
    parser.add_argument("--set", "-S", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a parameter (YAML value), e.g. -S code.shard_size=4")
    parser.add_argument("--cluster", default=None,
                        help="Ray address: 'auto', host:port, ray://host:10001 (default: params/env)")
    parser.add_argument("--record", default=None, metavar="JSON",
                        help="also write what the flow returned (per-task seconds, nodes, ...) to this file")
    return parser


def run_stage(flow, stage: str, sections: Sequence[str], argv: Sequence[str] | None = None) -> Any:
    """Parse argv, load params, run ``flow(params)`` on Ray under one Prefect API; print timing."""
    args = argument_parser(stage).parse_args(argv)
    params = load_params(args.params, sections, args.set)
    base = params["base"]
    if args.cluster:
        base["cluster"] = args.cluster
    start = time.perf_counter()
    with stage_session(base):
        result = flow.with_options(task_runner=ray_runner(base))(params)
    seconds = time.perf_counter() - start
    print(f"{stage}: done in {seconds:.1f} s", file=sys.stderr)
    if args.record:
        record = {"stage": stage, "seconds": seconds, "result": result}
        Path(args.record).write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    return result
