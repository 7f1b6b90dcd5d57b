"""semlic.metrics against hand-computed values."""

import math

import numpy as np
import pytest

from semlic import metrics
from semlic.errors import ConfigError


def test_bpp_and_bits_per_subpixel():
    assert metrics.bpp(1000, 100, 80) == pytest.approx(1.0)
    assert metrics.bits_per_subpixel(1000, 100, 80) == pytest.approx(1 / 3)
    assert metrics.bpp(0, 3, 5) == 0.0
    for bad in ((-1, 10, 10), (10, 0, 10), (10, 10, -2)):
        with pytest.raises(ConfigError):
            metrics.bpp(*bad)


def _offset_image(offsets, shape=(8, 6)):
    """A grey reference and a test image whose channels are off by the given amounts."""
    reference = np.full(shape + (3,), 100, np.uint8)
    test = reference + np.array(offsets, np.uint8)
    return reference, test


def test_psnr_rgb_of_a_known_mse():
    reference, test = _offset_image((10, 5, 1))  # channel MSEs 100, 25, 1 -> RGB MSE 42
    assert metrics.psnr_rgb(reference, test) == pytest.approx(10 * math.log10(255**2 / 42))


def test_psnr_channel_mean_differs_from_psnr_rgb():
    reference, test = _offset_image((10, 5, 1))
    expected = np.mean([10 * math.log10(255**2 / mse) for mse in (100, 25, 1)])
    assert metrics.psnr_channel_mean(reference, test) == pytest.approx(expected)
    assert metrics.psnr_channel_mean(reference, test) > metrics.psnr_rgb(reference, test) + 4


def test_psnr_conventions_agree_when_channel_errors_are_equal():
    reference, test = _offset_image((4, 4, 4))
    assert metrics.psnr_rgb(reference, test) == pytest.approx(10 * math.log10(255**2 / 16))
    assert metrics.psnr_channel_mean(reference, test) == pytest.approx(metrics.psnr_rgb(reference, test))


def test_psnr_of_identical_images_is_infinite_and_error_is_symmetric():
    reference, test = _offset_image((0, 0, 0))
    assert metrics.psnr_rgb(reference, test) == math.inf
    assert metrics.psnr_channel_mean(reference, test) == math.inf
    reference, test = _offset_image((7, 0, 3))
    assert metrics.psnr_rgb(reference, test) == metrics.psnr_rgb(test, reference)  # no uint8 wrap-around


@pytest.mark.parametrize("bad", [
    np.zeros((8, 6, 3), np.float32),   # wrong dtype
    np.zeros((8, 6), np.uint8),        # grey
    np.zeros((8, 6, 4), np.uint8),     # RGBA
    np.zeros((6, 8, 3), np.uint8),     # other shape
])
def test_metrics_refuse_bad_inputs(bad):
    reference = np.zeros((8, 6, 3), np.uint8)
    for metric in (metrics.psnr_rgb, metrics.psnr_channel_mean, metrics.ms_ssim_rgb):
        with pytest.raises(ConfigError):
            metric(reference, bad)


def _textured(side, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side]
    base = np.stack([x, y, x + y], axis=-1) * (200.0 / (2 * side))
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def _noisy(image, sigma, seed=1):
    rng = np.random.default_rng(seed)
    return np.clip(image + rng.normal(0, sigma, image.shape), 0, 255).astype(np.uint8)


def test_ms_ssim_is_one_for_identical_images_and_falls_with_distortion():
    image = _textured(metrics.MS_SSIM_MIN_SIDE)
    assert metrics.ms_ssim_rgb(image, image.copy()) == pytest.approx(1.0, abs=1e-6)
    mild, strong = metrics.ms_ssim_rgb(image, _noisy(image, 5)), metrics.ms_ssim_rgb(image, _noisy(image, 40))
    assert 0 < strong < mild < 1


def test_ms_ssim_is_nan_below_the_five_scale_minimum():
    assert metrics.MS_SSIM_MIN_SIDE == 161
    image = _textured(200)[:160]
    assert math.isnan(metrics.ms_ssim_rgb(image, image))
