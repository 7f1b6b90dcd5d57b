"""A lossless codec for label maps that are almost all zero (EDMS segmentation corrections).

Payload: deflate( varint H, varint W, varint N, then for each of the N non-zero pixels in
raster order: varint gap from the previous one's index, one byte value ). A correction map
with a handful of guarded pixels costs a few bytes, where an image codec's fixed overhead
would cost over a hundred. Decoding bounds every declared size before allocating.
"""

from __future__ import annotations

import zlib

import numpy as np

from .errors import ConfigError, LayerError, LayerSizeError

MAX_SIDE = 16384


def _varint(value: int, out: bytearray) -> None:
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 35:
            raise LayerError("sparse label layer: truncated or malformed varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


class SparseLabelCodec:
    """Same interface as :class:`semlic.image_codecs.ImageCodec` for (H, W) uint8 maps."""

    name = "sparse_labels"
    codec_id = 10
    lossless = True
    pil_format = None
    quality_name = "quality"
    default_sweep = ()

    def encode(self, image: np.ndarray, quality=None, **options) -> bytes:
        if image.ndim != 2 or image.dtype != np.uint8:
            raise ConfigError(f"sparse_labels codes (H, W) uint8 maps, got {image.shape} {image.dtype}")
        flat = image.reshape(-1)
        positions = np.flatnonzero(flat)
        out = bytearray()
        for value in (*image.shape, len(positions)):
            _varint(int(value), out)
        previous = -1
        for index in positions.tolist():
            _varint(index - previous - 1, out)
            out.append(int(flat[index]))
            previous = index
        return zlib.compress(bytes(out), 9)

    def decode(self, data: bytes, channels: int = 1, expect: tuple[int, int] | None = None) -> np.ndarray:
        """The map; its declared (H, W) must be ``expect`` when given (checked before allocating)."""
        if channels != 1:
            raise LayerError("sparse_labels holds one-channel maps")
        try:
            inflater = zlib.decompressobj()
            raw = inflater.decompress(data, 64)  # the three size varints fit in 15 bytes
            h, pos = _read_varint(raw, 0)
            w, pos = _read_varint(raw, pos)
            n, pos = _read_varint(raw, pos)
            if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE) or n > h * w:
                raise LayerError(f"sparse label layer declares {w}x{h} with {n} entries: beyond the limits")
            if expect is not None and (h, w) != tuple(expect):
                raise LayerSizeError(f"sparse label layer declares {w}x{h}, the header implies "
                                     f"{expect[1]}x{expect[0]}: not decoded")
            raw += inflater.decompress(inflater.unconsumed_tail, 6 * n + 16)
            if inflater.unconsumed_tail or not inflater.eof:
                raise LayerError("sparse label layer: more data than its declared entries")
        except zlib.error as exc:
            raise LayerError(f"sparse label layer could not be decoded: {exc}") from exc
        labels = np.zeros(h * w, dtype=np.uint8)
        index = -1
        for _ in range(n):
            gap, pos = _read_varint(raw, pos)
            index += gap + 1
            if index >= h * w or pos >= len(raw):
                raise LayerError("sparse label layer: an entry lies outside the map")
            labels[index] = raw[pos]
            pos += 1
        if pos != len(raw):
            raise LayerError("sparse label layer: trailing bytes")
        return labels.reshape(h, w)
