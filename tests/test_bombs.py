"""Decompression bombs: a small file declaring a huge picture is refused from its header, before decoding."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from semlic import format as fmt
from semlic.errors import ConfigError, DeclaredSizeError, ImageTooLargeError, LayerError, LayerSizeError
from semlic.image_codecs import get_codec, jxl_declared_size
from semlic.imageio import DEFAULT_MAX_PIXELS, load_image, load_label_map

from .conftest import make_image

HUGE = 100_000


def png_declaring(width: int, height: int, mode: int = 2) -> bytes:
    """A PNG whose IHDR declares width x height (8-bit, colour type ``mode``) with one tiny IDAT."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, mode, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


class BitWriter:   # JPEG XL's bit order: least significant bit first
    def __init__(self):
        self.bits: list[int] = []

    def u(self, value: int, n: int):
        self.bits += [(value >> i) & 1 for i in range(n)]

    def bytes(self) -> bytes:
        bits = self.bits + [0] * (-len(self.bits) % 8)
        return bytes(sum(b << i for i, b in enumerate(bits[k:k + 8])) for k in range(0, len(bits), 8))


def jxl_declaring(width: int, height: int) -> bytes:
    """A JPEG XL codestream whose SizeHeader declares width x height (U32 selector 3: 30 bits), default
    metadata, then nothing a decoder could use."""
    w = BitWriter()
    w.u(0, 1)                              # not small
    w.u(3, 2), w.u(height - 1, 30)         # ysize - 1
    w.u(0, 3)                              # no ratio: xsize follows
    w.u(3, 2), w.u(width - 1, 30)
    w.u(1, 1)                              # ImageMetadata all_default
    return b"\xff\x0a" + w.bytes() + b"\0" * 64


def test_png_bomb_is_refused_naming_the_limit(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_declaring(HUGE, HUGE))
    assert path.stat().st_size < 200
    with pytest.raises(ImageTooLargeError, match=rf"{HUGE}x{HUGE}.*limit of {DEFAULT_MAX_PIXELS}.*SEMLIC_MAX_PIXELS"):
        load_image(path)
    with pytest.raises(ImageTooLargeError):
        load_label_map(path)


def test_the_limit_is_configurable(tmp_path, monkeypatch):
    from semlic.imageio import save_png

    image, _ = make_image(64, 80)
    save_png(tmp_path / "a.png", image)
    assert load_image(tmp_path / "a.png").shape == (64, 80, 3)
    with pytest.raises(ImageTooLargeError, match="limit of 1000"):
        load_image(tmp_path / "a.png", max_pixels=1000)
    monkeypatch.setenv("SEMLIC_MAX_PIXELS", "5000")
    with pytest.raises(ImageTooLargeError, match="limit of 5000"):
        load_image(tmp_path / "a.png")
    assert load_image(tmp_path / "a.png", max_pixels=64 * 80).shape == (64, 80, 3)   # the argument wins
    monkeypatch.setenv("SEMLIC_MAX_PIXELS", "many")
    with pytest.raises(ConfigError, match="SEMLIC_MAX_PIXELS"):
        load_image(tmp_path / "a.png")


@pytest.mark.parametrize("size", [(64, 64), (100, 37), (1000, 8), (256, 144), (1, 1)])
def test_jxl_declared_size_reads_what_libjxl_wrote(size):
    w, h = size
    image = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    data = get_codec("jxl").encode(image, 80)
    assert jxl_declared_size(data) == (w, h)
    assert jxl_declared_size(b"\x89PNG") is None and jxl_declared_size(b"\xff\x0a") is None


def test_jxl_and_heif_bombs_are_refused(tmp_path):
    assert jxl_declared_size(jxl_declaring(HUGE, HUGE)) == (HUGE, HUGE)
    # the same codestream in a container, behind an Exif box larger than the first read
    box = lambda kind, body: struct.pack(">I", 8 + len(body)) + kind + body   # noqa: E731
    container = (b"\x00\x00\x00\x0cJXL \r\n\x87\n" + box(b"ftyp", b"jxl \0\0\0\0jxl ")
                 + box(b"Exif", bytes(10_000)) + box(b"jxlc", jxl_declaring(HUGE, HUGE)))
    assert jxl_declared_size(container) == (HUGE, HUGE)
    (tmp_path / "boxed.jxl").write_bytes(container)
    with pytest.raises(ImageTooLargeError, match=f"{HUGE}x{HUGE}"):
        load_image(tmp_path / "boxed.jxl")
    (tmp_path / "bomb.jxl").write_bytes(jxl_declaring(HUGE, HUGE))
    with pytest.raises(ImageTooLargeError, match=f"{HUGE}x{HUGE}"):
        load_image(tmp_path / "bomb.jxl")
    with pytest.raises(LayerSizeError):
        get_codec("jxl_lossless").decode(jxl_declaring(HUGE, HUGE))
    image, _ = make_image(64, 64)
    heif = bytearray(get_codec("hevc").encode(image, 30))
    at = heif.find(b"ispe")          # the image spatial extents property: version/flags, width, height
    heif[at + 8:at + 16] = struct.pack(">II", HUGE, HUGE)
    (tmp_path / "bomb.heic").write_bytes(bytes(heif))
    with pytest.raises(ImageTooLargeError, match=f"{HUGE}x{HUGE}"):
        load_image(tmp_path / "bomb.heic")


@pytest.fixture()
def fixture_sem():
    from pathlib import Path

    data = (Path(__file__).parent / "fixtures" / "v1" / "dsslic_qp30.sem").read_bytes()
    return data, fmt.unpack(data)


def fixture_models():
    from pathlib import Path

    from semlic.model_files import load_model

    return {"dsslic": load_model(Path(__file__).parent / "fixtures" / "v1" / "dsslic_tiny.safetensors")}


def test_sem_layer_declaring_another_size_is_refused_before_decoding(fixture_sem):
    from semlic.methods import get_method

    data, sem = fixture_sem
    method = get_method(sem.method)
    index = max(range(len(sem.layers)), key=lambda i: len(sem.layers[i].payload))   # the residual (HEVC)
    layers = list(sem.layers)
    # a PNG declaring 100k x 100k in place of the layer; then a real picture of the wrong size
    for payload, codec in ((png_declaring(HUGE, HUGE), "png"),
                           (get_codec("hevc").encode(make_image(sem.height * 2, sem.width)[0], 30), "hevc")):
        layers[index] = fmt.Layer(sem.layers[index].role, get_codec(codec).codec_id, payload)
        bomb = fmt.pack(fmt.SemFile(sem.method, sem.width, sem.height, sem.fingerprint, sem.section, tuple(layers)))
        with pytest.raises(DeclaredSizeError) as caught:
            method.decode(bomb, fixture_models())
        assert isinstance(caught.value, LayerError)   # also what a damaged layer raises


def test_png_layer_bomb_never_allocates(tmp_path):
    import tracemalloc

    tracemalloc.start()
    with pytest.raises(LayerSizeError):
        get_codec("png").decode(png_declaring(HUGE, HUGE), 3, expect=(64, 64))
    with pytest.raises(LayerSizeError):
        get_codec("png").decode(png_declaring(HUGE, HUGE), 3)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 16 << 20   # nothing near the 30 GB the header asks for


def test_sparse_label_layer_of_another_size_is_refused():
    SPARSE_LABELS = get_codec("sparse_labels")
    labels = np.zeros((12, 20), np.uint8)
    labels[3, 4] = 2
    data = SPARSE_LABELS.encode(labels)
    assert np.array_equal(SPARSE_LABELS.decode(data, 1, expect=(12, 20)), labels)
    with pytest.raises(LayerSizeError, match="20x12"):
        SPARSE_LABELS.decode(data, 1, expect=(12, 21))
