"""Classical codecs as baselines: code images, measure them, and return section-6 rows.

Codecs (backends in :mod:`semlic.image_codecs`): ``jpeg``,
``jpeg2000``, ``webp``, ``avif``, ``jxl`` and ``hevc``: x265 intra at a fixed QP, chroma
4:4:4, psy-rd off, full-range BT.601 YCbCr: the BPG equivalent checked against
CompressAI's ``bpgenc -f 444 -c ycbcr -e x265`` curve in reports/calibration.md.
Each sweeps its codec's ``default_sweep`` unless told otherwise (HEVC: QP 47..12 step 5).

Bytes counted: the **whole file** each codec writes, container included. For HEVC that is
the HEIF file libheif writes: the HEVC slice data (the ``mdat`` payload) plus ``ftyp`` and
``meta`` boxes (item info, properties, and the ``hvcC`` record that holds the VPS/SPS/PPS a
raw stream would carry too). A BPG file wraps the same slice data in a header of about
10-20 bytes, so HEIF costs a few hundred bytes more per image; :func:`heif_layout` measures
it and the HEVC rows split their bits into ``hevc_mdat`` and ``heif_container`` layers.

Distortion: PSNR-RGB, per-channel PSNR, MS-SSIM and LPIPS (:mod:`semlic.lpips`, on the CPU;
NaN without its weights) of the decoded image against the original.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

import numpy as np

from . import image_codecs as codecs
from . import lpips, metrics, results
from .errors import ConfigError, LayerError
from .fileio import atomic_write_bytes
from .imageio import load_image

#: The commands this module adds to ``semlic`` (read by semlic.cli without importing it).
COMMANDS = {
    "baselines": "code images with the classical codecs; write the files and rows.parquet",
}

BASELINE_CODECS = ("jpeg", "jpeg2000", "webp", "avif", "jxl", "hevc")
# Read from each codec's one declaration (semlic.image_codecs.CODECS):
FILE_EXTENSIONS = {name: codecs.CODECS[name].extension for name in BASELINE_CODECS}
DEFAULT_OPTIONS: dict[str, dict] = {name: dict(codecs.CODECS[name].default_options) for name in BASELINE_CODECS
                                    if codecs.CODECS[name].default_options}
#: Accepted knob values: (lowest, highest, lowest excluded).
QUALITY_RANGES = {name: codecs.CODECS[name].quality_range for name in BASELINE_CODECS}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".ppm", ".webp")


class CodedImage(NamedTuple):
    data: bytes
    reconstruction: np.ndarray
    enc_s: float
    dec_s: float


class HeifLayout(NamedTuple):
    """Where the bytes of a HEIF file go (sizes in bytes)."""

    file_bytes: int
    mdat_payload_bytes: int    # HEVC slice data (length-prefixed NAL units)
    parameter_set_bytes: int   # VPS/SPS/PPS NAL units stored in the hvcC box

    @property
    def container_bytes(self) -> int:
        """Everything but the slice data: file size minus the ``mdat`` payload."""
        return self.file_bytes - self.mdat_payload_bytes


def _check_codec(codec_name: str) -> codecs.ImageCodec:
    if codec_name not in BASELINE_CODECS:
        raise ConfigError(f"unknown baseline codec {codec_name!r}; known: {', '.join(BASELINE_CODECS)}")
    return codecs.get_codec(codec_name)


def _check_quality(codec_name: str, quality: float) -> None:
    low, high, low_excluded = QUALITY_RANGES[codec_name]
    if codec_name != "jpeg2000" and quality != int(quality):
        raise ConfigError(f"{codec_name}: {codecs.get_codec(codec_name).quality_name} must be a whole number, "
                          f"got {quality:g}")
    if not (low < quality if low_excluded else low <= quality) or not quality <= high:
        raise ConfigError(f"{codec_name}: {codecs.get_codec(codec_name).quality_name} must be in "
                          f"{'(' if low_excluded else '['}{low}, {high}], got {quality:g}")


def code_image_bytes(image: np.ndarray, codec_name: str, quality: float, **options) -> CodedImage:
    """Encode then decode one HxWx3 uint8 image; time both (wall clock, seconds)."""
    codec = _check_codec(codec_name)
    _check_quality(codec_name, quality)
    options = {**DEFAULT_OPTIONS.get(codec_name, {}), **options}
    start = time.perf_counter()
    data = codec.encode(image, quality, **options)
    encoded = time.perf_counter()
    reconstruction = codec.decode(data, channels=3)
    decoded = time.perf_counter()
    if reconstruction.shape != image.shape:
        raise LayerError(f"{codec_name} decoded {reconstruction.shape}, expected {image.shape}")
    return CodedImage(data, reconstruction, encoded - start, decoded - encoded)


def code_image_baseline(image: np.ndarray, codec_name: str, quality: float, **options):
    """Code one image: ``(reconstruction, nbytes, enc_s, dec_s)`` with nbytes the whole file."""
    coded = code_image_bytes(image, codec_name, quality, **options)
    return coded.reconstruction, len(coded.data), coded.enc_s, coded.dec_s


def _boxes(data: bytes, start: int, end: int):
    """ISO BMFF boxes in data[start:end]: (type, payload start, box end)."""
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            size, header = struct.unpack_from(">Q", data, pos + 8)[0], 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise LayerError(f"HEIF box {kind!r} at byte {pos} declares {size} bytes, beyond the file")
        yield kind.decode("latin-1"), pos + header, pos + size
        pos += size


def _hvcc_parameter_set_bytes(data: bytes, start: int, end: int) -> int:
    """Sum of the NAL unit sizes in an hvcC record (ISO/IEC 14496-15, 8.3.3.1)."""
    pos, total = start + 22, 0
    (num_arrays,) = struct.unpack_from(">B", data, pos)
    pos += 1
    for _ in range(num_arrays):
        (num_nalus,) = struct.unpack_from(">H", data, pos + 1)
        pos += 3
        for _ in range(num_nalus):
            (length,) = struct.unpack_from(">H", data, pos)
            total, pos = total + length, pos + 2 + length
    if pos > end:
        raise LayerError("HEIF hvcC record runs past its box")
    return total


def heif_layout(data: bytes) -> HeifLayout:
    """Measure a HEIF file: total size, ``mdat`` payload, and HEVC parameter sets in ``hvcC``."""
    mdat = parameter_sets = 0
    for kind, payload, end in _boxes(data, 0, len(data)):
        if kind == "mdat":
            mdat += end - payload
        elif kind == "meta":  # a FullBox: 4 bytes of version and flags before its children
            for child, child_payload, child_end in _boxes(data, payload + 4, end):
                if child != "iprp":
                    continue
                for ipco, ipco_payload, ipco_end in _boxes(data, child_payload, child_end):
                    if ipco != "ipco":
                        continue
                    for prop, prop_payload, prop_end in _boxes(data, ipco_payload, ipco_end):
                        if prop == "hvcC":
                            parameter_sets += _hvcc_parameter_set_bytes(data, prop_payload, prop_end)
    if mdat == 0:
        raise LayerError("not a HEIF file with image data: no mdat box")
    return HeifLayout(len(data), mdat, parameter_sets)


def _layer_bits(codec_name: str, data: bytes) -> dict[str, int]:
    if codec_name == "hevc":
        layout = heif_layout(data)
        return {"hevc_mdat": 8 * layout.mdat_payload_bytes, "heif_container": 8 * layout.container_bytes}
    return {codec_name: 8 * len(data)}


def quality_label(quality: float) -> str:
    """The knob as written in file names: ``47``, ``2.5``."""
    return f"{quality:g}"


def _code_image_file(path: str, image_id: str, plan: Sequence[tuple[str, tuple, dict]], out_dir: str | None,
                     dataset: str, git_rev: str, with_lpips: bool = True) -> list[dict]:
    """Code one image file at every (codec, quality) of ``plan``; one row per point."""
    image = load_image(path)
    height, width = image.shape[:2]
    lpips_ref = lpips.reference(image, enabled=with_lpips)   # the original's LPIPS features, once per image (CPU)
    rows = []
    for codec_name, qualities, options in plan:
        codec = codecs.get_codec(codec_name)
        run_params = results.params_hash({"method": codec_name, "options": options})
        for quality in qualities:
            coded = code_image_bytes(image, codec_name, quality, **options)
            if out_dir is not None:
                name = f"{image_id}_{quality_label(quality)}.{FILE_EXTENSIONS[codec_name]}"
                atomic_write_bytes(Path(out_dir) / codec_name / name, coded.data)
            rows.append(results.make_row(
                dataset=dataset, image_id=image_id, method=codec_name, quality=quality,
                quality_name=codec.quality_name, height=height, width=width, bytes_total=len(coded.data),
                layer_bits=_layer_bits(codec_name, coded.data),
                psnr_rgb=metrics.psnr_rgb(image, coded.reconstruction),
                psnr_channel_mean=metrics.psnr_channel_mean(image, coded.reconstruction),
                ms_ssim=metrics.ms_ssim_rgb(image, coded.reconstruction),
                lpips=lpips_ref.distance(coded.reconstruction),
                enc_s=coded.enc_s, dec_s=coded.dec_s, device="cpu", git_rev=git_rev, params_hash=run_params,
            ))
    return rows


def _single_threaded_worker() -> None:
    """Each worker process computes MS-SSIM and LPIPS on one thread (torch reads this when first imported)."""
    os.environ["OMP_NUM_THREADS"] = "1"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def _plan(codec_names: Sequence[str], sweep, options) -> list[tuple[str, tuple, dict]]:
    if not codec_names:
        raise ConfigError("no codec given; known: " + ", ".join(BASELINE_CODECS))
    plan = []
    for codec_name in dict.fromkeys(codec_names):
        codec = _check_codec(codec_name)
        if sweep is None:
            qualities = codec.default_sweep
        elif isinstance(sweep, Mapping):
            qualities = sweep.get(codec_name, codec.default_sweep)
        else:
            qualities = sweep
        qualities = tuple(dict.fromkeys(float(q) for q in qualities))
        if not qualities:
            raise ConfigError(f"{codec_name}: empty quality sweep")
        for quality in qualities:
            _check_quality(codec_name, quality)
        plan.append((codec_name, qualities, {**DEFAULT_OPTIONS.get(codec_name, {}), **(options or {}).get(codec_name, {})}))
    return plan


def run_baselines(image_paths: Sequence[str | Path], codec_names: Sequence[str], out_dir: str | Path | None = None,
                  sweep: Sequence[float] | Mapping[str, Sequence[float]] | None = None, dataset: str = "custom",
                  workers: int = 1, options: Mapping[str, dict] | None = None, progress: bool = True,
                  with_lpips: bool = True) -> list[dict]:
    """Code every image at every quality of each codec; return the rows, sorted.

    ``sweep``: None (each codec's default sweep), one list for all codecs, or a mapping
    codec -> list. ``options``: extra encoder options per codec (e.g. ``{"hevc": {"chroma":
    "420"}}``). ``out_dir``: also write ``out_dir/<method>/<image_id>_<quality>.<ext>``.
    ``workers`` > 1 codes images in that many processes (one image per task). ``with_lpips``
    False leaves the rows' LPIPS NaN (it costs about a third of the time of a 480x360 image).
    """
    from tqdm import tqdm

    plan = _plan(codec_names, sweep, options)
    results.check_partition_value("dataset", dataset)
    paths = [Path(p) for p in image_paths]
    if not paths:
        raise ConfigError("no images given")
    image_ids = [p.stem for p in paths]
    if len(set(image_ids)) != len(image_ids):
        raise ConfigError(f"image file names must have distinct stems (used as image ids), got {image_ids}")
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    git_rev = results.git_revision()
    out = None if out_dir is None else str(out_dir)
    jobs = [(str(p), i, plan, out, dataset, git_rev, with_lpips) for p, i in zip(paths, image_ids)]
    rows: list[dict] = []
    points = sum(len(q) for _, q, _ in plan)
    with tqdm(total=len(jobs) * points, unit="file", desc="baselines", disable=not progress) as bar:
        if workers == 1:
            for job in jobs:
                rows += _code_image_file(*job)
                bar.update(points)
        else:
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn"),
                                     initializer=_single_threaded_worker) as pool:
                for future in as_completed([pool.submit(_code_image_file, *job) for job in jobs]):
                    rows += future.result()
                    bar.update(points)
    return sorted(rows, key=lambda r: tuple(r[k] for k in results.SORT_KEY))


def expand_image_paths(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given; folders replaced by their image files (sorted by name)."""
    expanded = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ConfigError(f"{path}: folder holds no image ({', '.join(IMAGE_SUFFIXES)})")
            expanded += found
        else:
            expanded.append(path)
    return expanded


def _cli(args: argparse.Namespace) -> int:
    out = Path(args.out)
    rows = run_baselines(expand_image_paths(args.images), args.codec, out_dir=out, sweep=args.quality,
                         dataset=args.dataset, workers=args.workers, progress=not args.no_progress)
    path = results.write_rows(rows, out / "rows.parquet")
    for codec_name in dict.fromkeys(args.codec):
        mine = [r for r in rows if r["method"] == codec_name]
        print(f"{codec_name}: {len(mine)} files, mean {np.mean([r['bpp'] for r in mine]):.4f} bpp, "
              f"mean PSNR-RGB {np.mean([r['psnr_rgb'] for r in mine]):.2f} dB")
    print(f"wrote {len(rows)} rows to {path}")
    return 0


def register_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "baselines", help=COMMANDS["baselines"],
        description="Code images with JPEG, JPEG 2000, WebP, AVIF, JPEG XL or HEVC (4:4:4, the BPG "
                    "equivalent) over a quality sweep; write OUT/<codec>/<image>_<q>.<ext> and OUT/rows.parquet.",
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files, or folders of images")
    parser.add_argument("--codec", action="append", required=True, choices=BASELINE_CODECS,
                        help="codec to run (repeat for several)")
    parser.add_argument("--quality", action="append", type=float, metavar="Q",
                        help="quality knob (HEVC QP, JPEG 2000 ratio, else quality), repeat for several; "
                             "default: each codec's own sweep")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--dataset", default="custom", help="dataset name written in the rows (default: custom)")
    parser.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_cli)
