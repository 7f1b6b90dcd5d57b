"""Rate and distortion measures on 8-bit RGB images, with the conventions stated.

Rate (docs/REFERENCE.md, "Honest accounting"):

* :func:`bpp` = every byte of the coded file * 8 / (H * W): bits per pixel, all three
  channels together. This is the axis of CompressAI and of every figure semlic reports.
* :func:`bits_per_subpixel` = bytes * 8 / (H * W * 3): the axis DSSLIC and EDMS call "bpp".
  Recorded only to compare with those papers; it is one third of :func:`bpp`.

Distortion (all take two HxWx3 ``uint8`` arrays, reference first):

* :func:`psnr_rgb`: 10 log10(255^2 / MSE) with the MSE over all pixels and all three
  channels together (CompressAI, ``compressai.utils.eval_model``: ``psnr-rgb``).
  Identical images have MSE 0 and PSNR ``inf``.
* :func:`psnr_channel_mean`: the mean of the three per-channel PSNRs (DSSLIC's MATLAB
  evaluation). It is never lower than :func:`psnr_rgb` (Jensen: log is concave) and differs
  from it whenever the channel errors differ. ``inf`` if any channel is exact.
* :func:`ms_ssim_rgb`: MS-SSIM (Wang, Simoncelli, Bovik 2003; 5 scales, Gaussian window
  11, sigma 1.5, weights 0.0448, 0.2856, 0.3001, 0.2363, 0.1333) computed by pytorch-msssim
  on the 8-bit values as float32 with ``data_range=255``, as CompressAI's ``ms-ssim-rgb``.

  Images whose shorter side is below :data:`MS_SSIM_MIN_SIDE` (161 px) get **NaN**. Four
  downsamplings by 2 must leave at least one full 11-tap window, so 5-scale MS-SSIM is not
  defined below that size; a value computed with fewer scales (renormalised weights) is a
  different quantity that would silently mix with true MS-SSIM values in an average.
  NaN is what ``pandas.mean`` skips and what makes a DuckDB ``avg`` visibly NaN.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import ConfigError

MAX_VALUE = 255.0
MS_SSIM_WINDOW = 11
MS_SSIM_SCALES = 5
#: Smallest side (pixels) on which 5-scale MS-SSIM with an 11-tap window is defined.
MS_SSIM_MIN_SIDE = (MS_SSIM_WINDOW - 1) * 2 ** (MS_SSIM_SCALES - 1) + 1


def _check_size(num_bytes: int, height: int, width: int) -> None:
    if num_bytes < 0:
        raise ConfigError(f"a byte count must be >= 0, got {num_bytes}")
    if height <= 0 or width <= 0:
        raise ConfigError(f"image size must be positive, got {height}x{width} (HxW)")


def bpp(num_bytes: int, height: int, width: int) -> float:
    """Bits per pixel: ``num_bytes * 8 / (height * width)`` (all channels together)."""
    _check_size(num_bytes, height, width)
    return num_bytes * 8 / (height * width)


def bits_per_subpixel(num_bytes: int, height: int, width: int) -> float:
    """Bits per sub-pixel: ``num_bytes * 8 / (height * width * 3)`` (DSSLIC's "bpp")."""
    _check_size(num_bytes, height, width)
    return num_bytes * 8 / (height * width * 3)


def _check_pair(reference: np.ndarray, test: np.ndarray) -> None:
    for name, array in (("reference", reference), ("test", test)):
        if not isinstance(array, np.ndarray) or array.dtype != np.uint8:
            raise ConfigError(f"{name} image: expected a uint8 numpy array, got {type(array).__name__} "
                              f"{getattr(array, 'dtype', '')}")
        if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] == 0 or array.shape[1] == 0:
            raise ConfigError(f"{name} image: expected shape HxWx3, got {array.shape}")
    if reference.shape != test.shape:
        raise ConfigError(f"images differ in shape: reference {reference.shape}, test {test.shape}")


def _psnr_from_mse(mse: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(MAX_VALUE**2 / mse)


def channel_mse(reference: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Mean squared error of each channel, shape (3,), float64."""
    _check_pair(reference, test)
    diff = reference.astype(np.float64) - test.astype(np.float64)
    return np.mean(diff * diff, axis=(0, 1))


def psnr_rgb(reference: np.ndarray, test: np.ndarray) -> float:
    """PSNR in dB over the MSE of all three channels together (CompressAI's ``psnr-rgb``)."""
    return float(_psnr_from_mse(np.mean(channel_mse(reference, test))))


def psnr_channel_mean(reference: np.ndarray, test: np.ndarray) -> float:
    """Mean of the R, G and B PSNRs in dB (DSSLIC's convention)."""
    return float(np.mean(_psnr_from_mse(channel_mse(reference, test))))


def ms_ssim_rgb(reference: np.ndarray, test: np.ndarray) -> float:
    """MS-SSIM of two 8-bit RGB images (data range 255); NaN below 161 px (module docstring)."""
    _check_pair(reference, test)
    if min(reference.shape[:2]) < MS_SSIM_MIN_SIDE:
        return math.nan
    import torch
    from pytorch_msssim import ms_ssim

    def as_batch(array: np.ndarray) -> torch.Tensor:  # HxWx3 uint8 -> 1x3xHxW float32
        return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).unsqueeze(0).float()

    with torch.no_grad():
        value = ms_ssim(as_batch(reference), as_batch(test), data_range=MAX_VALUE,
                        win_size=MS_SSIM_WINDOW, size_average=True)
    return float(value)
