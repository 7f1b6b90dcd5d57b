"""Bjontegaard deltas on curves with known answers."""

import math

import numpy as np
import pytest

from semlic import bd
from semlic.errors import ConfigError

RATES = np.array([0.1, 0.2, 0.4, 0.8, 1.6, 3.2])
SLOPE = 4.0  # dB per natural-log unit of rate


def log_linear(rate):
    return 30.0 + SLOPE * np.log(rate / 0.1)


def concave(rate):
    return 45.0 - 12.0 / (1.0 + 2.0 * rate)


@pytest.mark.parametrize("method", bd.METHODS)
def test_one_db_shift_gives_one_db_and_the_analytic_bd_rate(method):
    anchor_psnr = log_linear(RATES)
    assert bd.bd_psnr(RATES, anchor_psnr, RATES, anchor_psnr + 1.0, method=method) == pytest.approx(1.0, abs=1e-12)
    # Same PSNR needs ln R lower by 1/SLOPE everywhere.
    expected = (math.exp(-1.0 / SLOPE) - 1.0) * 100
    assert bd.bd_rate(RATES, anchor_psnr, RATES, anchor_psnr + 1.0, method=method) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("method", bd.METHODS)
def test_rate_scaled_by_0_9_gives_minus_ten_percent(method):
    psnr = concave(RATES)
    assert bd.bd_rate(RATES, psnr, 0.9 * RATES, psnr, method=method) == pytest.approx(-10.0, abs=1e-9)
    assert bd.bd_rate(0.9 * RATES, psnr, RATES, psnr, method=method) == pytest.approx(100 / 9, abs=1e-9)
    assert bd.bd_psnr(RATES, psnr, 0.9 * RATES, psnr, method=method) > 0


def test_cubic_is_vceg_m33_exact_polynomial_fit():
    # Four points of D = 30 + 3x and D = 30 + 3x + 0.2x^3 (x = ln R) on x in [0, 3]: the cubic fit is
    # exact, so BD-PSNR = mean of 0.2 x^3 over [0, 3] = 0.2 * 81 / 4 / 3 = 1.35.
    x = np.arange(4.0)
    rates = np.exp(x)
    anchor, test = 30 + 3 * x, 30 + 3 * x + 0.2 * x**3
    assert bd.bd_psnr(rates, anchor, rates, test, method="cubic") == pytest.approx(1.35, abs=1e-9)


def test_identical_curves_give_zero_and_point_order_does_not_matter():
    psnr = concave(RATES)
    assert bd.bd_rate(RATES, psnr, RATES, psnr) == pytest.approx(0.0, abs=1e-12)
    order = np.array([3, 0, 5, 1, 4, 2])
    shifted = concave(RATES * 1.3)
    assert bd.bd_rate(RATES[order], psnr[order], RATES, shifted) == pytest.approx(bd.bd_rate(RATES, psnr, RATES, shifted))


def test_default_is_pchip():
    psnr, test = concave(RATES), concave(RATES) + 0.3 * np.sin(np.arange(RATES.size))
    assert bd.DEFAULT_METHOD == "pchip"
    assert bd.bd_psnr(RATES, psnr, RATES, test) == bd.bd_psnr(RATES, psnr, RATES, test, method="pchip")
    assert bd.bd_psnr(RATES, psnr, RATES, test) != pytest.approx(bd.bd_psnr(RATES, psnr, RATES, test, method="cubic"))


@pytest.mark.parametrize("anchor_rate, anchor_psnr, test_rate, test_psnr", [
    (RATES[:3], log_linear(RATES[:3]), RATES, log_linear(RATES)),                 # 3 points
    (RATES, log_linear(RATES), RATES[:3], log_linear(RATES[:3])),
    (RATES, log_linear(RATES), RATES * 100, log_linear(RATES) + 40),              # no overlap
    (-RATES, log_linear(RATES), RATES, log_linear(RATES)),                        # negative rates
    (RATES, np.r_[log_linear(RATES[:5]), np.nan], RATES, log_linear(RATES)),      # NaN
    (RATES, log_linear(RATES)[:5], RATES, log_linear(RATES)),                     # length mismatch
])
def test_refusals(anchor_rate, anchor_psnr, test_rate, test_psnr):
    for function in (bd.bd_rate, bd.bd_psnr):
        with pytest.raises(ConfigError):
            function(anchor_rate, anchor_psnr, test_rate, test_psnr)


def test_refuses_unknown_method_and_repeated_points():
    psnr = log_linear(RATES)
    with pytest.raises(ConfigError, match="method"):
        bd.bd_psnr(RATES, psnr, RATES, psnr, method="akima")
    with pytest.raises(ConfigError, match="repeated"):
        bd.bd_rate(RATES, np.r_[psnr[:5], psnr[4]], RATES, psnr)


def test_operational_points_keep_what_no_cheaper_point_matches():
    import pandas as pd

    from semlic.bd import operational

    points = pd.DataFrame({"bpp": [0.4, 0.1, 0.2, 0.2, 0.3, float("nan")], "psnr_rgb": [33, 28, 30, 29, 30, 40]})
    kept = operational(points)
    assert kept["bpp"].tolist() == [0.1, 0.2, 0.4] and kept["psnr_rgb"].tolist() == [28, 30, 33]
    assert operational(points.rename(columns={"psnr_rgb": "miou"}), quality="miou")["bpp"].tolist() == [0.1, 0.2, 0.4]
