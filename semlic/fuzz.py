"""Coverage-guided fuzzing (atheris) of what semlic reads from others: ``python -m semlic.fuzz TARGET``.

The contract, for every target: any input either decodes or raises a
:class:`~semlic.errors.SemlicError` subclass; nothing else escapes; no input makes the process
hold more than ``--rss-limit-mb`` (libFuzzer's limit, default 2048 MiB: the process's own
~0.9 GiB of torch, tiny models and instrumentation, plus 1 GiB an input may cost) or run longer than
``--timeout`` seconds (default 20). An input that breaks it is a crash: libFuzzer stops and
writes it to ``<artifacts>/crash-<sha1>`` (or ``oom-``/``timeout-``), and the command exits
non-zero.

========  ======================================================================================
target    what one input goes through
========  ======================================================================================
sem       a .sem file: :func:`semlic.format.unpack`, then the method it names decodes it with
          tiny models of every registered method (:func:`tiny_models`); then the same bytes with
          their checksums repaired (:func:`repair_checksums`), so that mutations get past the
          CRCs into the methods' sections and layers
image     :func:`semlic.imageio.load_image` on the bytes as a file (every format Pillow and
          its HEIF / JPEG XL plugins open), under a pixel limit of 4 million
labels    :func:`semlic.imageio.load_label_map`, same
manifest  a prepared data set's ``manifest.parquet`` read by
          :func:`semlic.segnet.prepared.list_prepared`
========  ======================================================================================

The seed corpus (:func:`seeds`) has valid inputs of every kind: a file of every registered
method at two qualities, images in every format semlic codes (and BMP, GIF, TIFF), label maps,
a manifest. ``benchmarks/fuzz.py`` runs each target for a million inputs and writes
reports/fuzz.md; the test suite runs a short fuzz of each.
"""

from __future__ import annotations

import argparse
import io
import os
import struct
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import SemlicError

TARGETS = ("sem", "image", "labels", "manifest")
INSTRUMENTED = ("semlic", "PIL", "pillow_heif", "pillow_jxl")
FUZZ_MAX_PIXELS = 1 << 22
NUM_CLASSES = 5


# --- the seed inputs --------------------------------------------------------------------------
def seed_image(h: int = 32, w: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A small structured image and a matching map of :data:`NUM_CLASSES` classes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    seg = ((xx / w * 3).astype(np.uint8) + (yy > h / 2)).astype(np.uint8) % NUM_CLASSES
    base = np.stack([120 + 80 * np.sin(xx / 5), 100 + 60 * np.cos(yy / 4), 40 * seg], -1)
    return np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8), seg


def tiny_models(seed: int = 0) -> dict:
    """Randomly initialised tiny networks of every registered method (same seed, same weights)."""
    import torch

    from .methods import all_methods
    from .model_files import build_model, model_spec

    torch.manual_seed(seed)
    wanted = sorted({name for m in all_methods() for name in (*m.models, *m.encoder_models)})
    models = {}
    for name in wanted:
        if name == "hyperprior":
            from .methods.latent_seg.hyperprior import HyperpriorBank, HyperpriorConfig

            bank = HyperpriorBank(HyperpriorConfig(qualities=(1, 3), widths={"1": [8, 8], "3": [8, 8]}))
            bank.update_tables()
            models[name] = bank.eval()
        elif model_spec(name).preset is not None:
            models[name] = build_model(name, "tiny", NUM_CLASSES).eval()
            if hasattr(models[name], "update_tables"):   # a learned entropy coder's tables
                models[name].update_tables()
    return models


def sem_seeds(models: dict) -> list[bytes]:
    """Files of every registered method whose models :func:`tiny_models` builds, at two qualities."""
    from .methods import all_methods

    image, seg = seed_image()
    files = []
    for method in all_methods():
        if not all(name in models for name in method.models):
            continue
        qualities = list(method.default_qualities)[:1] + list(method.default_qualities)[-1:]
        needs_map = method.uses_segmentation and not all(n in models for n in method.encoder_models)
        variants = [{}] + ([{"residual_depth": 10}] if "residual_depth" in method.options else [])  # hevc10 layers
        for options in variants:
            for result in method.encode_many(image, models, qualities, segmentation=seg if needs_map else None,
                                             **options):
                files.append(result.data)
    return files


def image_seeds() -> list[bytes]:
    from PIL import Image

    from .image_codecs import CODECS

    image, _ = seed_image(24, 32)
    out = []
    for codec in CODECS.values():
        try:
            quality = None if codec.lossless else codec.default_sweep[len(codec.default_sweep) // 2]
            out.append(codec.encode(image, quality))
        except SemlicError:   # a codec whose plugin is missing here
            continue
    for fmt in ("BMP", "GIF", "TIFF", "PPM"):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format=fmt)
        out.append(buffer.getvalue())
    return out


def label_seeds() -> list[bytes]:
    from PIL import Image

    _, seg = seed_image(24, 32)
    out = []
    for mode in ("L", "P"):
        buffer = io.BytesIO()
        Image.fromarray(seg, "L").convert(mode).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def manifest_seeds() -> list[bytes]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.table({"id": ["a", "b"], "split": ["train", "train"]}), buffer)
    return [buffer.getvalue()]


def seeds(target: str, models: dict | None = None) -> list[bytes]:
    if target == "sem":
        return sem_seeds(models if models is not None else tiny_models())
    return {"image": image_seeds, "labels": label_seeds, "manifest": manifest_seeds}[target]()


# --- the targets ----------------------------------------------------------------------------------
def repair_checksums(data: bytes) -> bytes:
    """``data`` with the header's and every complete layer's CRC-32 recomputed (version 2)."""
    from . import format as fmt

    if len(data) < fmt._HEADER.size or data[:4] != fmt.MAGIC or data[4] != 2:
        return data
    size = fmt._HEADER.size + data[fmt._HEADER.size - 1]
    if len(data) < size + 4:
        return data
    out = bytearray(data)
    struct.pack_into("<I", out, size, zlib.crc32(out[:size]))
    offset = size + 4
    while offset + fmt.LAYER_HEADER_BYTES <= len(out):
        role, codec, length, _ = fmt._LAYER.unpack_from(out, offset)
        end = offset + fmt.LAYER_HEADER_BYTES + length
        if end > len(out):
            break
        crc = zlib.crc32(bytes(out[offset + fmt.LAYER_HEADER_BYTES:end]), zlib.crc32(struct.pack("<BBI", role, codec,
                                                                                                  length)))
        struct.pack_into("<I", out, offset + 6, crc)
        offset = end
    return bytes(out)


class SemTarget:
    def __init__(self, models: dict | None = None):
        self.models = models if models is not None else tiny_models()

    def decode(self, data: bytes):
        from . import format as fmt
        from .methods import get_method

        sem = fmt.unpack(data)
        method = get_method(sem.method)
        return method.decode(data, {name: self.models[name] for name in method.models if name in self.models},
                             max_pixels=FUZZ_MAX_PIXELS)

    def __call__(self, data: bytes) -> None:
        for candidate in dict.fromkeys((data, repair_checksums(data))):
            try:
                self.decode(candidate)
            except SemlicError:
                pass


class FileTarget:
    """A reader of a path, given the input as a file (in memory where /dev/shm exists)."""

    def __init__(self, reader: Callable, suffix: str):
        folder = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self.dir = tempfile.mkdtemp(prefix="semlic-fuzz-", dir=folder)
        self.path = Path(self.dir) / f"input{suffix}"
        self.reader = reader

    def __call__(self, data: bytes) -> None:
        self.path.write_bytes(data)
        try:
            self.reader(self.path)
        except SemlicError:
            pass


def _manifest_reader(path: Path) -> None:
    from .segnet.prepared import list_prepared  # imported (and instrumented) by make_target

    root = path.parent / "prepared"
    (root / "train" / "images").mkdir(parents=True, exist_ok=True)
    os.replace(path, root / "manifest.parquet")
    list_prepared(root, "train")


def make_target(name: str, models: dict | None = None) -> Callable[[bytes], None]:
    from .imageio import load_image, load_label_map

    if name == "sem":
        import torch

        torch.set_num_threads(1)
        return SemTarget(models)
    if name == "image":
        return FileTarget(lambda path: load_image(path, max_pixels=FUZZ_MAX_PIXELS), "")
    if name == "labels":
        return FileTarget(lambda path: load_label_map(path, max_pixels=FUZZ_MAX_PIXELS), ".png")
    if name == "manifest":
        from .segnet import prepared  # noqa: F401  (imported here, where the fuzzer instruments imports)

        return FileTarget(_manifest_reader, ".parquet")
    raise ValueError(f"unknown fuzz target {name!r}; targets: {', '.join(TARGETS)}")


# --- the fuzzer -------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m semlic.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("target", choices=TARGETS)
    parser.add_argument("--runs", type=int, default=10000, help="inputs to try (libFuzzer -runs)")
    parser.add_argument("--corpus", help="corpus folder (seeded when empty; grows with new coverage)")
    parser.add_argument("--artifacts", default=".", help="where a crashing input is written")
    parser.add_argument("--rss-limit-mb", type=int, default=2048,
                        help="libFuzzer's memory limit: the process's own ~0.9 GiB (torch, the tiny models, "
                             "the instrumented modules) plus 1 GiB for what one input may make it allocate")
    parser.add_argument("--timeout", type=int, default=20, help="seconds one input may take")
    parser.add_argument("--max-len", type=int, default=1 << 16)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--replay", nargs="+", metavar="FILE",
                        help="run these inputs once each under libFuzzer (a crash found earlier) instead of fuzzing")
    args = parser.parse_args(argv)

    import atheris

    # coverage of semlic's own code and of the Python parts of Pillow and its plugins (not of torch,
    # numpy or pandas: instrumenting them costs more than it finds)
    with atheris.instrument_imports(include=list(INSTRUMENTED)):
        target = make_target(args.target)
        from . import format, image_codecs, imageio, layers, sparse  # noqa: F401  (imported while instrumenting)
    if args.replay:
        atheris.Setup([sys.argv[0], f"-rss_limit_mb={args.rss_limit_mb}", f"-timeout={args.timeout}", *args.replay],
                      target)
        atheris.Fuzz()
    corpus = Path(args.corpus or tempfile.mkdtemp(prefix=f"semlic-corpus-{args.target}-"))
    corpus.mkdir(parents=True, exist_ok=True)
    if not any(corpus.iterdir()):
        for i, data in enumerate(seeds(args.target, getattr(target, "models", None))):
            (corpus / f"seed-{i:03d}").write_bytes(data)
    for data in (p.read_bytes() for p in sorted(corpus.iterdir())):   # the seeds themselves keep the contract
        target(data)
    Path(args.artifacts).mkdir(parents=True, exist_ok=True)
    flags = [f"-runs={args.runs}", f"-rss_limit_mb={args.rss_limit_mb}", f"-timeout={args.timeout}",
             f"-max_len={args.max_len}", f"-seed={args.seed}", "-print_final_stats=1",
             f"-artifact_prefix={Path(args.artifacts).absolute()}/", str(corpus)]
    atheris.Setup([sys.argv[0], *flags], target)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
