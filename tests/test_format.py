"""The .sem container: round trip and one distinct error per kind of damage."""

from __future__ import annotations

import struct
import tracemalloc
import zlib

import pytest

from semlic import errors
from semlic import format as fmt
from semlic.layers import padded_side
from semlic.layered_codec import ROLE_COMPACT, ROLE_RESIDUAL, ROLE_SEGMENTATION, Section

SECTION = Section(8, 27, -40, 61)


def _sample() -> bytes:
    layers = (fmt.Layer(ROLE_SEGMENTATION, 3, b"seg" * 10), fmt.Layer(ROLE_COMPACT, 1, b"compact" * 20),
              fmt.Layer(ROLE_RESIDUAL, 4, b"residual" * 30))
    return fmt.pack(fmt.SemFile("dsslic", 769, 513, bytes(range(8)), SECTION.pack(), layers))


HEADER_BYTES = fmt.header_bytes(len(SECTION.pack()))


def _with_header(data: bytes, **changes) -> bytes:
    """Rewrite fixed header fields and recompute the header CRC (a well-formed but altered file)."""
    fields = list(fmt._HEADER.unpack(data[: fmt._HEADER.size]))
    names = ["magic", "version", "method", "flags", "n_layers", "width", "height", "fingerprint", "section_len"]
    for k, v in changes.items():
        fields[names.index(k)] = v
    head = fmt._HEADER.pack(*fields) + data[fmt._HEADER.size: HEADER_BYTES - 4]
    return head + struct.pack("<I", zlib.crc32(head)) + data[HEADER_BYTES:]


def test_round_trip_keeps_every_field():
    sem = fmt.unpack(_sample())
    assert (sem.method, sem.width, sem.height, sem.version) == ("dsslic", 769, 513, 2)
    section = Section.unpack(sem.section)
    assert (section.multiple, section.residual_qp, section.res_min, section.res_max) == (8, 27, -40, 61)
    assert sem.fingerprint == bytes(range(8))
    assert [lay.payload for lay in sem.layers] == [b"seg" * 10, b"compact" * 20, b"residual" * 30]
    assert (padded_side(sem.height, section.multiple), padded_side(sem.width, section.multiple)) == (520, 776)


def test_sizes_add_up_to_the_file():
    data = _sample()
    sem = fmt.unpack(data)
    assert sem.header_bytes == HEADER_BYTES == 31
    assert sem.header_bytes * 8 + sum(lay.bits for lay in sem.layers) == 8 * len(data)


def test_no_residual_is_recorded():
    data = fmt.pack(fmt.SemFile("edms", 3, 2, b"\0" * 8, Section(8).pack(), ()))
    assert Section.unpack(fmt.unpack(data).section).residual_qp is None
    assert len(data) == HEADER_BYTES


def test_a_method_defined_raw_layer_round_trips():
    layers = (fmt.Layer(7, fmt.RAW, b"\x00strings and shapes\xff"),)
    sem = fmt.unpack(fmt.pack(fmt.SemFile("dsslic", 5, 4, b"\1" * 8, b"", layers)))
    assert sem.layers[0].codec_name == "raw" and sem.layers[0].payload == layers[0].payload and sem.section == b""


def test_version_1_header_reads_as_the_dsslic_section():
    head = fmt._HEADER_V1.pack(fmt.MAGIC, 1, 2, 0, 1, 61, 37, 8, 30, -12, 200, b"f" * 8)
    payload = b"compact"
    layer = struct.pack("<BBI", ROLE_COMPACT, 1, len(payload))
    data = (head + struct.pack("<I", zlib.crc32(head)) + layer
            + struct.pack("<I", zlib.crc32(payload, zlib.crc32(layer))) + payload)
    sem = fmt.unpack(data)
    assert (sem.version, sem.method, sem.width, sem.height, sem.header_bytes) == (1, "edms", 61, 37, 30)
    assert Section.unpack(sem.section) == Section(8, 30, -12, 200)
    assert sem.layers == (fmt.Layer(ROLE_COMPACT, 1, payload),)


@pytest.mark.parametrize("cut", [0, 3, 4, 20, HEADER_BYTES, HEADER_BYTES + 5, HEADER_BYTES + 15, -1])
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
    damaged[HEADER_BYTES + fmt.LAYER_HEADER_BYTES + 2] ^= 1  # inside the first payload
    with pytest.raises(errors.ChecksumError, match="layer 1"):
        fmt.unpack(bytes(damaged))
    damaged = bytearray(data)
    damaged[10] ^= 1  # inside the header (width)
    with pytest.raises(errors.ChecksumError, match="header"):
        fmt.unpack(bytes(damaged))
    damaged = bytearray(data)
    damaged[fmt._HEADER.size + 1] ^= 1  # inside the method section
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


@pytest.mark.parametrize("changes", [dict(width=60000), dict(height=0), dict(n_layers=200)])
def test_absurd_declared_size_is_refused_before_allocating(changes):
    data = _with_header(_sample(), **changes)
    tracemalloc.start()
    with pytest.raises(errors.DeclaredSizeError):
        fmt.unpack(data)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 64 * 1024


def test_absurd_method_section_values_are_refused():
    with pytest.raises(errors.DeclaredSizeError, match="multiple 3"):
        Section.unpack(Section(3).pack())
    with pytest.raises(errors.LayerError, match="residual range"):
        Section.unpack(struct.pack("<BBhh", 8, 27, 300, -300))
    with pytest.raises(errors.LayerError, match="6"):
        Section.unpack(b"\x08")


def test_absurd_layer_length_is_refused_without_reading():
    data = bytearray(_sample())
    struct.pack_into("<I", data, HEADER_BYTES + 2, 0xFFFFFFF0)
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
    with pytest.raises(errors.UnknownCodecError):
        fmt.pack(fmt.SemFile("dsslic", 8, 8, b"\0" * 8, b"", (fmt.Layer(ROLE_COMPACT, 200, b"x"),)))
    data = bytearray(fmt.pack(fmt.SemFile("dsslic", 8, 8, b"\0" * 8, b"", (fmt.Layer(ROLE_COMPACT, 1, b"x"),))))
    start = fmt.header_bytes(0)
    data[start + 1] = 200  # the layer's codec byte, with its CRC made to match
    struct.pack_into("<I", data, start + 6, zlib.crc32(b"x", zlib.crc32(bytes(data[start:start + 6]))))
    with pytest.raises(errors.UnknownCodecError):
        fmt.unpack(bytes(data))
