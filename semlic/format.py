"""The .sem file: one self-contained file per image; bpp is measured on it and nothing else.

Layout (version 1, little-endian)::

    header  (32 bytes)
      magic        4s   b"SMLC"
      version      u8   1
      method       u8   semlic.METHODS id (dsslic 1, edms 2, edms_noenh 3, ...)
      flags        u8   reserved, 0
      n_layers     u8   number of layers that follow (at most MAX_LAYERS)
      width        u16  original width  (1..MAX_SIDE)
      height       u16  original height (1..MAX_SIDE)
      multiple     u8   the model's input multiple m: each side is padded to
                        max(4 m, ceil(side / m) * m) (4 m: the networks' smallest input)
      residual_qp  u8   HEVC QP of the residual layer (255: no residual)
      res_min      i16  residual minimum (integer, -255..255)
      res_max      i16  residual maximum (integer, -255..255)
      fingerprint  8s   first 8 bytes of SHA-256 over the model weights (checkpoint.py)
      header_crc   u32  CRC-32 of the 28 bytes above
    then, per layer (10-byte layer header + payload)
      role         u8   1 segmentation, 2 compact image, 3 residual, 4 segmentation
                        correction (EDMS: the encoder's class at pixels near a decision tie)
      codec        u8   codecs.CODECS id (png 1, webp_lossless 2, jxl_lossless 3, hevc 4, ...,
                        sparse_labels 10)
      length       u32  payload bytes (at most MAX_LAYER_BYTES and what remains in the file)
      crc          u32  CRC-32 of role, codec, length (6 bytes) and the payload
      payload      length bytes

Nothing else: every byte above counts in bpp. Parsing checks, in this order, the magic, the
version, the header checksum, the declared sizes (before any allocation), then each layer's
length against the bytes present and its checksum; each failure has its own exception.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

from . import METHODS
from .codecs import CODECS_BY_ID
from .errors import (BadMagicError, ChecksumError, DeclaredSizeError, TruncatedFileError, UnknownCodecError,
                     TrailingBytesError, UnknownMethodError, UnsupportedVersionError)

MAGIC = b"SMLC"
VERSION = 1
MAX_SIDE = 16384            # x265 / libheif picture limit; also bounds memory
MAX_LAYERS = 8
MAX_LAYER_BYTES = 1 << 28  # 256 MiB
NO_RESIDUAL = 255

ROLE_SEGMENTATION, ROLE_COMPACT, ROLE_RESIDUAL, ROLE_CORRECTION = 1, 2, 3, 4
ROLE_NAMES = {ROLE_SEGMENTATION: "segmentation", ROLE_COMPACT: "compact", ROLE_RESIDUAL: "residual",
              ROLE_CORRECTION: "correction"}

_HEADER = struct.Struct("<4sBBBBHHBBhh8s")   # 28 bytes, then the CRC
_LAYER = struct.Struct("<BBII")               # 10 bytes
HEADER_BYTES = _HEADER.size + 4
LAYER_HEADER_BYTES = _LAYER.size
METHOD_NAMES = {v: k for k, v in METHODS.items()}


@dataclass(frozen=True)
class Layer:
    role: int
    codec: int
    payload: bytes

    @property
    def role_name(self) -> str:
        return ROLE_NAMES.get(self.role, f"role{self.role}")

    @property
    def codec_name(self) -> str:
        return CODECS_BY_ID[self.codec].name

    @property
    def bits(self) -> int:
        """Bits this layer occupies in the file, its 10-byte layer header included."""
        return 8 * (LAYER_HEADER_BYTES + len(self.payload))


@dataclass(frozen=True)
class SemFile:
    method: str
    width: int
    height: int
    multiple: int
    fingerprint: bytes
    residual_qp: int | None = None
    res_min: int = 0
    res_max: int = 0
    layers: tuple[Layer, ...] = field(default_factory=tuple)

    def layer(self, role: int) -> Layer | None:
        return next((lay for lay in self.layers if lay.role == role), None)

    @property
    def padded_size(self) -> tuple[int, int]:
        return padded_side(self.height, self.multiple), padded_side(self.width, self.multiple)


def padded_side(side: int, multiple: int) -> int:
    """The network input side for an image side: a multiple of ``multiple``, at least 4x it."""
    return max(4 * multiple, -(-side // multiple) * multiple)


def _check_sizes(width: int, height: int, multiple: int, n_layers: int) -> None:
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
        raise DeclaredSizeError(f"declared image size {width}x{height} is outside 1..{MAX_SIDE} per side")
    if multiple < 1 or multiple & (multiple - 1) or multiple > 64:
        raise DeclaredSizeError(f"declared size multiple {multiple} is not a power of two in 1..64")
    if n_layers > MAX_LAYERS:
        raise DeclaredSizeError(f"declared {n_layers} layers, at most {MAX_LAYERS} allowed")


def pack(sem: SemFile) -> bytes:
    """Serialise a :class:`SemFile` (validating what a reader would refuse)."""
    if sem.method not in METHODS:
        raise UnknownMethodError(f"unknown method {sem.method!r}")
    _check_sizes(sem.width, sem.height, sem.multiple, len(sem.layers))
    if len(sem.fingerprint) != 8:
        raise ValueError("fingerprint must be 8 bytes")
    qp = NO_RESIDUAL if sem.residual_qp is None else int(sem.residual_qp)
    head = _HEADER.pack(MAGIC, VERSION, METHODS[sem.method], 0, len(sem.layers), sem.width, sem.height,
                        sem.multiple, qp, sem.res_min, sem.res_max, sem.fingerprint)
    parts = [head, struct.pack("<I", zlib.crc32(head))]
    for lay in sem.layers:
        if len(lay.payload) > MAX_LAYER_BYTES:
            raise DeclaredSizeError(f"layer of {len(lay.payload)} bytes exceeds {MAX_LAYER_BYTES}")
        crc = zlib.crc32(lay.payload, zlib.crc32(struct.pack("<BBI", lay.role, lay.codec, len(lay.payload))))
        parts.append(_LAYER.pack(lay.role, lay.codec, len(lay.payload), crc))
        parts.append(lay.payload)
    return b"".join(parts)


def unpack(data: bytes) -> SemFile:
    """Parse and verify a .sem file (see the module docstring for the order of checks)."""
    view = memoryview(data)
    if len(view) < len(MAGIC) or bytes(view[:4]) != MAGIC:
        if len(view) < len(MAGIC) and MAGIC.startswith(bytes(view)):
            raise TruncatedFileError(f"file is {len(view)} bytes: shorter than the {len(MAGIC)}-byte magic")
        raise BadMagicError(f"not a semlic file: expected magic {MAGIC!r}, found {bytes(view[:4])!r}")
    if len(view) < 5:
        raise TruncatedFileError("file ends before the format version")
    if view[4] != VERSION:
        raise UnsupportedVersionError(f"format version {view[4]} is not supported (this build reads version {VERSION})")
    if len(view) < HEADER_BYTES:
        raise TruncatedFileError(f"file is {len(view)} bytes: shorter than the {HEADER_BYTES}-byte header")
    head = bytes(view[: _HEADER.size])
    (crc,) = struct.unpack_from("<I", view, _HEADER.size)
    if zlib.crc32(head) != crc:
        raise ChecksumError("header checksum mismatch: the file is corrupted")
    _, _, method_id, _flags, n_layers, width, height, multiple, qp, res_min, res_max, fp = _HEADER.unpack(head)
    if method_id not in METHOD_NAMES:
        raise UnknownMethodError(f"method id {method_id} is unknown to this build")
    _check_sizes(width, height, multiple, n_layers)
    offset, layers = HEADER_BYTES, []
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
            raise ChecksumError(f"layer {i + 1} ({ROLE_NAMES.get(role, role)}) checksum mismatch: the file is corrupted")
        if codec not in CODECS_BY_ID:
            raise UnknownCodecError(f"layer {i + 1} uses codec id {codec}, unknown to this build")
        layers.append(Layer(role, codec, payload))
    if offset != len(view):
        raise TrailingBytesError(f"{len(view) - offset} unexpected bytes after the last layer")
    return SemFile(METHOD_NAMES[method_id], width, height, multiple, fp,
                   None if qp == NO_RESIDUAL else qp, res_min, res_max, tuple(layers))
