"""Staged outputs: a stage's output appears whole or not at all, and a rerun resumes.

Every output is built in ``data/.staging/<output>`` and swapped in with two renames
(:func:`staged_dir`). A fingerprint of what the output is made from (the stage's params,
:func:`content_signature` of its inputs, :func:`code_signature`) decides whether the
staging directory a killed run left is resumed (finished shards, training checkpoints) or
discarded.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator


STAGING = Path("data") / ".staging"


@contextlib.contextmanager
def staged_dir(final: str | os.PathLike, fingerprint: Any = None) -> Iterator[Path]:
    """A staging directory that replaces ``final`` only when the block succeeds.

    The staging path is absolute: tasks on other nodes (a shared file system) write there.
    Nothing half-written ever sits at ``final``: the work goes to ``data/.staging/<name>``
    (``<final's folder>/.staging/<name>`` for an output outside the working directory: always the
    file system of ``final``), then two renames swap it in. A run killed midway leaves only the
    staging directory. ``fingerprint`` (JSON data: the stage's params) decides what the next
    run does with it: the same fingerprint keeps it, so work that resumes (training
    checkpoints, finished shards) resumes; another one, or ``None``, starts from empty.
    """
    final = Path(final).absolute()
    if final.is_relative_to(Path.cwd()):
        staging = Path.cwd() / STAGING / final.relative_to(Path.cwd()).as_posix().replace("/", "__")
    else:   # an output elsewhere (paths.* set to an absolute folder): staged beside it
        staging = final.parent / STAGING.name / final.name
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
    digest = hashlib.sha256()
    for path in map(Path, paths):
        files = sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts) \
            if path.is_dir() else [path]
        for file in files:
            digest.update(file.as_posix().encode() + b"\0")
            digest.update(hashlib.sha256(file.read_bytes()).digest() if file.is_file() else b"missing")
    return digest.hexdigest()


def code_signature() -> str:
    """Signature of the code a stage runs: the library (``semlic/``, the stages included)."""
    return content_signature(Path(__file__).resolve().parents[1])


def write_live(stage: str, models_out: str | os.PathLike, paths: dict) -> dict:
    """A training stage's DVCLive files (curves, headline metrics.json) from the training logs under
    ``models_out``, swapped in whole at ``<paths.live>/<stage>`` (semlic.live.export_training)."""
    from semlic.live import export_training

    live_root = paths.get("live") or (Path.cwd() / "data" / "live")
    with staged_dir(Path(live_root) / stage) as staging:
        return export_training(models_out, staging)


# Errors of the storage a stage writes to: the stage stops with a message saying so (and what is kept).
STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def storage_error(exc: BaseException | None) -> OSError | None:
    """The OSError of :data:`STORAGE_ERRNOS` behind ``exc`` (a task's error reaches the flow through
    Prefect's retries and Ray's RayTaskError: its ``cause``, ``__cause__`` or ``__context__``)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
            return exc
        exc = getattr(exc, "cause", None) or exc.__cause__ or exc.__context__
    return None


def storage_message(stage: str, error: OSError) -> str:
    where = f" writing {error.filename}" if error.filename else ""
    return (f"{stage}: failed{where}: {error.strerror or errno.errorcode.get(error.errno, error.errno)}. The stage's "
            "previous output is intact (an output is swapped in whole only when its stage succeeds); the work it "
            "finished is kept under data/.staging. Free space or make the data folder writable, then rerun: it "
            "resumes.")
