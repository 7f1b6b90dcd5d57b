"""Reading and writing images as 8-bit RGB arrays, with documented conversions.

Every codec in semlic works on 8-bit sRGB, HxWx3 ``uint8`` arrays. :func:`load_image`
converts what it can and refuses the rest:

=================  ===========================================================================
input mode         conversion
=================  ===========================================================================
RGB                as is
L, 1 (grey)        replicated to three equal channels
P, PA (palette)    expanded through the palette to RGB (palette transparency dropped)
RGBA, LA           alpha dropped: the colour channels are kept as stored (not composited);
                   the codecs code colour only, so the reconstruction has no alpha
I;16*, I (16 bit)  grey: scaled to 8 bits with rounding, v8 = round(v16 / 257), replicated
RGB 16-bit PNG     Pillow itself reduces it to 8 bits by keeping the high byte (v8 = v16 >> 8)
F (float)          refused (no defined range)
CMYK, YCbCr, LAB,  refused: semlic does not do colour management; convert to sRGB first
HSV
=================  ===========================================================================

The size an image file declares is checked before it is decoded: more than
:func:`pixel_limit` pixels (default :data:`DEFAULT_MAX_PIXELS`, 100 million; the environment
variable ``SEMLIC_MAX_PIXELS`` or the ``max_pixels`` argument changes it) is refused with
:class:`~semlic.errors.ImageTooLargeError`, so a small file declaring 100k x 100k pixels (a
decompression bomb) costs nothing. JPEG XL, whose Pillow plugin decodes on opening, has its
header read by :func:`semlic.image_codecs.jxl_declared_size` first.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from . import image_codecs as _image_codecs  # registers the HEIF / JPEG XL openers; size checks
from .errors import ConfigError, ImageTooLargeError, SemlicError, UnreadableImageError, UnsupportedImageModeError
from .fileio import atomic_write_bytes

DEFAULT_MAX_PIXELS = 100_000_000
MAX_PIXELS_ENV = "SEMLIC_MAX_PIXELS"


def pixel_limit(given: int | None = None) -> int:
    """The pixel limit of :func:`load_image`: ``given``, else ``SEMLIC_MAX_PIXELS``, else the default."""
    if given is None:
        text = os.environ.get(MAX_PIXELS_ENV, "").strip()
        if not text:
            return DEFAULT_MAX_PIXELS
        try:
            given = int(float(text))
        except ValueError as exc:
            raise ConfigError(f"{MAX_PIXELS_ENV}={text!r}: not a number of pixels") from exc
    if given < 1:
        raise ConfigError(f"the pixel limit must be positive, got {given}")
    return int(given)


def _open_checked(path: Path, limit: int) -> Image.Image:
    """Image.open, refusing a file that declares more than ``limit`` pixels before anything is decoded."""
    hint = (f" (a larger limit: {MAX_PIXELS_ENV}=<pixels> or load_image(..., max_pixels=...))")
    with open(path, "rb") as f:
        head = f.read(4096)
        if head.startswith(_image_codecs.JXL_CONTAINER):   # its codestream may follow boxes of any size
            head += f.read()
    declared = _image_codecs.jxl_declared_size(head)
    if declared is not None:
        _image_codecs.check_declared_size(*declared, str(path), max_pixels=limit, error=ImageTooLargeError, hint=hint)
    im = Image.open(path)
    try:
        _image_codecs.check_declared_size(*im.size, str(path), max_pixels=limit, error=ImageTooLargeError, hint=hint)
    except ImageTooLargeError:
        im.close()
        raise
    return im


_REFUSED = {"CMYK": "CMYK", "YCbCr": "YCbCr", "LAB": "CIE L*a*b*", "HSV": "HSV", "F": "32-bit float"}


def pil_to_rgb(im: Image.Image, source: str = "image") -> np.ndarray:
    """Convert a decoded Pillow image to HxWx3 uint8 following the table above."""
    mode = im.mode
    if mode in _REFUSED:
        raise UnsupportedImageModeError(
            f"{source}: colour model {_REFUSED[mode]} (Pillow mode {mode}) is not supported; "
            "expected an RGB, grey, palette or 16-bit image (convert it to sRGB first)"
        )
    if mode == "RGB":
        return np.asarray(im, dtype=np.uint8).copy()
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        grey = np.asarray(im).astype(np.float64) / 257.0
        grey = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "RGBA":
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()  # drops alpha, no compositing
    if mode in ("L", "1", "LA", "P", "PA", "La", "RGBa", "RGBX"):
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    raise UnsupportedImageModeError(f"{source}: Pillow mode {mode} is not supported")


def load_image(path: str | os.PathLike, max_pixels: int | None = None) -> np.ndarray:
    """Read an image file into an HxWx3 uint8 RGB array (conversions and the pixel limit: module
    docstring)."""
    path = Path(path)
    limit = pixel_limit(max_pixels)
    if not path.is_file():
        raise UnreadableImageError(f"{path}: no such file")
    try:
        with _open_checked(path, limit) as im:
            im.load()
            return pil_to_rgb(im, str(path))
    except SemlicError:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow and its plugins raise many types on damaged data
        # (fuzzing found RuntimeError from the AVIF plugin, ...): all mean "not a readable image"
        raise UnreadableImageError(f"{path}: not a readable image ({exc})") from exc


def load_label_map(path: str | os.PathLike, max_pixels: int | None = None) -> np.ndarray:
    """Read a label map (class index per pixel) stored as an 8-bit grey or palette PNG (the pixel
    limit of :func:`load_image`)."""
    path = Path(path)
    limit = pixel_limit(max_pixels)
    try:
        with _open_checked(path, limit) as im:
            im.load()
            if im.mode not in ("L", "P"):
                raise UnsupportedImageModeError(
                    f"{path}: a label map must be an 8-bit grey or palette image, found mode {im.mode}"
                )
            return np.asarray(im, dtype=np.uint8).copy()
    except FileNotFoundError as exc:
        raise UnreadableImageError(f"{path}: no such file") from exc
    except SemlicError:
        raise
    except Exception as exc:  # noqa: BLE001 - as load_image
        raise UnreadableImageError(f"{path}: not a readable label map ({exc})") from exc


def save_png(path: str | os.PathLike, array: np.ndarray) -> None:
    """Save an HxW or HxWx3 uint8 array as PNG, atomically."""
    import io

    buf = io.BytesIO()
    mode = "L" if array.ndim == 2 else "RGB"
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8), mode).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
