"""Bjontegaard deltas between two rate-distortion curves: BD-rate (%) and BD-PSNR (dB).

G. Bjontegaard, "Calculation of average PSNR differences between RD-curves", ITU-T VCEG-M33,
Austin, April 2001. Distortion (PSNR, dB) is modelled as a function of the logarithm of the
rate, each curve is interpolated, and the two interpolants are integrated over the range the
curves share:

* BD-PSNR = mean over the common log-rate interval of (D_test - D_anchor), in dB;
* BD-rate = exp(mean over the common PSNR interval of (ln R_test - ln R_anchor)) - 1, in %.
  Negative BD-rate: the test curve needs fewer bits for the same quality.

Two interpolations (``method=``):

* ``"pchip"`` (**default**): piecewise cubic Hermite interpolation (Fritsch-Carlson,
  ``scipy.interpolate.PchipInterpolator``), the variant of the JCT-VC/JVET common test
  conditions spreadsheet (JCTVC-L1100) and of the ``bjontegaard`` package (FAU-LMS), which
  reports agreement with that spreadsheet. It follows every measured point and does not
  oscillate, so it stays sound with the 8-19 points of image-codec sweeps.
* ``"cubic"``: VCEG-M33 itself, one least-squares cubic polynomial per curve (``np.polyfit``,
  degree 3), as in the widely copied ``bj_delta``/``BD_PSNR`` scripts; exact for 4 points,
  a smoothing fit for more.

The logarithm's base does not matter (both fits are invariant to an affine change of axis).
Inputs: rates (any positive unit, e.g. bpp) and PSNRs, one value per quality point, any order.
Refused with :class:`~semlic.errors.ConfigError`: fewer than 4 points on a curve, non-finite
values, non-positive rates, repeated values on the integration axis, or curves whose ranges
do not overlap.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.interpolate import PchipInterpolator

from .errors import ConfigError

METHODS = ("pchip", "cubic")
DEFAULT_METHOD = "pchip"
MIN_POINTS = 4


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ConfigError(f"unknown Bjontegaard method {method!r}; known: {', '.join(METHODS)}")


def _curve(rate: Sequence[float], psnr: Sequence[float], which: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate one curve; return (ln rate, psnr) as float64 arrays."""
    rate = np.asarray(rate, dtype=np.float64).ravel()
    psnr = np.asarray(psnr, dtype=np.float64).ravel()
    if rate.shape != psnr.shape:
        raise ConfigError(f"{which} curve: {rate.size} rates but {psnr.size} PSNR values")
    if rate.size < MIN_POINTS:
        raise ConfigError(f"{which} curve: Bjontegaard deltas need at least {MIN_POINTS} points, got {rate.size}")
    if not (np.all(np.isfinite(rate)) and np.all(np.isfinite(psnr))):
        raise ConfigError(f"{which} curve: rates and PSNRs must be finite, got {rate.tolist()}, {psnr.tolist()}")
    if np.any(rate <= 0):
        raise ConfigError(f"{which} curve: rates must be > 0, got {rate.tolist()}")
    return np.log(rate), psnr


def _interval_mean(x: np.ndarray, y: np.ndarray, low: float, high: float, method: str, which: str) -> float:
    """Mean of the interpolant of y(x) over [low, high]."""
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    if np.any(np.diff(x) == 0):
        raise ConfigError(f"{which} curve: repeated value on the integration axis {x.tolist()}")
    if method == "pchip":
        area = PchipInterpolator(x, y, extrapolate=False).integrate(low, high)
    else:  # "cubic", VCEG-M33
        antiderivative = np.polyint(np.polyfit(x, y, 3))
        area = np.polyval(antiderivative, high) - np.polyval(antiderivative, low)
    return float(area) / (high - low)


def _common_interval(a: np.ndarray, b: np.ndarray, axis: str) -> tuple[float, float]:
    low, high = max(a.min(), b.min()), min(a.max(), b.max())
    if not high > low:
        raise ConfigError(
            f"the curves do not overlap in {axis}: anchor [{a.min():.4g}, {a.max():.4g}], "
            f"test [{b.min():.4g}, {b.max():.4g}]"
        )
    return low, high


def bd_psnr(anchor_rate: Sequence[float], anchor_psnr: Sequence[float],
            test_rate: Sequence[float], test_psnr: Sequence[float], method: str = DEFAULT_METHOD) -> float:
    """Average PSNR gain (dB) of the test curve over the anchor at equal rate."""
    _check_method(method)
    anchor_log_rate, anchor_psnr = _curve(anchor_rate, anchor_psnr, "anchor")
    test_log_rate, test_psnr = _curve(test_rate, test_psnr, "test")
    low, high = _common_interval(anchor_log_rate, test_log_rate, "log rate")
    return (_interval_mean(test_log_rate, test_psnr, low, high, method, "test")
            - _interval_mean(anchor_log_rate, anchor_psnr, low, high, method, "anchor"))


def bd_rate(anchor_rate: Sequence[float], anchor_psnr: Sequence[float],
            test_rate: Sequence[float], test_psnr: Sequence[float], method: str = DEFAULT_METHOD) -> float:
    """Average rate difference (%) of the test curve against the anchor at equal PSNR."""
    _check_method(method)
    anchor_log_rate, anchor_psnr = _curve(anchor_rate, anchor_psnr, "anchor")
    test_log_rate, test_psnr = _curve(test_rate, test_psnr, "test")
    low, high = _common_interval(anchor_psnr, test_psnr, "PSNR")
    mean_log_ratio = (_interval_mean(test_psnr, test_log_rate, low, high, method, "test")
                      - _interval_mean(anchor_psnr, anchor_log_rate, low, high, method, "anchor"))
    return float(np.expm1(mean_log_ratio) * 100.0)


def operational(points, rate: str = "bpp", quality: str = "psnr_rgb"):
    """The rows of a DataFrame of RD points that no cheaper row matches in ``quality`` (sorted by
    ``rate``; of equal rates the best): the curve one can operate on, e.g. a codec's points over
    several knobs, or a segmentation curve that is not monotone in rate."""
    points = points.dropna(subset=[rate, quality]).sort_values([rate, quality], ascending=[True, False])
    best = points[quality].cummax().shift(fill_value=-np.inf)
    return points[points[quality].to_numpy() > best.to_numpy()]
