"""A stage whose storage fails (disk full, read-only, permission denied) stops with a clear message and
leaves its previous output intact; a rerun after the fix completes.

Two ways to make the storage fail: a real one, a small tmpfs mounted over the project's ``data/``
(filled, then remounted read-only; needs root, as the test machines have), and an injected one that
runs everywhere: a ``sitecustomize`` on the stage's PYTHONPATH (which its Ray workers inherit)
making ``semlic.fileio.atomic_write_bytes`` raise ``ENOSPC`` for anything under ``data/.staging``.
"""

from __future__ import annotations

import errno
import os
import subprocess

import pytest

from semlic.pipeline.staging import STORAGE_ERRNOS, storage_error, storage_message
from tests.test_flows_support import make_project, prepare_synthetic, run_stage, stage_env, start_stage, tree_bytes

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

PARAMS = {
    "base": {"workers": 1},
    "code": {"limit": 2, "shard_size": 1, "methods": None, "lpips": False,
             "baselines": {"codecs": ["jpeg", "webp"], "sweep": {"jpeg": [40, 90], "webp": [40, 90]}}},
}
MORE = ["-S", "code.baselines.sweep.jpeg=[20,40,60,80,90,95]", "-S", "code.baselines.sweep.webp=[20,40,60,80,90,95]"]

INJECT = '''
import errno, os
import semlic.fileio as _fileio
_write = _fileio.atomic_write_bytes
def atomic_write_bytes(path, data):
    if ".staging" in os.fspath(path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(path))
    return _write(path, data)
_fileio.atomic_write_bytes = atomic_write_bytes
'''


def failing_run(project, env, *args):
    proc = start_stage("code", project, env, *args)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode != 0, output[-4000:]
    return output


def test_storage_error_is_found_behind_wrappers():
    inner = OSError(errno.ENOSPC, "No space left on device", "/data/.staging/x")
    try:
        try:
            raise inner
        except OSError as exc:
            raise RuntimeError("task failed") from exc
    except RuntimeError as outer:
        assert storage_error(outer) is inner
    assert storage_error(ValueError("no")) is None and storage_error(OSError(errno.ENOENT, "gone")) is None
    assert errno.EROFS in STORAGE_ERRNOS
    message = storage_message("code", inner)
    assert "/data/.staging/x" in message and "previous output is intact" in message and "rerun" in message


def test_injected_disk_full_keeps_the_previous_output(tmp_path):
    project = make_project(tmp_path / "p", PARAMS)
    prepare_synthetic(project, limit=2)
    run_stage("code", project, stage_env(project))
    before = tree_bytes(project / "data" / "coded")
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(INJECT)
    env = stage_env(project)
    env["PYTHONPATH"] = f"{inject}{os.pathsep}{env['PYTHONPATH']}"
    output = failing_run(project, env, *MORE)
    assert "code: failed writing" in output and "No space left on device" in output, output[-4000:]
    assert "previous output is intact" in output
    assert tree_bytes(project / "data" / "coded") == before
    run_stage("code", project, stage_env(project), *MORE)   # the fault gone, the rerun completes
    assert tree_bytes(project / "data" / "coded") != before


def _mount(*args) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True)


@pytest.fixture
def small_data_dir(tmp_path):
    """A project whose data/ is a tmpfs (root only; the injected test covers machines without)."""
    project = make_project(tmp_path / "p", PARAMS)
    data = project / "data"
    data.mkdir()
    if os.geteuid() != 0 or _mount("-t", "tmpfs", "-o", "size=64m", "tmpfs", str(data)).returncode != 0:
        pytest.skip("mounting a tmpfs needs root (tests/test_flows_storage.py's injected test runs instead)")
    try:
        yield project
    finally:
        subprocess.run(["umount", "-l", str(data)], check=False)


def test_a_full_then_read_only_file_system_keeps_the_previous_output(small_data_dir):
    project = small_data_dir
    data = project / "data"
    prepare_synthetic(project, limit=2)
    run_stage("code", project, stage_env(project))
    before = tree_bytes(data / "coded")
    used_kb = int(subprocess.run(["du", "-sk", str(data)], capture_output=True, text=True).stdout.split()[0])
    assert _mount("-o", f"remount,size={used_kb + 48}k", str(data)).returncode == 0   # 48 KiB left
    output = failing_run(project, stage_env(project), *MORE)
    assert "No space left on device" in output and "previous output is intact" in output, output[-4000:]
    assert tree_bytes(data / "coded") == before
    assert _mount("-o", "remount,ro", str(data)).returncode == 0
    output = failing_run(project, stage_env(project), *MORE)
    assert "Read-only file system" in output and "previous output is intact" in output, output[-4000:]
    assert tree_bytes(data / "coded") == before
