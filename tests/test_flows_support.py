"""Helpers shared by the flow tests (no tests here): small projects, running a stage, cleanup.

A "project" is a temporary directory holding a params.yaml and data/; a stage runs in it as
``python -m flows <stage>`` with the repository on PYTHONPATH, its own PREFECT_HOME and
one thread per process, exactly as ``dvc repro`` runs it.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def deep_update(target: dict, updates: dict) -> dict:
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            deep_update(target[key], value)
        else:
            target[key] = copy.deepcopy(value)
    return target


def make_project(root: Path, overrides: dict) -> Path:
    """``root`` with the repository's params.yaml, updated with ``overrides``."""
    root.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump(deep_update(params, overrides), sort_keys=False))
    return root


def stage_env(project: Path, **extra: str) -> dict:
    """Environment of a stage process: repository importable, private Prefect home, 1 thread."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PREFECT_API_URL", "SEMLIC_RAY_ADDRESS", "RAY_ADDRESS", "PREFECT_PROFILE")}
    env.update(PYTHONPATH=str(REPO), PREFECT_HOME=str(project / ".prefect"), OMP_NUM_THREADS="1",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", RAY_USAGE_STATS_ENABLED="0",
               PATH=f"{Path(PYTHON).parent}{os.pathsep}{env.get('PATH', '')}")
    env.update(extra)
    return env


def start_stage(stage: str, project: Path, env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen([PYTHON, "-m", "flows", stage, "--record", str(project / f"record-{stage}.json"), *args],
                            cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run_stage(stage: str, project: Path, env: dict, *args: str, timeout: float = 600) -> dict:
    """Run a stage to completion; return its --record (raises with the output on failure)."""
    proc = start_stage(stage, project, env, *args)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc)
        raise
    if proc.returncode != 0:
        raise AssertionError(f"flows {stage} exited {proc.returncode}:\n{output[-6000:]}")
    return json.loads((project / f"record-{stage}.json").read_text())


def descendants(pid: int) -> list[int]:
    import psutil

    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def kill_pids(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a process and every process it started (by pid), then reap it."""
    pids = descendants(proc.pid)
    kill_pids([proc.pid] + pids)
    proc.wait(timeout=30)
    # processes that daemonised away from the tree are gone from psutil's view only when dead
    deadline = time.monotonic() + 10
    import psutil

    while time.monotonic() < deadline and any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
                                              for p in pids):
        time.sleep(0.1)


def prepare_synthetic(project: Path, limit: int, train_size=(64, 64)) -> Path:
    """The builtin data set, ``limit`` images per split, prepared by the library directly."""
    from semlic.data.prepare import prepare_dataset

    out = project / "data" / "prepared" / "synthetic"
    prepare_dataset("synthetic", None, out, train_size=train_size, limit=limit, workers=1, show_progress=False)
    return out


def tiny_models(project: Path) -> None:
    """A PSPNet and a DSSLIC model trained for two steps: enough to code with."""
    from semlic.methods.dsslic.training import train_dsslic
    from semlic.segnet.train import train_segnet

    prepared = project / "data" / "prepared" / "synthetic"
    segnet_cfg = {"model": {"num_classes": 8, "backbone": "resnet18", "base_channels": 8, "head_channels": 16,
                            "aux_channels": 8, "ppm_channels": 4},
                  "iterations": 2, "batch_size": 2, "crop_size": 32, "checkpoint_every": 10}
    train_segnet(segnet_cfg, prepared, project / "data/models/segnet", progress=False)
    # train_dsslic reads maps named like the images: the ground truth stands in for PSPNet's maps here
    segs = project / "data" / "segments" / "synthetic" / "train"
    segs.mkdir(parents=True, exist_ok=True)
    import numpy as np
    from PIL import Image

    for label in sorted((prepared / "train" / "labels").glob("*.png")):
        array = np.asarray(Image.open(label))
        Image.fromarray(np.where(array == 255, 0, array).astype(np.uint8)).save(segs / label.name)
    train_dsslic({"preset": "tiny", "label_nc": 8, "iterations": 2, "batch_size": 2, "crop": 32, "gan": False},
                 prepared / "train" / "images", segs, project / "data/models/dsslic", progress=False)


def tree_bytes(root: Path, exclude: tuple[str, ...] = ()) -> dict[str, bytes]:
    """Every file below ``root`` (relative path -> bytes), less the names in ``exclude``."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in exclude}
