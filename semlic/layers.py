"""What layered image codecs share: padding, tensors <-> 8-bit images, lossless and residual layers.

These are the pieces a method's codec assembles (DSSLIC's and EDMS's compact image, map and
residual; any method's image-like layers): each works on numpy arrays and bytes, and checks
what a decoder reads against what the header implies.
"""

from __future__ import annotations

import numpy as np

from .errors import ConfigError, LayerError
from .format import Layer
from .image_codecs import CODECS_BY_ID, LOSSLESS, get_codec
from .lazy import lazy_module

torch = lazy_module("torch")

LOSSLESS_DEFAULT = "jxl_lossless"  # smallest on label maps and compact images; "best" tries all (reports/lossless.md)
LOSSLESS_CHOICES = ("best",) + LOSSLESS


def padded_side(side: int, multiple: int) -> int:
    """The network input side for an image side: a multiple of ``multiple``, at least 4x it."""
    return max(4 * multiple, -(-side // multiple) * multiple)


def pad_to_multiple(array: np.ndarray, multiple: int) -> np.ndarray:
    """Reflect-pad the bottom and right of an (H, W[, C]) array to :func:`padded_side`."""
    h, w = array.shape[:2]
    ph, pw = padded_side(h, multiple) - h, padded_side(w, multiple) - w
    if not ph and not pw:
        return array
    pad = ((0, ph), (0, pw)) + ((0, 0),) * (array.ndim - 2)
    return np.pad(array, pad, mode="reflect")


def array_to_tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor sharing a contiguous, writeable array's memory (a copy of a read-only one)."""
    array = np.ascontiguousarray(array)
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def image_to_tensor(image: np.ndarray, device) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float32 in [-1, 1]."""
    return array_to_tensor(image).to(device).permute(2, 0, 1)[None].float() / 127.5 - 1


def tensor_to_uint8(t: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) in [-1, 1] -> (H, W, 3) uint8, rounding to nearest."""
    return torch.round((t[0].float() + 1) * 127.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def module_device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def check_image(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ConfigError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")


def code_lossless(array: np.ndarray, codec_name: str = LOSSLESS_DEFAULT) -> tuple[int, bytes]:
    """(codec id, bytes) of an 8-bit array with a lossless codec, or the smallest of all (``best``)."""
    names = LOSSLESS if codec_name == "best" else (codec_name,)
    best = None
    for name in names:
        codec = get_codec(name)
        if not codec.lossless:
            raise ConfigError(f"{name} is not a lossless codec; choose one of {', '.join(LOSSLESS)} or 'best'")
        data = codec.encode(array)
        if best is None or len(data) < len(best[1]):
            best = (codec.codec_id, data)
    return best


def decode_layer(layer: Layer, channels: int, shape: tuple[int, int], what: str) -> np.ndarray:
    """A layer's image, refused unless it has the (H, W) the header implies."""
    codec = CODECS_BY_ID.get(layer.codec)
    if codec is None:
        raise LayerError(f"the {what} layer is not an image layer (codec {layer.codec_name})")
    array = codec.decode(layer.payload, channels, expect=tuple(shape))   # its size checked before decoding
    if array.shape[:2] != tuple(shape):
        raise LayerError(f"{what} layer is {array.shape[1]}x{array.shape[0]}, the header implies "
                         f"{shape[1]}x{shape[0]}")
    return array


def add_residual(prediction: np.ndarray, residual: np.ndarray) -> np.ndarray:
    """clip(round(prediction + residual)) as uint8."""
    return np.clip(np.rint(prediction.astype(np.float32) + residual), 0, 255).astype(np.uint8)


def scaled_residual(image: np.ndarray, prediction: np.ndarray) -> tuple[np.ndarray, int, int]:
    """r = x - x' (integers in -255..255) scaled to 0..255 by its integer min/max: (r8, min, max)."""
    residual = image.astype(np.int16) - prediction.astype(np.int16)
    res_min, res_max = int(residual.min()), int(residual.max())
    span = max(1, res_max - res_min)
    r8 = np.rint((residual - res_min).astype(np.float32) * (255.0 / span)).astype(np.uint8)
    return r8, res_min, res_max


def unscaled_residual(r8: np.ndarray, res_min: int, res_max: int) -> np.ndarray:
    """The inverse of :func:`scaled_residual`'s scaling (float32)."""
    return r8.astype(np.float32) / 255.0 * float(res_max - res_min) + float(res_min)


RESIDUAL_OFFSET = 512   # a 10-bit residual layer holds x - x' + 512 (no rescaling)


def offset_residual(image: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """r = x - x' (integers in -255..255) + :data:`RESIDUAL_OFFSET`, as 10-bit samples (uint16)."""
    return (image.astype(np.int16) - prediction.astype(np.int16) + RESIDUAL_OFFSET).astype(np.uint16)


def unoffset_residual(r10: np.ndarray) -> np.ndarray:
    """The inverse of :func:`offset_residual` (float32)."""
    return r10.astype(np.float32) - float(RESIDUAL_OFFSET)
