"""Training augmentation of PSPNet (hszhao/semseg): random scale, random crop with padding, flip.

Each function takes and returns an HxWx3 uint8 image and an HxW uint8 label map (numpy) and
draws from an explicit ``numpy.random.Generator``, so a sample's augmentation depends only on
the generator's seed (reproducible whatever the number of data-loader workers).

* random scale: one factor uniform in [min, max] for both axes; the image is resized with
  bilinear interpolation (Pillow), the label map with nearest neighbour (never invented classes);
* random crop: pad bottom/right to at least the crop size (image with the ImageNet mean colour,
  which normalises to zero; label with the ignore index, so padding is never learned), then
  crop a uniformly placed window;
* horizontal flip with probability 1/2.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# The ImageNet mean in 0..255: padded pixels normalise to (about) zero, as in hszhao/semseg.
PAD_COLOUR = (124, 116, 104)


def random_scale(image: np.ndarray, label: np.ndarray, rng: np.random.Generator,
                 scale_range: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Resize both by one factor drawn uniformly from ``scale_range`` (at least 1 pixel a side)."""
    factor = rng.uniform(*scale_range)
    height, width = label.shape
    size = (max(1, round(width * factor)), max(1, round(height * factor)))  # Pillow: (width, height)
    if size == (width, height):
        return image, label
    scaled_image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
    scaled_label = np.asarray(Image.fromarray(label).resize(size, Image.Resampling.NEAREST))
    return scaled_image, scaled_label


def random_crop(image: np.ndarray, label: np.ndarray, rng: np.random.Generator, crop_size: tuple[int, int],
                ignore_index: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad (bottom/right) to at least ``crop_size`` = (height, width), then crop a random window."""
    crop_height, crop_width = crop_size
    height, width = label.shape
    pad_height, pad_width = max(crop_height - height, 0), max(crop_width - width, 0)
    if pad_height or pad_width:
        padded_image = np.empty((height + pad_height, width + pad_width, 3), dtype=np.uint8)
        padded_image[:] = PAD_COLOUR
        padded_image[:height, :width] = image
        padded_label = np.full((height + pad_height, width + pad_width), ignore_index, dtype=np.uint8)
        padded_label[:height, :width] = label
        image, label = padded_image, padded_label
    top = int(rng.integers(0, label.shape[0] - crop_height + 1))
    left = int(rng.integers(0, label.shape[1] - crop_width + 1))
    window = (slice(top, top + crop_height), slice(left, left + crop_width))
    return image[window], label[window]


def random_flip(image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Mirror both left-right with probability 1/2."""
    if rng.random() < 0.5:
        return image[:, ::-1], label[:, ::-1]
    return image, label


def augment_pair(image: np.ndarray, label: np.ndarray, rng: np.random.Generator, crop_size: tuple[int, int],
                 scale_range: tuple[float, float], flip: bool, ignore_index: int) -> tuple[np.ndarray, np.ndarray]:
    """Scale, crop, flip (in that order); returns contiguous crop_size arrays."""
    image, label = random_scale(image, label, rng, scale_range)
    image, label = random_crop(image, label, rng, crop_size, ignore_index)
    if flip:
        image, label = random_flip(image, label, rng)
    return np.ascontiguousarray(image), np.ascontiguousarray(label)
