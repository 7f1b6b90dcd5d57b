"""Still-image codecs behind one interface: bytes in, 8-bit arrays out.

Each codec has a stable numeric id (stored in .sem layer headers) and a name (used in
Parquet rows and on the command line). All of them go through Pillow and its plugins:

========================  ===  ========  ==================================================
name                       id  lossless  backend, quality knob
========================  ===  ========  ==================================================
png                         1  yes       Pillow zlib, ``optimize=True``
webp_lossless               2  yes       Pillow libwebp, ``lossless=True, method=6``
jxl_lossless                3  yes       pillow-jxl-plugin (libjxl), ``lossless=True``
hevc                        4  no        pillow-heif: libheif + x265 intra, ``qp`` 0..51
jpeg                        5  no        Pillow libjpeg, ``quality`` 1..95 (4:2:0)
jpeg2000                    6  no        Pillow OpenJPEG, 9/7 wavelet, ``quality`` = ratio
webp                        7  no        Pillow libwebp, ``quality`` 0..100
avif                        8  no        Pillow libavif (aom), ``quality`` 0..100
jxl                         9  no        pillow-jxl-plugin, ``quality`` 0..100
hevc10                     11  no        pillow-heif: x265 main10 (4:4:4 RExt), ``qp`` 0..51, 10-bit
                                         samples (uint16 arrays 0..1023) in and out
========================  ===  ========  ==================================================

(id 10 is :mod:`semlic.sparse`'s label-map codec.) ``hevc10`` codes 10-bit samples, e.g. a residual
x - x' offset by 512 with no rescaling (the layered methods' ``residual_depth: 10``); given uint8
it codes them shifted left by 2 bits.

HEVC is the BPG equivalent: x265 at a fixed QP with psycho-visual RD off (``psy-rd 0``),
full-range BT.601 YCbCr, chroma 4:4:4 or 4:2:0. BPG's own container is a few bytes; the
HEIF container libheif writes adds about 300-400 bytes (ftyp + meta boxes). semlic keeps
the HEIF file as it is and *counts* those bytes (see reports/calibration.md for the
measured size and its effect on BD-PSNR against CompressAI's BPG curve).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from PIL import Image

from .errors import CodecUnavailableError, ConfigError, DeclaredSizeError, LayerError, LayerSizeError

Image.MAX_IMAGE_PIXELS = None  # sizes are checked by semlic itself, before decoding (check_declared_size)
MAX_DECODE_PIXELS = 16384 * 16384   # a layer never holds more (format.MAX_SIDE per side)

_JXL_CODESTREAM = b"\xff\x0a"
JXL_CONTAINER = b"\x00\x00\x00\x0cJXL \r\n\x87\n"
_JXL_RATIOS = {1: (1, 1), 2: (12, 10), 3: (4, 3), 4: (3, 2), 5: (16, 9), 6: (5, 4), 7: (2, 1)}


class _Bits:
    """JPEG XL's bit reader: least significant bit first."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def u(self, n: int) -> int:
        value = 0
        for i in range(n):
            byte = self.pos >> 3
            if byte >= len(self.data):
                raise EOFError
            value |= ((self.data[byte] >> (self.pos & 7)) & 1) << i
            self.pos += 1
        return value

    def u32(self, *bits: int) -> int:   # U32(Bits(b0), Bits(b1), ...) of the spec, all with offset 0
        return self.u(bits[self.u(2)])


def _jxl_codestream(data: bytes) -> bytes | None:
    """The start of the codestream of a bare JPEG XL stream or of its ISOBMFF container."""
    if data.startswith(_JXL_CODESTREAM):
        return data
    if not data.startswith(JXL_CONTAINER):
        return None
    pos = 0
    while pos + 8 <= len(data):
        size, kind = int.from_bytes(data[pos:pos + 4], "big"), data[pos + 4:pos + 8]
        header = 8
        if size == 1 and pos + 16 <= len(data):
            size, header = int.from_bytes(data[pos + 8:pos + 16], "big"), 16
        if kind == b"jxlc":
            return data[pos + header:]
        if kind == b"jxlp":
            return data[pos + header + 4:]   # a partial codestream box starts with a 4-byte index
        if size < header:
            return None   # a box running to the end of the file, or a broken size
        pos += size
    return None


def jxl_declared_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG XL stream's SizeHeader (ISO/IEC 18181-1), read without decoding;
    None if ``data`` is not JPEG XL or too short to say."""
    stream = _jxl_codestream(data)
    if stream is None or not stream.startswith(_JXL_CODESTREAM):
        return None
    bits = _Bits(stream[2:2 + 16])
    try:
        small = bits.u(1)
        height = (bits.u(5) + 1) * 8 if small else bits.u32(9, 13, 18, 30) + 1
        ratio = bits.u(3)
        if ratio:
            num, den = _JXL_RATIOS[ratio]
            width = height * num // den
        else:
            width = (bits.u(5) + 1) * 8 if small else bits.u32(9, 13, 18, 30) + 1
    except EOFError:
        return None
    return width, height


def check_declared_size(width: int, height: int, what: str, *, max_pixels: int | None = MAX_DECODE_PIXELS,
                        expect: tuple[int, int] | None = None, error=DeclaredSizeError, hint: str = "") -> None:
    """Refuse, before decoding, a picture of more than ``max_pixels`` or not of the expected (H, W)."""
    if expect is not None and (height, width) != tuple(expect):
        raise error(f"{what} declares {width}x{height}, the header implies {expect[1]}x{expect[0]}: not decoded")
    if max_pixels is not None and width * height > max_pixels:
        raise error(f"{what} declares {width}x{height} = {width * height} pixels, above the limit of "
                    f"{max_pixels}: not decoded{hint}")


def _plugins() -> None:
    """Register the HEIF and JPEG XL plugins with Pillow (idempotent)."""
    try:
        import pillow_heif

        pillow_heif.register_heif_opener()
    except ImportError:  # pragma: no cover - checked by CodecUnavailableError at use
        pass
    try:
        import pillow_jxl  # noqa: F401  (registers itself on import)
    except ImportError:  # pragma: no cover
        pass


_plugins()


def _to_pil(image: np.ndarray) -> Image.Image:
    if image.dtype != np.uint8:
        raise ConfigError(f"codecs take uint8 arrays, got {image.dtype}")
    if image.ndim == 2:
        return Image.fromarray(image, "L")
    if image.ndim == 3 and image.shape[2] == 3:
        return Image.fromarray(image, "RGB")
    raise ConfigError(f"codecs take HxW or HxWx3 arrays, got shape {image.shape}")


def _from_pil(im: Image.Image, channels: int) -> np.ndarray:
    mode = "L" if channels == 1 else "RGB"
    if im.mode != mode:
        im = im.convert(mode)
    return np.asarray(im, dtype=np.uint8).copy()


def _save(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


@dataclass(frozen=True)
class ImageCodec:
    """One codec: ``encode(array, quality) -> bytes`` and ``decode(bytes, channels)``."""

    name: str
    codec_id: int
    lossless: bool
    pil_format: str
    _encode: Callable[[Image.Image, object, dict], bytes] = field(repr=False)
    quality_name: str = "quality"
    default_sweep: tuple = ()
    higher_is_better: bool = True  # does a larger quality value mean more bits?
    # As a baseline of the study (semlic.baselines, the reports): one declaration per codec
    extension: str = ""            # of its coded files
    quality_range: tuple | None = None   # (lowest, highest, lowest excluded) of the accepted knob values
    default_options: tuple = ()    # (option, value) pairs its baseline rows are coded with
    label: str = ""                # in reports
    colour: str | None = None      # in figures

    def encode(self, image: np.ndarray, quality=None, **options) -> bytes:
        """Code an HxW (grey) or HxWx3 (RGB) uint8 array."""
        _check_available(self)
        im = _to_pil(image)
        if not self.lossless and quality is None:
            raise ConfigError(f"codec {self.name} needs a {self.quality_name}")
        return self._encode(im, quality, options)

    def decode(self, data: bytes, channels: int = 3, expect: tuple[int, int] | None = None) -> np.ndarray:
        """Decode bytes made by :meth:`encode` into an HxW (channels=1) or HxWx3 array.

        The size the bytes declare is checked before anything is decoded: at most
        :data:`MAX_DECODE_PIXELS`, and (H, W) = ``expect`` when given (:class:`DeclaredSizeError`).
        """
        _check_available(self)
        what = f"{self.name} layer"
        declared = jxl_declared_size(data) if self.pil_format == "JXL" else None
        if declared is not None:   # the JPEG XL plugin decodes the whole picture when it opens it
            check_declared_size(*declared, what, expect=expect, error=LayerSizeError)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Image.open(io.BytesIO(data), formats=[self.pil_format]) as im:
                    check_declared_size(*im.size, what, expect=expect, error=LayerSizeError)
                    im.load()
                    return _from_pil(im, channels)
        except DeclaredSizeError:
            raise
        except Exception as exc:  # Pillow raises many types for bad data
            raise LayerError(f"{what} could not be decoded: {exc}") from exc


# --- encoders --------------------------------------------------------------------------------
def _png(im, quality, opts):
    return _save(im, "PNG", optimize=True)


def _webp_lossless(im, quality, opts):
    return _save(im, "WEBP", lossless=True, quality=100, method=opts.get("method", 6), exact=True)


def _jxl_lossless(im, quality, opts):
    return _save(im, "JXL", lossless=True, effort=opts.get("effort", 7), num_threads=1)


def _hevc(im, qp, opts):
    import pillow_heif

    qp = int(qp)
    if not 0 <= qp <= 51:
        raise ConfigError(f"HEVC QP must be in 0..51, got {qp}")
    chroma = str(opts.get("chroma", "444"))
    if chroma not in ("444", "420"):
        raise ConfigError(f"HEVC chroma must be '444' or '420', got {chroma!r}")
    if im.mode == "L":
        im = im.convert("RGB")  # libheif codes monochrome poorly; label maps never go here
    heif = pillow_heif.from_pillow(im)
    buf = io.BytesIO()
    # No ``quality`` argument: pillow-heif reads quality=-1 as *lossless*, which ignores the QP.
    # With a lossy quality of any value, x265:qp decides alone (checked: same bytes for 10..90).
    heif.save(
        buf,
        format="HEIF",
        chroma=int(chroma),
        enc_params={"x265:qp": str(qp), "x265:psy-rd": "0", "x265:pools": "1", "x265:frame-threads": "1"},
        save_to_12bit=False,
    )
    return buf.getvalue()


def _jpeg(im, quality, opts):
    return _save(im, "JPEG", quality=int(quality), subsampling=opts.get("subsampling", "4:2:0"))


def _jpeg2000(im, ratio, opts):
    ratio = float(ratio)
    if ratio <= 1:
        raise ConfigError(f"JPEG 2000 compression ratio must be > 1, got {ratio}")
    return _save(
        im, "JPEG2000", irreversible=True, quality_mode="rates", quality_layers=[ratio], mct=1, no_jp2=True
    )


def _webp(im, quality, opts):
    return _save(im, "WEBP", quality=int(quality), method=opts.get("method", 4))


def _avif(im, quality, opts):
    return _save(
        im, "AVIF", quality=int(quality), subsampling=opts.get("subsampling", "4:4:4"),
        speed=opts.get("speed", 6), max_threads=1,
    )


def _jxl(im, quality, opts):
    return _save(im, "JXL", quality=int(quality), effort=opts.get("effort", 7), num_threads=1)


CODECS: dict[str, ImageCodec] = {
    c.name: c
    for c in (
        ImageCodec("png", 1, True, "PNG", _png),
        ImageCodec("webp_lossless", 2, True, "WEBP", _webp_lossless),
        ImageCodec("jxl_lossless", 3, True, "JXL", _jxl_lossless),
        ImageCodec("hevc", 4, False, "HEIF", _hevc, "qp", tuple(range(47, 11, -5)), higher_is_better=False,
                   extension="heic", quality_range=(0, 51, False), default_options=(("chroma", "444"),),
                   label="HEVC 4:4:4 (BPG equiv.)", colour="black"),
        ImageCodec("jpeg", 5, False, "JPEG", _jpeg, "quality", (5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95),
                   extension="jpg", quality_range=(1, 100, False), label="JPEG", colour="tab:gray"),
        ImageCodec("jpeg2000", 6, False, "JPEG2000", _jpeg2000, "ratio",
                   (400, 200, 100, 64, 40, 24, 16, 10, 6, 4), higher_is_better=False,
                   extension="j2k", quality_range=(1, float("inf"), True), label="JPEG 2000", colour="tab:pink"),
        ImageCodec("webp", 7, False, "WEBP", _webp, "quality", (5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95),
                   extension="webp", quality_range=(0, 100, False), label="WebP", colour="tab:brown"),
        ImageCodec("avif", 8, False, "AVIF", _avif, "quality", (5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95),
                   extension="avif", quality_range=(0, 100, False), label="AVIF", colour="tab:red"),
        ImageCodec("jxl", 9, False, "JXL", _jxl, "quality", (10, 20, 30, 40, 50, 60, 70, 80, 90, 95),
                   extension="jxl", quality_range=(0, 100, False), label="JPEG XL", colour="tab:purple"),
    )
}
LOSSLESS = tuple(n for n, c in CODECS.items() if c.lossless)  # image codecs for the image-like layers


class HEVC10Codec(ImageCodec):
    """x265 main10 through pillow-heif: (H, W, 3) uint16 samples in 0..1023 in and out."""

    def encode(self, image: np.ndarray, quality=None, **options) -> bytes:
        _check_available(self)
        import pillow_heif

        if image.ndim != 3 or image.shape[2] != 3 or image.dtype not in (np.uint8, np.uint16):
            raise ConfigError(f"hevc10 codes (H, W, 3) uint16 (0..1023) or uint8 arrays, got {image.shape} "
                              f"{image.dtype}")
        samples = image.astype(np.uint16) << 2 if image.dtype == np.uint8 else image
        if int(samples.max(initial=0)) > 1023:
            raise ConfigError(f"hevc10 samples must be in 0..1023, found {int(samples.max())}")
        if quality is None:
            raise ConfigError("codec hevc10 needs a qp")
        qp = int(quality)
        if not 0 <= qp <= 51:
            raise ConfigError(f"HEVC QP must be in 0..51, got {qp}")
        chroma = str(options.get("chroma", "444"))
        if chroma not in ("444", "420"):
            raise ConfigError(f"HEVC chroma must be '444' or '420', got {chroma!r}")
        h, w = samples.shape[:2]
        heif = pillow_heif.from_bytes(mode="RGB;16", size=(w, h),
                                      data=np.ascontiguousarray(samples << 6).astype("<u2").tobytes())
        buf = io.BytesIO()
        heif.save(buf, format="HEIF", chroma=int(chroma), save_to_12bit=False,
                  enc_params={"x265:qp": str(qp), "x265:psy-rd": "0", "x265:pools": "1", "x265:frame-threads": "1"})
        return buf.getvalue()

    def decode(self, data: bytes, channels: int = 3, expect: tuple[int, int] | None = None) -> np.ndarray:
        """(H, W, 3) uint16 in 0..1023; the declared size is checked before decoding."""
        _check_available(self)
        import pillow_heif

        what = f"{self.name} layer"
        if channels != 3:
            raise LayerError("hevc10 layers hold three channels")
        try:
            heif = pillow_heif.open_heif(io.BytesIO(data), convert_hdr_to_8bit=False)
            size, depth = heif.size, heif.info.get("bit_depth")   # a container without an image: IndexError
        except Exception as exc:  # noqa: BLE001 - libheif raises several types for bad data
            raise LayerError(f"{what} could not be read: {exc}") from exc
        check_declared_size(*size, what, expect=expect, error=LayerSizeError)
        if depth != 10:
            raise LayerError(f"{what} holds {depth}-bit samples, expected 10")
        try:
            array = np.asarray(heif)
        except Exception as exc:  # noqa: BLE001
            raise LayerError(f"{what} could not be decoded: {exc}") from exc
        if array.shape != (size[1], size[0], 3) or array.dtype != np.uint16:
            raise LayerError(f"{what} decoded to {array.shape} {array.dtype}, expected RGB 16-bit")
        return (array >> 6).astype(np.uint16)


CODECS["hevc10"] = HEVC10Codec("hevc10", 11, False, "HEIF", None, "qp", tuple(range(47, 11, -5)),
                               higher_is_better=False)


def _register_sparse() -> None:
    from .sparse import SparseLabelCodec

    CODECS["sparse_labels"] = SparseLabelCodec()  # id 10: EDMS segmentation corrections (semlic/sparse.py)


_register_sparse()
CODECS_BY_ID: dict[int, ImageCodec] = {c.codec_id: c for c in CODECS.values()}


def get_codec(name: str) -> ImageCodec:
    try:
        return CODECS[name]
    except KeyError:
        raise ConfigError(f"unknown codec {name!r}; known: {', '.join(CODECS)}") from None


def _check_available(codec: ImageCodec) -> None:
    from PIL import features

    if codec.pil_format is None:
        return
    ok = {
        "HEIF": lambda: "HEIF" in Image.SAVE,
        "JXL": lambda: "JXL" in Image.SAVE,
        "AVIF": lambda: features.check("avif"),
        "WEBP": lambda: features.check("webp"),
        "JPEG2000": lambda: features.check("jpg_2000"),
    }.get(codec.pil_format, lambda: True)()
    if not ok:
        raise CodecUnavailableError(
            f"codec {codec.name} needs Pillow support for {codec.pil_format}; "
            "install semlic's dependencies (pillow-heif, pillow-jxl-plugin, Pillow >= 11.3)"
        )
