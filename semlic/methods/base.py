"""The method protocol: what every semantic coding system implements.

In the spirit of CompressAI's ``latent_codecs/base.py``: a :class:`Method` turns an image into
one ``.sem`` file and back, given the networks it needs (a :class:`ModelSet`, keyed by the
registered model names of :mod:`semlic.model_files`). It owns the header's method section
(its own parameters) and the meaning of its layers' roles; the core (file format, code stage,
CLI, aggregate) only calls what is declared here.

A quality is whatever the method's knob is (DSSLIC: a residual QP or ``None``; a pair for a
two-knob method); :meth:`Method.parse_quality` reads it from the command line or params,
:meth:`Method.quality_value` turns it into the float of the results schema and
:meth:`Method.quality_label` into the suffix of a coded file's name.
"""

from __future__ import annotations

import hashlib
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Mapping, Sequence

import numpy as np

from .. import format as fmt
from ..errors import ConfigError, FingerprintMismatchError, LayerError, MissingModelError

if TYPE_CHECKING:   # the networks come in with a method's code, when it encodes or decodes
    import torch

ModelSet = Mapping[str, "torch.nn.Module"]
"""Networks by registered model name (``{"dsslic": ..., "pspnet": ...}``)."""


@dataclass
class EncodeResult:
    """One coded image: the file's bytes and what the decoder will rebuild from them alone."""

    data: bytes
    reconstruction: np.ndarray                      # (H, W, 3) uint8, what decode(data) returns
    layer_bits: dict[str, int]                      # header and every layer; sums to 8 * len(data)
    quality: Any = None
    seconds: float = float("nan")                   # encoder wall time for this file, from the image alone
    timings: dict[str, float] = field(default_factory=dict)  # parts; network_s / entropy_s where known
    extras: dict[str, Any] = field(default_factory=dict)     # method by-products (prediction, maps)


@dataclass(frozen=True)
class DecoderMap:
    """A segmentation the receiver gets from a file without the image: the labels and the layers read.

    ``labels``: (H, W) uint8 class indices at the image's size (the number of classes or 255 for
    void). ``roles``: the layers the receiver reads for it; with the file header they are the bytes
    it needs (:meth:`Method.bytes_read`).
    """

    labels: np.ndarray
    roles: tuple[int, ...]


@dataclass(frozen=True)
class Option:
    """An encoder option of a method: its default, a parser and a help line."""

    default: Any
    parse: Any = None
    help: str = ""

    def read(self, name: str, value: Any) -> Any:
        if self.parse is None:
            return value
        try:
            return self.parse(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"option {name}: cannot use {value!r} ({exc})") from None


@dataclass(frozen=True)
class PaperPoint:
    """A published figure to put beside a measured curve (on the papers' own axis)."""

    source: str
    bits_per_subpixel: float
    psnr: float                  # mean of per-channel PSNRs, as the papers report
    ms_ssim: float
    quality: float | None = None  # the quality value (results schema) of the published setting, if known
    dataset: str = "Kodak"        # the data set the paper measured it on
    setting: str = ""             # the paper's name for the configuration (an ablation's row, e.g. "noSeg")


class Method(ABC):
    """A registered coding method; subclasses set the class attributes and the two abstract methods."""

    name: ClassVar[str]                          # registry id: rows, file names, the command line
    format_id: ClassVar[int]                     # the header's method byte (stable; unique)
    label: ClassVar[str]                         # for reports
    paper: ClassVar[str] = ""                    # the publication it implements
    models: ClassVar[tuple[str, ...]] = ()       # registered model names the decoder needs
    encoder_models: ClassVar[tuple[str, ...]] = ()  # more the encoder may use (e.g. a segmenter)
    uses_segmentation: ClassVar[bool] = False    # encode() takes a precomputed segmentation map
    quality_name: ClassVar[str] = "quality"
    default_qualities: ClassVar[tuple] = ()
    default_quality: ClassVar[Any] = None        # the quality `semlic encode` uses when none is given
    # The largest difference (grey levels) between the decoded image and the encoder's reconstruction
    # that another machine (other CPU kernels, thread count, device) may show: float synthesis rounds
    # a pixel the other way; 0: bit-exact everywhere (semlic.conformance checks it; docs: README).
    decode_tolerance: ClassVar[int] = 0
    options: ClassVar[dict[str, Option]] = {}    # encoder options and their defaults
    layer_roles: ClassVar[dict[int, str]] = {}   # role byte -> name (file layers, layer_bits)
    compare_to: ClassVar[str | None] = None      # the method the paper measures it against
    colour: ClassVar[str | None] = None          # plot colour
    paper_points: ClassVar[tuple[PaperPoint, ...]] = ()
    paper_seconds: ClassVar[dict[str, float]] = {}  # published timings: enc_gpu, dec_gpu, dec_cpu
    task_models: ClassVar[tuple[str, ...]] = ()  # more models decoder_maps needs (e.g. a palette's owner)

    # --- qualities and options ---------------------------------------------------------------
    def parse_quality(self, value: Any) -> Any:
        """A quality from the command line or params (default: a number)."""
        try:
            return float(value) if not isinstance(value, (int, float)) else value
        except (TypeError, ValueError):
            raise ConfigError(f"{self.name}: {self.quality_name} must be a number, got {value!r}") from None

    def quality_value(self, quality: Any) -> float:
        """The quality as the float of the results schema's ``quality`` column."""
        return float(quality)

    def quality_label(self, quality: Any) -> str:
        """The quality as the suffix of a coded file's name (``<image>_<label>.sem``)."""
        value = self.quality_value(quality)
        return str(int(value)) if value == int(value) else f"{value:g}"

    def encode_options(self, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Every option with its default, overridden by ``given``; unknown names are refused."""
        given = dict(given or {})
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            known = ", ".join(sorted(self.options)) or "none"
            raise ConfigError(f"{self.name}: unknown option(s) {unknown}; known: {known}")
        return {key: option.read(key, given.get(key, option.default)) for key, option in self.options.items()}

    # --- models ----------------------------------------------------------------------------
    def check_models(self, models: ModelSet, needed: Iterable[str] | None = None) -> None:
        """Refuse a missing model by name, saying how to give it."""
        missing = [name for name in (self.models if needed is None else needed) if models.get(name) is None]
        if missing:
            raise MissingModelError(
                f"method {self.name} needs the model(s) {', '.join(missing)}: give their files "
                f"(--model FILE, or --models-dir DIR holding them)")

    def fingerprint(self, models: ModelSet) -> bytes:
        """The 8 header bytes naming every weight the decoder needs.

        One model: its own fingerprint. Several: SHA-256 over the method name and each
        model's fingerprint, in :attr:`models` order.
        """
        self.check_models(models)
        prints = [module_fingerprint(models[name]) for name in self.models]
        if len(prints) == 1:
            return prints[0]
        return hashlib.sha256(b"\0".join([self.name.encode(), *prints])).digest()[:8]

    # --- coding ----------------------------------------------------------------------------
    @abstractmethod
    def encode(self, image: np.ndarray, models: ModelSet, quality: Any, *,
               segmentation: np.ndarray | None = None, **options) -> EncodeResult:
        """Code an (H, W, 3) uint8 image into one file.

        ``segmentation``: the image's (H, W) uint8 map, used by methods that
        :attr:`uses_segmentation` instead of running their own segmenter.
        """

    def encode_many(self, image: np.ndarray, models: ModelSet, qualities: Sequence[Any], *,
                    segmentation: np.ndarray | None = None, **options) -> list[EncodeResult]:
        """The image at each quality; a method overrides it to compute shared work once.

        Each result's ``seconds`` is what producing that file from the image alone costs.
        """
        out = []
        for quality in qualities:
            start = time.perf_counter()
            result = self.encode(image, models, quality, segmentation=segmentation, **options)
            result.seconds = time.perf_counter() - start
            out.append(result)
        return out

    @abstractmethod
    def decode_file(self, sem: fmt.SemFile, models: ModelSet) -> np.ndarray:
        """Rebuild the (H, W, 3) uint8 image from a parsed file whose fingerprint was checked."""

    def open(self, data: bytes | fmt.SemFile, models: ModelSet, max_pixels: int | None = None) -> fmt.SemFile:
        """Parse ``data``, check it is this method's file and that ``models`` are the ones it names.

        A file declaring more pixels than ``max_pixels`` (default: the limit of
        :func:`semlic.imageio.pixel_limit`, SEMLIC_MAX_PIXELS or 100 million) is refused before any
        layer is decoded: decoding it would cost memory in proportion (a decompression bomb).
        """
        from ..image_codecs import check_declared_size
        from ..imageio import pixel_limit

        sem = data if isinstance(data, fmt.SemFile) else fmt.unpack(data)
        if sem.method != self.name:
            raise LayerError(f"this is a {sem.method} file, not a {self.name} file")
        check_declared_size(sem.width, sem.height, f"the {sem.method} file", max_pixels=pixel_limit(max_pixels),
                            hint=" (a larger limit: SEMLIC_MAX_PIXELS=<pixels>)")
        self.check_models(models)
        found = self.fingerprint(models)
        if found != sem.fingerprint:
            names = " + ".join(self.models)
            raise FingerprintMismatchError(
                f"the file was made with {names} {sem.fingerprint.hex()}, the loaded {names} is {found.hex()}: "
                "load the model file(s) it was made with")
        return sem

    def decode(self, data: bytes | fmt.SemFile, models: ModelSet, max_pixels: int | None = None) -> np.ndarray:
        """Decode a file of this method from its bytes and the models alone (``max_pixels``: :meth:`open`)."""
        return self.decode_file(self.open(data, models, max_pixels), models)

    def entropy_parameters(self, data: bytes | fmt.SemFile, models: ModelSet) -> dict[str, np.ndarray]:
        """What the decoder computes from the file to choose or shape its probability models.

        They must come out bit-identical on every machine, or the entropy decoder desynchronises
        (semlic.conformance checks it). Empty (the default): the method's probability models are
        fixed tables of its model file or of a classical codec, computed from nothing in the file.
        """
        return {}

    def decode_many(self, files: Sequence[bytes], models: ModelSet) -> list[tuple[np.ndarray, float]]:
        """Decode several files (e.g. one image at each quality): (image, seconds) per file.

        Each file is decoded from its own bytes; a method overrides this to compute once what
        files with identical layers share (the mirror of :meth:`encode_many`). Each ``seconds``
        is what decoding that file alone costs.
        """
        out = []
        for data in files:
            start = time.perf_counter()
            image = self.decode(data, models)
            out.append((image, time.perf_counter() - start))
        return out

    # --- coding for machines ---------------------------------------------------------------------
    def decoder_maps(self, sem: fmt.SemFile, models: ModelSet) -> dict[str, DecoderMap]:
        """The segmentations the decoder holds from a parsed, checked file, by output name (e.g.
        ``{"map": ...}``); empty (the default) for a method that delivers none (semlic.machines)."""
        return {}

    def decoder_maps_many(self, files: Sequence[bytes], models: ModelSet) -> list[tuple[dict[str, DecoderMap], float]]:
        """:meth:`decoder_maps` of several files (one image at each quality): (maps, seconds) per file.

        Each file is read from its own bytes; a method overrides this to compute once what files
        with identical map layers share, as :meth:`decode_many` does. Each ``seconds`` is what
        reading that file's maps alone costs.
        """
        out = []
        for data in files:
            start = time.perf_counter()
            maps = self.decoder_maps(self.open(data, models), models)
            out.append((maps, time.perf_counter() - start))
        return out

    def decode_with_maps_many(self, files: Sequence[bytes], models: ModelSet
                              ) -> list[tuple[np.ndarray, float, dict[str, DecoderMap], float]]:
        """Per file (image, its decode seconds, its decoder maps, their seconds): what a receiver of
        coding for machines needs. The default runs :meth:`decode_many` and :meth:`decoder_maps_many`;
        a method whose decoder computes its map on the way to the image overrides it to do it once."""
        return [(image, dec_s, maps, maps_s) for (image, dec_s), (maps, maps_s)
                in zip(self.decode_many(files, models), self.decoder_maps_many(files, models))]

    @staticmethod
    def bytes_read(sem: fmt.SemFile, roles: Iterable[int]) -> int:
        """Bytes a receiver reads for the layers ``roles``: the file header and those layers (their
        layer headers included)."""
        wanted = set(roles)
        return sem.header_bytes + sum(layer.bits for layer in sem.layers if layer.role in wanted) // 8

    # --- the file ----------------------------------------------------------------------------
    def describe(self, sem: fmt.SemFile) -> dict[str, Any]:
        """The method section's fields, for ``semlic info``."""
        return {}

    def role_name(self, role: int) -> str:
        return self.layer_roles.get(role, f"role{role}")

    def layer_bits(self, sem: fmt.SemFile) -> dict[str, int]:
        """Bits of the header and of each layer by role name; they add up to the file's bits."""
        bits = {"header": 8 * sem.header_bytes}
        for layer in sem.layers:
            name = self.role_name(layer.role)
            bits[name] = bits.get(name, 0) + layer.bits
        return bits

    def check_roles(self, sem: fmt.SemFile, required: Iterable[int], allowed: Iterable[int]) -> None:
        """Refuse a file whose layers are not what this method writes."""
        roles = [layer.role for layer in sem.layers]
        names = [self.role_name(r) for r in roles]
        missing = [self.role_name(r) for r in required if r not in roles]
        extra = [self.role_name(r) for r in roles if r not in set(allowed)]
        if missing or extra or len(set(roles)) != len(roles):
            raise LayerError(f"a {self.name} file has the layers {[self.role_name(r) for r in allowed]} "
                             f"(needing {[self.role_name(r) for r in required]}); found {names}")


def module_fingerprint(module: torch.nn.Module) -> bytes:
    """``module.fingerprint`` (set by the loader), else the 8-byte SHA-256 of its state dict (cached)."""
    from ..model_files import state_fingerprint

    fingerprint = getattr(module, "fingerprint", None)
    if fingerprint is None:
        fingerprint = state_fingerprint(module.state_dict())
        module.fingerprint = fingerprint
    return fingerprint
