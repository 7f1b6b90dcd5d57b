"""The .sem file: one self-contained file per image; bpp is measured on it and nothing else.

Layout (version 2, little-endian)::

    header  (21 bytes + the method section + 4)
      magic        4s   b"SMLC"
      version      u8   2
      method       u8   the method's format id (semlic.methods registry: dsslic 1, edms 2, ...)
      flags        u8   reserved, 0
      n_layers     u8   number of layers that follow (at most MAX_LAYERS)
      width        u16  original width  (1..MAX_SIDE)
      height       u16  original height (1..MAX_SIDE)
      fingerprint  8s   first 8 bytes of SHA-256 naming the model weights the decoder needs
      section_len  u8   bytes of the method section (at most MAX_SECTION = 255; more side
                        information belongs in a layer)
      section      the method's own parameters (DSSLIC: input multiple, residual QP and
                   min/max), which only the method reads
      header_crc   u32  CRC-32 of everything above
    then, per layer (10-byte layer header + payload)
      role         u8   what the layer is, in the method's terms (the method names its roles)
      codec        u8   semlic.image_codecs id (png 1, ..., hevc 4, ..., sparse_labels 10), or
                        0 (RAW): bytes only the method parses (a learned entropy coder's
                        strings and shapes)
      length       u32  payload bytes (at most MAX_LAYER_BYTES and what remains in the file)
      crc          u32  CRC-32 of role, codec, length (6 bytes) and the payload
      payload      length bytes

Nothing else: every byte above counts in bpp. Parsing checks, in this order, the magic, the
version, the header checksum, the declared sizes (before any allocation), then each layer's
length against the bytes present and its checksum; each failure has its own exception.

Version 1 (semlic before the method interface) had a fixed 30-byte header: magic, version 1,
method, flags, n_layers, width, height, then the DSSLIC fields (multiple u8, residual_qp u8,
res_min i16, res_max i16), the fingerprint and the CRC; the layers were as above. It is still
read: its DSSLIC fields become the method section, which is exactly what DSSLIC and EDMS write
in version 2, so a version-1 file decodes through the same code. A version-2 DSSLIC or EDMS
file is one byte longer than its version-1 equivalent (the section length).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

from .errors import (BadMagicError, ChecksumError, DeclaredSizeError, TrailingBytesError, TruncatedFileError,
                     UnknownCodecError, UnsupportedVersionError)
from .image_codecs import CODECS_BY_ID

MAGIC = b"SMLC"
VERSION = 2
READABLE_VERSIONS = (1, 2)
MAX_SIDE = 16384            # x265 / libheif picture limit; also bounds memory
MAX_LAYERS = 8
MAX_LAYER_BYTES = 1 << 28   # 256 MiB
MAX_SECTION = 255
RAW = 0                     # layer codec id: bytes the method parses itself

_HEADER = struct.Struct("<4sBBBBHH8sB")       # 21 bytes, then the section, then the CRC
_HEADER_V1 = struct.Struct("<4sBBBBHHBBhh8s")  # 26 bytes, then the CRC
_V1_SECTION = struct.Struct("<BBhh")           # version 1's DSSLIC fields, as a section
_LAYER = struct.Struct("<BBII")                # 10 bytes
LAYER_HEADER_BYTES = _LAYER.size


@dataclass(frozen=True)
class Layer:
    role: int
    codec: int
    payload: bytes

    @property
    def codec_name(self) -> str:
        return "raw" if self.codec == RAW else CODECS_BY_ID[self.codec].name

    @property
    def bits(self) -> int:
        """Bits this layer occupies in the file, its 10-byte layer header included."""
        return 8 * (LAYER_HEADER_BYTES + len(self.payload))


@dataclass(frozen=True)
class SemFile:
    method: str                 # registered method name
    width: int
    height: int
    fingerprint: bytes
    section: bytes = b""        # the method's own header fields
    layers: tuple[Layer, ...] = field(default_factory=tuple)
    version: int = VERSION

    def layer(self, role: int) -> Layer | None:
        return next((lay for lay in self.layers if lay.role == role), None)

    @property
    def header_bytes(self) -> int:
        """Bytes of the file header (CRC included): every byte that is not a layer."""
        return _HEADER_V1.size + 4 if self.version == 1 else _HEADER.size + len(self.section) + 4


def header_bytes(section_len: int) -> int:
    """Bytes of a version-2 header whose method section has ``section_len`` bytes."""
    return _HEADER.size + section_len + 4


def _check_sizes(width: int, height: int, n_layers: int) -> None:
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
        raise DeclaredSizeError(f"declared image size {width}x{height} is outside 1..{MAX_SIDE} per side")
    if n_layers > MAX_LAYERS:
        raise DeclaredSizeError(f"declared {n_layers} layers, at most {MAX_LAYERS} allowed")


def _method_name(format_id: int) -> str:
    from .registry import method_by_format_id

    return method_by_format_id(format_id).name


def _format_id(name: str) -> int:
    from .registry import get_method

    return get_method(name).format_id


def pack(sem: SemFile) -> bytes:
    """Serialise a :class:`SemFile` as version 2 (validating what a reader would refuse)."""
    method_id = _format_id(sem.method)
    _check_sizes(sem.width, sem.height, len(sem.layers))
    if len(sem.fingerprint) != 8:
        raise ValueError("fingerprint must be 8 bytes")
    if len(sem.section) > MAX_SECTION:
        raise DeclaredSizeError(f"method section of {len(sem.section)} bytes exceeds {MAX_SECTION}")
    head = _HEADER.pack(MAGIC, VERSION, method_id, 0, len(sem.layers), sem.width, sem.height, sem.fingerprint,
                        len(sem.section)) + sem.section
    parts = [head, struct.pack("<I", zlib.crc32(head))]
    for lay in sem.layers:
        if len(lay.payload) > MAX_LAYER_BYTES:
            raise DeclaredSizeError(f"layer of {len(lay.payload)} bytes exceeds {MAX_LAYER_BYTES}")
        if lay.codec != RAW and lay.codec not in CODECS_BY_ID:
            raise UnknownCodecError(f"layer codec id {lay.codec} is unknown")
        crc = zlib.crc32(lay.payload, zlib.crc32(struct.pack("<BBI", lay.role, lay.codec, len(lay.payload))))
        parts.append(_LAYER.pack(lay.role, lay.codec, len(lay.payload), crc))
        parts.append(lay.payload)
    return b"".join(parts)


def _unpack_header(view: memoryview) -> tuple[int, int, int, int, bytes, bytes, int]:
    """(version, method id, width, height, fingerprint, section, header bytes) after the checks."""
    version = view[4]
    if version == 1:
        size = _HEADER_V1.size
        if len(view) < size + 4:
            raise TruncatedFileError(f"file is {len(view)} bytes: shorter than the {size + 4}-byte header")
        head = bytes(view[:size])
        (crc,) = struct.unpack_from("<I", view, size)
        if zlib.crc32(head) != crc:
            raise ChecksumError("header checksum mismatch: the file is corrupted")
        _, _, method_id, _flags, n_layers, width, height, multiple, qp, res_min, res_max, fp = _HEADER_V1.unpack(head)
        return version, method_id, n_layers, width, height, fp, _V1_SECTION.pack(multiple, qp, res_min, res_max), size + 4
    if len(view) < _HEADER.size:
        raise TruncatedFileError(f"file is {len(view)} bytes: shorter than the {_HEADER.size + 4}-byte fixed header")
    _, _, method_id, _flags, n_layers, width, height, fp, section_len = _HEADER.unpack_from(view)
    if section_len > MAX_SECTION:
        raise DeclaredSizeError(f"declared a method section of {section_len} bytes, more than {MAX_SECTION}")
    size = _HEADER.size + section_len
    if len(view) < size + 4:
        raise TruncatedFileError(f"file is {len(view)} bytes: shorter than its {size + 4}-byte header")
    (crc,) = struct.unpack_from("<I", view, size)
    if zlib.crc32(view[:size]) != crc:
        raise ChecksumError("header checksum mismatch: the file is corrupted")
    return version, method_id, n_layers, width, height, fp, bytes(view[_HEADER.size: size]), size + 4


def unpack(data: bytes) -> SemFile:
    """Parse and verify a .sem file of version 1 or 2 (module docstring: the order of checks)."""
    view = memoryview(data)
    if len(view) < len(MAGIC) or bytes(view[:4]) != MAGIC:
        if len(view) < len(MAGIC) and MAGIC.startswith(bytes(view)):
            raise TruncatedFileError(f"file is {len(view)} bytes: shorter than the {len(MAGIC)}-byte magic")
        raise BadMagicError(f"not a semlic file: expected magic {MAGIC!r}, found {bytes(view[:4])!r}")
    if len(view) < 5:
        raise TruncatedFileError("file ends before the format version")
    if view[4] not in READABLE_VERSIONS:
        raise UnsupportedVersionError(f"format version {view[4]} is not supported (this build reads versions "
                                      f"{', '.join(map(str, READABLE_VERSIONS))})")
    version, method_id, n_layers, width, height, fp, section, offset = _unpack_header(view)
    method = _method_name(method_id)
    _check_sizes(width, height, n_layers)
    layers = []
    for i in range(n_layers):
        if len(view) - offset < LAYER_HEADER_BYTES:
            raise TruncatedFileError(f"file ends inside the header of layer {i + 1} of {n_layers}")
        role, codec, length, lcrc = _LAYER.unpack_from(view, offset)
        offset += LAYER_HEADER_BYTES
        if length > MAX_LAYER_BYTES:
            raise DeclaredSizeError(f"layer {i + 1} declares {length} bytes, more than the limit {MAX_LAYER_BYTES}")
        if length > len(view) - offset:
            raise TruncatedFileError(f"layer {i + 1} declares {length} bytes but only {len(view) - offset} remain")
        payload = bytes(view[offset: offset + length])
        offset += length
        if zlib.crc32(payload, zlib.crc32(struct.pack("<BBI", role, codec, length))) != lcrc:
            raise ChecksumError(f"layer {i + 1} (role {role}) checksum mismatch: the file is corrupted")
        if codec != RAW and codec not in CODECS_BY_ID:
            raise UnknownCodecError(f"layer {i + 1} uses codec id {codec}, unknown to this build")
        layers.append(Layer(role, codec, payload))
    if offset != len(view):
        raise TrailingBytesError(f"{len(view) - offset} unexpected bytes after the last layer")
    return SemFile(method, width, height, fp, section, tuple(layers), version)
