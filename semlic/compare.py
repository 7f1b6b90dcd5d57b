"""``semlic compare IMAGE --methods dsslic,edms,hevc,jpeg --bpp 0.5 --out compare.png``.

Codes one image with each named method (a registered method at each of its default qualities,
or a classical codec over its default sweep), keeps the file whose bpp (every byte of it) is
nearest the target, decodes it from its bytes and writes the original and every decoded image
side by side in one PNG, each captioned with its method, quality, bpp and PSNR-RGB; the same
figures are printed as a table. ``--maps`` adds, after each method's image, the segmentation its
decoder holds without the image (semlic.machines: DSSLIC's map, the map EDMS derives, SMIC's
decoded map), in class colours and captioned with the bits it reads.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from . import metrics
from .errors import ConfigError

#: The commands this module adds to ``semlic`` (read by semlic.cli without importing it).
COMMANDS = {
    "compare": "code one image with several methods near a target bpp; a side-by-side PNG",
}


def candidates(image: np.ndarray, name: str, store, segmentation=None):
    """(quality, file bytes, decoded image) for every quality of method or codec ``name``."""
    from .baselines import BASELINE_CODECS, code_image_bytes
    from .image_codecs import get_codec
    from .methods import get_method, method_names

    if name in BASELINE_CODECS:
        for quality in get_codec(name).default_sweep:
            coded = code_image_bytes(image, name, quality)
            yield quality, coded.data, coded.reconstruction
        return
    if name not in method_names():
        raise ConfigError(f"compare: {name!r} is neither a registered method ({', '.join(method_names())}) "
                          f"nor a baseline codec ({', '.join(BASELINE_CODECS)})")
    method = get_method(name)
    models = store.models(method.models + (method.encoder_models if segmentation is None else ()))
    for result, quality in zip(method.encode_many(image, models, method.default_qualities, segmentation=segmentation),
                               method.default_qualities):
        yield quality, result.data, method.decode(result.data, models)   # from the bytes, as a receiver would


def compare(image: np.ndarray, names: list[str], target_bpp: float, store, segmentation=None) -> list[dict]:
    """Per name: the coded file nearest ``target_bpp`` (by the ratio of the rates), with its figures."""
    if target_bpp <= 0:
        raise ConfigError(f"compare: the target bpp must be positive, got {target_bpp}")
    h, w = image.shape[:2]
    chosen = []
    for name in names:
        best = None
        for quality, data, decoded in candidates(image, name, store, segmentation):
            bpp = metrics.bpp(len(data), h, w)
            distance = abs(math.log(bpp / target_bpp))
            if best is None or distance < best[0]:
                best = (distance, quality, bpp, len(data), decoded, data)
        _, quality, bpp, nbytes, decoded, data = best
        chosen.append({"method": name, "quality": quality, "bytes": nbytes, "bpp": bpp,
                       "psnr_rgb": metrics.psnr_rgb(image, decoded), "ms_ssim": metrics.ms_ssim_rgb(image, decoded),
                       "image": decoded, "data": data})
    return chosen


def class_colours(labels: np.ndarray) -> np.ndarray:
    """An (H, W) class map as an RGB picture: one fixed colour per class (golden-angle hues), void black."""
    import colorsys

    table = np.zeros((256, 3), np.uint8)
    for k in range(255):
        table[k] = [round(255 * v) for v in colorsys.hsv_to_rgb((k * 0.618034) % 1.0, 0.65, 0.95)]
    return table[np.asarray(labels, dtype=np.uint8)]


def decoder_map_tiles(chosen: dict, store) -> list[tuple[str, np.ndarray]]:
    """(caption, picture) of every map the chosen file's decoder holds without the image (none for a
    classical codec or a method that delivers none)."""
    from . import format as fmt
    from .methods import get_method

    if chosen["data"][:4] != fmt.MAGIC:
        return []
    sem = fmt.unpack(chosen["data"])
    method = get_method(sem.method)
    models = store.models(tuple(dict.fromkeys(method.models + method.task_models)))
    tiles = []
    for output, found in sorted(method.decoder_maps(method.open(sem, models), models).items()):
        bpp = metrics.bpp(method.bytes_read(sem, found.roles), sem.height, sem.width)
        tiles.append((f"{chosen['method']} {output}: {bpp:.3f} bpp", class_colours(found.labels)))
    return tiles


def default_target(image: np.ndarray, name: str, store, segmentation=None) -> float:
    """The bpp of ``name`` (a registered method) at its default quality: the target when none is given."""
    from .methods import get_method, method_names

    if name not in method_names():
        raise ConfigError(f"compare: without --bpp the first of --methods must be a registered method (its default "
                          f"quality sets the target), got {name!r}")
    method = get_method(name)
    models = store.models(method.models + (method.encoder_models if segmentation is None else ()))
    result = method.encode(image, models, method.parse_quality(method.default_quality), segmentation=segmentation)
    h, w = image.shape[:2]
    return metrics.bpp(len(result.data), h, w)


def contact_sheet(image: np.ndarray, chosen: list[dict], per_row: int = 4, caption_px: int = 16) -> np.ndarray:
    """The original and every decoded image in a grid, each with a caption strip above it (and after
    it, the pictures of its ``maps``: (caption, picture) pairs)."""
    from PIL import Image, ImageDraw

    h, w = image.shape[:2]
    tiles = [("original", image)]
    for c in chosen:
        tiles.append((f"{c['method']} q{c['quality']}: {c['bpp']:.3f} bpp, {c['psnr_rgb']:.2f} dB", c["image"]))
        tiles.extend(c.get("maps", ()))
    rows = math.ceil(len(tiles) / per_row)
    cols = min(per_row, len(tiles))
    sheet = Image.new("RGB", (cols * w, rows * (h + caption_px)), "white")
    draw = ImageDraw.Draw(sheet)
    for index, (caption, tile) in enumerate(tiles):
        x, y = (index % per_row) * w, (index // per_row) * (h + caption_px)
        draw.text((x + 3, y + 2), caption, fill="black")
        sheet.paste(Image.fromarray(tile), (x, y + caption_px))
    return np.asarray(sheet)


def _cli(args: argparse.Namespace) -> int:
    from .commands import _store
    from .imageio import load_image, load_label_map, save_png

    image = load_image(args.image)
    segmentation = load_label_map(args.seg) if args.seg else None
    names = [n.strip() for n in args.methods.split(",") if n.strip()]
    if not names:
        raise ConfigError("compare: --methods names no method")
    store = _store(args)
    target = args.bpp if args.bpp is not None else default_target(image, names[0], store, segmentation)
    chosen = compare(image, names, target, store, segmentation)
    if args.maps:
        for c in chosen:
            c["maps"] = decoder_map_tiles(c, store)
    save_png(args.out, contact_sheet(image, chosen))
    print(f"{'method':<14} {'quality':>10} {'bytes':>9} {'bpp':>8} {'PSNR-RGB':>9} {'MS-SSIM':>8}")
    for c in chosen:
        print(f"{c['method']:<14} {str(c['quality']):>10} {c['bytes']:>9} {c['bpp']:>8.4f} {c['psnr_rgb']:>9.2f} "
              f"{c['ms_ssim']:>8.4f}")
    for c in chosen:
        for caption, _ in c.get("maps", ()):
            print(f"  decoder-side map of {caption}")
    print(f"{args.out}: the original and {len(chosen)} decoded images nearest {target:.4g} bpp"
          + ("" if args.bpp is not None else f" ({names[0]} at its default quality)"))
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    from .commands import _model_arguments

    p = sub.add_parser("compare", help=COMMANDS["compare"])
    p.add_argument("image")
    p.add_argument("--methods", required=True,
                   help="comma-separated registered methods and baseline codecs, e.g. dsslic,edms,hevc,jpeg")
    p.add_argument("--bpp", type=float,
                   help="the target rate (bits per pixel of the whole file; default: the rate of the first method "
                        "of --methods at its default quality)")
    p.add_argument("--out", required=True, help="the side-by-side PNG")
    p.add_argument("--seg", help="the image's segmentation map (methods that use one; else their network runs)")
    p.add_argument("--maps", action="store_true",
                   help="also show the segmentation each method's decoder holds without the image, and its bpp")
    _model_arguments(p)
    p.set_defaults(func=_cli)
