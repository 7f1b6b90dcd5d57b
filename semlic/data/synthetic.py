"""The builtin synthetic data set: labelled scenes generated offline from a seed.

This is the project's **smoke-test set**, not a benchmark: it lets every stage (prepare,
train_segnet, segment, train_base, code, aggregate) run on a fresh machine with no data set
downloaded (docs/DESIGN.md section 7), and it is easy enough that a small segmenter learns it in a
few minutes on a CPU. Numbers measured on it say that the pipeline works, nothing about how
well a method compresses natural images.

A scene is a label map made from one of three random layouts, then painted class by class:

* ``horizon``: an upper and a lower region split by a wavy horizon line ("sky / ground");
* ``voronoi``: 4 to 9 Voronoi cells, each of a random class;
* ``objects``: a background class;

then 1 to 6 foreground shapes (rotated ellipses and star-shaped random polygons of very
different sizes) are drawn over it. Every region has sharp edges. Each class has its own
colour distribution (a base RGB colour jittered per image) *and* its own texture, so that
neither colour nor texture alone identifies it:

===  ==========  ===================  ==========================================================
id   name        base colour (RGB)    texture
===  ==========  ===================  ==========================================================
0    sky         (110, 160, 230)      smooth vertical gradient, faint noise
1    grass       (60, 140, 50)        strong fine-grained (per-pixel) noise
2    water       (30, 85, 140)        horizontal waves, period ~9 px, slowly bending
3    brick       (165, 70, 50)        staggered bricks 24x12 px with light mortar lines
4    sand        (215, 190, 130)      diagonal stripes at 45 degrees, period ~10 px
5    rock        (125, 120, 115)      blotchy low-frequency noise (8x8 grid, bilinear)
6    flowers     (185, 60, 165)       polka dots on a dark background, period ~8 px
7    metal       (170, 190, 200)      thin vertical stripes, period 4 px, horizontal gradient
===  ==========  ===================  ==========================================================

Ignore pixels: a one-pixel band along region boundaries is labelled :data:`IGNORE_INDEX`
(255): every pixel whose right or lower neighbour has another class. Real data sets have
such void bands (CamVid's "unlabelled", Cityscapes' 255), so the synthetic set exercises
the ignore path of the losses and metrics. The image pixels there keep their true colour.

Determinism: a sample is a pure function of ``(index, seed, size)``. The random layout is
drawn in relative coordinates from ``numpy.random.default_rng(SeedSequence([seed, index]))``,
so the same index at two sizes shows the same scene; textures are defined in pixels. The
bytes are identical across runs with the same NumPy build (floating-point ``sin``/``exp``
are not bit-identical across every platform, so rounding may rarely differ elsewhere).

The builtin data set uses ``seed = DEFAULT_SEED`` and the disjoint index ranges of
:data:`SPLIT_COUNTS` (train 0..63, val 64..79, test 80..87), all at :data:`NATIVE_SIZE`.
"""

from __future__ import annotations

import numpy as np

NUM_CLASSES = 8
CLASS_NAMES = ("sky", "grass", "water", "brick", "sand", "rock", "flowers", "metal")
IGNORE_INDEX = 255

#: Number of samples per split of the builtin data set; indices are consecutive and disjoint.
SPLIT_COUNTS = {"train": 64, "val": 16, "test": 8}
#: Seed of the builtin data set.
DEFAULT_SEED = 0
#: (height, width) of every image of the builtin data set.
NATIVE_SIZE = (256, 256)
#: Bump when the generator changes: it is part of the fingerprint prepare records.
GENERATOR_VERSION = 1

_BASE_COLOURS = np.array(
    [
        (110, 160, 230),
        (60, 140, 50),
        (30, 85, 140),
        (165, 70, 50),
        (215, 190, 130),
        (125, 120, 115),
        (185, 60, 165),
        (170, 190, 200),
    ],
    dtype=np.float32,
)


def split_indices(split: str) -> range:
    """Generator indices of ``split`` in the builtin data set (train 0..63, val 64..79, test 80..87)."""
    if split not in SPLIT_COUNTS:
        raise KeyError(f"synthetic data set has splits {sorted(SPLIT_COUNTS)}, not {split!r}")
    start = 0
    for name, count in SPLIT_COUNTS.items():
        if name == split:
            return range(start, start + count)
        start += count
    raise AssertionError("unreachable")


# --- layout ----------------------------------------------------------------------------------
def _ellipse(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, scale: float) -> np.ndarray:
    cy, cx = rng.uniform(0.05, 0.95, size=2)
    ry, rx = scale * rng.uniform(0.4, 1.0, size=2)
    angle = rng.uniform(0.0, np.pi)
    dy, dx = yy - cy, xx - cx
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    return (u / rx) ** 2 + (v / ry) ** 2 <= 1.0


def _polygon(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, scale: float) -> np.ndarray:
    """A star-shaped random polygon (vertices sorted by angle), filled by the even-odd rule."""
    cy, cx = rng.uniform(0.05, 0.95, size=2)
    n_vertices = int(rng.integers(3, 9))
    angles = np.sort(rng.uniform(0.0, 2 * np.pi, size=n_vertices))
    radii = scale * rng.uniform(0.35, 1.0, size=n_vertices)
    vy, vx = cy + radii * np.sin(angles), cx + radii * np.cos(angles)
    inside = np.zeros(np.broadcast_shapes(yy.shape, xx.shape), dtype=bool)
    for k in range(n_vertices):  # loop over edges (<= 8), each vectorised over all pixels
        y1, x1, y2, x2 = vy[k], vx[k], vy[k - 1], vx[k - 1]
        if y1 == y2:
            continue
        crosses = (y1 > yy) != (y2 > yy)
        x_at_y = x1 + (yy - y1) * (x2 - x1) / (y2 - y1)
        inside ^= crosses & (xx < x_at_y)
    return inside


def _layout(rng: np.random.Generator, index: int, height: int, width: int) -> np.ndarray:
    """Class map HxW (uint8, values < NUM_CLASSES); class ``index % NUM_CLASSES`` covers >= 5 % of it."""
    yy = ((np.arange(height, dtype=np.float32) + 0.5) / height)[:, None]
    xx = ((np.arange(width, dtype=np.float32) + 0.5) / width)[None, :]
    primary = index % NUM_CLASSES
    others = [c for c in range(NUM_CLASSES) if c != primary]
    kind = ("horizon", "voronoi", "objects")[int(rng.integers(0, 3))]
    if kind == "horizon":
        # Primary class below a wavy horizon at 30..55 % of the height, another class above.
        upper = int(rng.choice(others))
        level = rng.uniform(0.30, 0.55)
        horizon = (
            level
            + rng.uniform(-0.1, 0.1) * (xx - 0.5)
            + rng.uniform(0.0, 0.06) * np.sin(2 * np.pi * rng.uniform(0.5, 3.0) * xx + rng.uniform(0, 2 * np.pi))
        )
        labels = np.where(yy < horizon, upper, primary).astype(np.uint8)
        labels = np.broadcast_to(labels, (height, width)).copy()
    elif kind == "voronoi":
        n_cells = int(rng.integers(4, 10))
        seeds = rng.uniform(0.0, 1.0, size=(n_cells, 2)).astype(np.float32)
        cell_classes = rng.choice(NUM_CLASSES, size=n_cells)
        distance = (yy[None] - seeds[:, 0, None, None]) ** 2 + (xx[None] - seeds[:, 1, None, None]) ** 2
        nearest = np.argmin(distance, axis=0)
        # The largest cell takes the primary class.
        counts = np.bincount(nearest.ravel(), minlength=n_cells)
        cell_classes[int(np.argmax(counts))] = primary
        labels = cell_classes.astype(np.uint8)[nearest]
    else:
        labels = np.full((height, width), primary, dtype=np.uint8)
    n_shapes = int(rng.integers(1, 7))
    for _ in range(n_shapes):
        scale = float(np.exp(rng.uniform(np.log(0.04), np.log(0.3))))  # sizes spread over ~1 decade
        shape = _ellipse if rng.random() < 0.5 else _polygon
        mask = shape(rng, yy, xx, scale)
        labels[mask] = int(rng.choice(others))
    # Guarantee the primary class a visible share if the shapes happened to cover it.
    if np.count_nonzero(labels == primary) < 0.05 * height * width:
        labels[_ellipse(rng, yy, xx, 0.25)] = primary
    return labels


# --- textures --------------------------------------------------------------------------------
def _blotches(rng: np.random.Generator, height: int, width: int, grid: int) -> np.ndarray:
    """Smooth noise in [-1, 1]: a random grid x grid field upsampled bilinearly to HxW."""
    field = rng.uniform(-1.0, 1.0, size=(grid + 1, grid + 1)).astype(np.float32)
    gy = np.linspace(0, grid, height, dtype=np.float32)
    gx = np.linspace(0, grid, width, dtype=np.float32)
    iy = np.minimum(gy.astype(np.int64), grid - 1)
    ix = np.minimum(gx.astype(np.int64), grid - 1)
    fy, fx = (gy - iy)[:, None], (gx - ix)[None, :]
    top = field[iy][:, ix] * (1 - fx) + field[iy][:, ix + 1] * fx
    bottom = field[iy + 1][:, ix] * (1 - fx) + field[iy + 1][:, ix + 1] * fx
    return top * (1 - fy) + bottom * fy


def _texture(class_id: int, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Luminance modulation of ``class_id`` as an HxW float32 array, roughly in [-1, 1]."""
    y = np.arange(height, dtype=np.float32)[:, None]
    x = np.arange(width, dtype=np.float32)[None, :]
    phase = rng.uniform(0, 2 * np.pi)
    jitter = rng.uniform(0.9, 1.1)
    if class_id == 0:  # sky: vertical gradient
        texture = 0.8 * (y / max(height - 1, 1) - 0.5) + 0.05 * rng.standard_normal((height, width), np.float32)
    elif class_id == 1:  # grass: fine noise
        texture = 0.8 * rng.standard_normal((height, width), np.float32)
    elif class_id == 2:  # water: horizontal waves
        period = 9.0 * jitter
        texture = np.sin(2 * np.pi * y / period + 1.5 * np.sin(2 * np.pi * x / 64.0) + phase)
    elif class_id == 3:  # brick: staggered 24x12 bricks with mortar
        row = np.floor(y / 12.0)
        x_shifted = x + 12.0 * (row % 2)
        mortar = ((y % 12.0) < 2.0) | ((x_shifted % 24.0) < 2.0)
        brick_shade = 0.3 * np.sin(row * 2.1 + np.floor(x_shifted / 24.0) * 1.7 + phase)
        texture = np.where(mortar, 1.8, brick_shade)
    elif class_id == 4:  # sand: diagonal stripes at 45 degrees
        period = 10.0 * jitter
        texture = 0.8 * np.sin(2 * np.pi * (x + y) / (period * np.sqrt(2.0)) + phase)
    elif class_id == 5:  # rock: blotches
        texture = 1.2 * _blotches(rng, height, width, 8)
    elif class_id == 6:  # flowers: polka dots
        period = 8.0 * jitter
        dots = np.sin(2 * np.pi * y / period + phase) * np.sin(2 * np.pi * x / period)
        texture = np.where(dots > 0.5, 1.0, -0.8)
    else:  # metal: thin vertical stripes plus a horizontal gradient
        texture = 0.5 * np.where((x % 4.0) < 2.0, 1.0, -1.0) + 0.6 * (x / max(width - 1, 1) - 0.5)
    return np.broadcast_to(texture, (height, width)).astype(np.float32)


def _ignore_band(labels: np.ndarray) -> np.ndarray:
    """Pixels whose right or lower neighbour has another class (HxW bool)."""
    band = np.zeros(labels.shape, dtype=bool)
    band[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    band[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return band


def make_sample(index: int, seed: int = 0, size: tuple[int, int] = (256, 256)) -> tuple[np.ndarray, np.ndarray]:
    """Generate sample ``index`` of the synthetic set drawn with ``seed``.

    Args:
        index: sample index (>= 0); class ``index % NUM_CLASSES`` is always present.
        seed: seed of the whole set; the builtin data set uses :data:`DEFAULT_SEED`.
        size: (height, width) in pixels, each >= 8.

    Returns:
        ``(image, label)``: image HxWx3 uint8 RGB, label HxW uint8 with values in
        ``0..NUM_CLASSES-1`` or :data:`IGNORE_INDEX` on the one-pixel boundary band.
    """
    height, width = int(size[0]), int(size[1])
    if index < 0 or height < 8 or width < 8:
        raise ValueError(f"expected index >= 0 and a size of at least 8x8, found index {index}, size {size}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))
    classes = _layout(rng, index, height, width)
    image = np.empty((height, width, 3), dtype=np.float32)
    for class_id in range(NUM_CLASSES):
        # Draw the colour and texture of every class, present or not, so that the random
        # stream (hence each class' look) does not depend on which classes the layout used.
        colour = _BASE_COLOURS[class_id] + rng.uniform(-18, 18, size=3).astype(np.float32)
        amplitude = np.float32(rng.uniform(22, 32))
        texture_rng = np.random.default_rng(rng.integers(0, 2**63))
        mask = classes == class_id
        if not mask.any():
            continue
        texture = _texture(class_id, texture_rng, height, width)[mask]
        image[mask] = colour[None, :] + amplitude * texture[:, None]
    image += rng.normal(0.0, 3.0, size=image.shape).astype(np.float32)  # sensor-like noise
    image_u8 = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    labels = classes.copy()
    labels[_ignore_band(classes)] = IGNORE_INDEX
    return image_u8, labels
