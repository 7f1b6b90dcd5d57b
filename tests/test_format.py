"""The .sem container: round trip and one distinct error per kind of damage."""

from __future__ import annotations

import struct
import tracemalloc
import zlib

import pytest

from semlic import errors
from semlic import format as fmt


def _sample() -> bytes:
    layers = (fmt.Layer(fmt.ROLE_SEGMENTATION, 3, b"seg" * 10), fmt.Layer(fmt.ROLE_COMPACT, 1, b"compact" * 20),
              fmt.Layer(fmt.ROLE_RESIDUAL, 4, b"residual" * 30))
    return fmt.pack(fmt.SemFile("dsslic", 769, 513, 8, bytes(range(8)), 27, -40, 61, layers))


def _with_header(data: bytes, **changes) -> bytes:
    """Rewrite header fields and recompute the header CRC (a well-formed but altered file)."""
    fields = list(fmt._HEADER.unpack(data[: fmt._HEADER.size]))
    names = ["magic", "version", "method", "flags", "n_layers", "width", "height", "multiple", "qp", "res_min",
             "res_max", "fingerprint"]
    for k, v in changes.items():
        fields[names.index(k)] = v
    head = fmt._HEADER.pack(*fields)
    return head + struct.pack("<I", zlib.crc32(head)) + data[fmt.HEADER_BYTES:]


def test_round_trip_keeps_every_field():
    sem = fmt.unpack(_sample())
    assert (sem.method, sem.width, sem.height, sem.multiple) == ("dsslic", 769, 513, 8)
    assert (sem.residual_qp, sem.res_min, sem.res_max, sem.fingerprint) == (27, -40, 61, bytes(range(8)))
    assert [lay.payload for lay in sem.layers] == [b"seg" * 10, b"compact" * 20, b"residual" * 30]
    assert sem.padded_size == (520, 776)


def test_sizes_add_up_to_the_file():
    data = _sample()
    sem = fmt.unpack(data)
    assert fmt.HEADER_BYTES * 8 + sum(lay.bits for lay in sem.layers) == 8 * len(data)


def test_no_residual_is_recorded():
    data = fmt.pack(fmt.SemFile("edms", 3, 2, 8, b"\0" * 8, None, 0, 0, ()))
    assert fmt.unpack(data).residual_qp is None
    assert len(data) == fmt.HEADER_BYTES


@pytest.mark.parametrize("cut", [0, 3, 4, 20, fmt.HEADER_BYTES, fmt.HEADER_BYTES + 5, fmt.HEADER_BYTES + 15, -1])
def test_truncated(cut):
    data = _sample()
    with pytest.raises(errors.TruncatedFileError):
        fmt.unpack(data[:cut] if cut >= 0 else data[:-1])


def test_flipped_byte_anywhere_is_detected():
    data = bytearray(_sample())
    for pos in range(4, len(data)):  # after the magic: every position
        damaged = bytearray(data)
        damaged[pos] ^= 0x10
        with pytest.raises(errors.FormatError) as info:
            fmt.unpack(bytes(damaged))
        assert isinstance(info.value, (errors.ChecksumError, errors.UnsupportedVersionError,
                                       errors.TruncatedFileError, errors.DeclaredSizeError)), pos
    damaged = bytearray(data)
    damaged[fmt.HEADER_BYTES + fmt.LAYER_HEADER_BYTES + 2] ^= 1  # inside the first payload
    with pytest.raises(errors.ChecksumError, match="layer 1"):
        fmt.unpack(bytes(damaged))
    damaged = bytearray(data)
    damaged[10] ^= 1  # inside the header (width)
    with pytest.raises(errors.ChecksumError, match="header"):
        fmt.unpack(bytes(damaged))


def test_unknown_version():
    data = bytearray(_sample())
    data[4] = 99
    with pytest.raises(errors.UnsupportedVersionError, match="version 99"):
        fmt.unpack(bytes(data))


def test_bad_magic():
    with pytest.raises(errors.BadMagicError):
        fmt.unpack(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)


@pytest.mark.parametrize("changes", [dict(width=60000), dict(height=0), dict(multiple=3), dict(n_layers=200)])
def test_absurd_declared_size_is_refused_before_allocating(changes):
    data = _with_header(_sample(), **changes)
    tracemalloc.start()
    with pytest.raises(errors.DeclaredSizeError):
        fmt.unpack(data)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 64 * 1024


def test_absurd_layer_length_is_refused_without_reading():
    data = bytearray(_sample())
    struct.pack_into("<I", data, fmt.HEADER_BYTES + 2, 0xFFFFFFF0)
    tracemalloc.start()
    with pytest.raises(errors.DeclaredSizeError):
        fmt.unpack(bytes(data))
    assert tracemalloc.get_traced_memory()[1] < 64 * 1024 + len(data)
    tracemalloc.stop()


def test_trailing_bytes():
    with pytest.raises(errors.TrailingBytesError):
        fmt.unpack(_sample() + b"x")


def test_unknown_method_and_codec():
    with pytest.raises(errors.UnknownMethodError):
        fmt.unpack(_with_header(_sample(), method=250))
    layers = (fmt.Layer(fmt.ROLE_COMPACT, 200, b"x"),)
    data = fmt.pack(fmt.SemFile("dsslic", 8, 8, 8, b"\0" * 8, None, 0, 0, layers))
    with pytest.raises(errors.UnknownCodecError):
        fmt.unpack(data)
