"""The ``hyperprior`` method: one .sem file of the learned codec, scalable by latent channel.

Layers (all RAW: CompressAI's own range-coder strings):
  role 1 ``hyper``: the hyperprior's z string (side information: the scales of every y channel);
  role 2 ``task``: the y^ channels the task reads (all of them for the plain image codec);
  role 3 ``rest``: the other y^ channels (absent when the task layer has them all).

The method section: quality (u8), z's height and width (u16 each), the number of latent
channels M (u16), then, in files written since the integer hyper-decoder (bit 7 of the quality
byte set, :data:`CHECKED`), the CRC-32 of the task layer's decoded symbols and that of the rest
layer's (u32 each), and, when the task layer holds fewer than M, the channel mask (ceil(M / 8)
bytes, bit i = channel i). A file of header + hyper + task is what is sent for segmentation in
the compressed domain (:func:`encode_latents` with ``with_rest=False``); adding the rest layer
decodes the image. Every byte counts in bpp; entropy coding uses the tables stored in the
model file (its fingerprint is the header's).

Decoding on another machine: a checked file's scale indexes come from the integer hyper-decoder
(:class:`.hyperprior.IntegerHyperDecoder`), the same on every CPU and device, and the decoder
verifies the CRCs of what it entropy-decoded: a mismatch (a decoder computing another model than
the encoder's) raises :class:`~semlic.errors.EntropyModelMismatchError`, never an image. Files
without the flag (written before) decode as they were written, with CompressAI's float ``h_s``
and no check. The synthesis ``g_s`` stays float: the decoded image may differ by a grey level
or two between machines (:attr:`HyperpriorCodec.decode_tolerance`), never desynchronise.
"""

from __future__ import annotations

import struct
import time
import zlib
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ... import format as fmt
from ...entropy import bounded_string
from ...errors import ConfigError, DeclaredSizeError, EntropyModelMismatchError, LayerError
from ...layers import check_image
from ...lazy import lazy_module
from .. import EncodeResult, Method, ModelSet, Option, register_method
from .qualities import MULTIPLE, check_quality

torch = lazy_module("torch")
hyperprior = lazy_module("semlic.methods.latent_seg.hyperprior")   # the networks: torch and CompressAI

ROLE_HYPER, ROLE_TASK, ROLE_REST = 1, 2, 3
_SECTION = struct.Struct("<BHHH")
_CHECKS = struct.Struct("<II")
CHECKED = 0x80   # in the quality byte: integer hyper-decoder and the CRCs of the decoded symbols follow


def symbols_crc(y_hat: torch.Tensor, channels) -> int:
    """CRC-32 of the integer symbols of ``channels`` of y^ (int32, little-endian, C order)."""
    channels = list(channels)
    if not channels:
        return 0
    values = y_hat[:, channels].detach().cpu().to(torch.int32).contiguous().numpy().astype("<i4")
    return zlib.crc32(values.tobytes())


@dataclass(frozen=True)
class Section:
    quality: int
    z_shape: tuple[int, int]
    latent_channels: int
    selected: tuple[int, ...] | None = None   # None: the task layer has every channel
    crcs: tuple[int, int] | None = None      # (task, rest) symbol CRCs: a checked file (integer hyper-decoder)

    @property
    def checked(self) -> bool:
        return self.crcs is not None

    def pack(self) -> bytes:
        head = _SECTION.pack(self.quality | (CHECKED if self.checked else 0), *self.z_shape, self.latent_channels)
        if self.checked:
            head += _CHECKS.pack(*self.crcs)
        if self.selected is None:
            return head
        mask = np.zeros(self.latent_channels, bool)
        mask[list(self.selected)] = True
        return head + np.packbits(mask, bitorder="little").tobytes()

    @classmethod
    def unpack(cls, data: bytes) -> "Section":
        if len(data) < _SECTION.size:
            raise LayerError(f"the hyperprior section has {len(data)} bytes, expected at least {_SECTION.size}")
        flagged, zh, zw, m = _SECTION.unpack(data[:_SECTION.size])
        quality, checked = flagged & ~CHECKED, bool(flagged & CHECKED)
        if not 1 <= quality <= 8 or not m or not zh or not zw:
            raise DeclaredSizeError(f"declared quality {quality}, latent channels {m}, z {zh}x{zw} out of range")
        rest, crcs = data[_SECTION.size:], None
        if checked:
            if len(rest) < _CHECKS.size:
                raise LayerError(f"the hyperprior section declares symbol checks but has {len(rest)} bytes for them")
            crcs, rest = _CHECKS.unpack(rest[:_CHECKS.size]), rest[_CHECKS.size:]
        if not rest:
            return cls(quality, (zh, zw), m, None, crcs)
        if len(rest) != -(-m // 8):
            raise LayerError(f"the channel mask has {len(rest)} bytes; {m} channels need {-(-m // 8)}")
        mask = np.unpackbits(np.frombuffer(rest, np.uint8), bitorder="little")[:m].astype(bool)
        return cls(quality, (zh, zw), m, tuple(int(i) for i in np.flatnonzero(mask)), crcs)

    def channels(self) -> tuple[list[int], list[int]]:
        """(task channels, rest channels)."""
        task = list(range(self.latent_channels)) if self.selected is None else list(self.selected)
        chosen = set(task)
        return task, [c for c in range(self.latent_channels) if c not in chosen]


def image_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) uint8 tensor."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]


def encode_latents(method: "HyperpriorCodec", bank, quality: int, latents: "hyperprior.Latents", size: tuple[int, int],
                   selected: Sequence[int] | None = None, with_rest: bool = True) -> fmt.SemFile:
    """The file of an analysed image: ``selected`` channels in the task layer (None: all)."""
    codec = bank.codec(quality)
    m = int(latents.y_hat.shape[1])
    chosen = None if selected is None or len(selected) == m else tuple(sorted(int(c) for c in selected))
    task, rest = Section(quality, latents.z_shape, m, chosen).channels()
    crcs = (symbols_crc(latents.y_hat, task), symbols_crc(latents.y_hat, rest)) if latents.integer else None
    section = Section(quality, latents.z_shape, m, chosen, crcs)
    layers = [fmt.Layer(ROLE_HYPER, fmt.RAW, latents.z_string),
              fmt.Layer(ROLE_TASK, fmt.RAW, hyperprior.compress_channels(codec, latents.y_hat, latents.indexes, task))]
    if rest and with_rest:
        layers.append(fmt.Layer(ROLE_REST, fmt.RAW, hyperprior.compress_channels(codec, latents.y_hat, latents.indexes, rest)))
    return fmt.SemFile(method.name, size[1], size[0], method.fingerprint({"hyperprior": bank}), section.pack(),
                       tuple(layers))


def read_latents(sem: fmt.SemFile, bank, need_all: bool = False) -> tuple[torch.Tensor, list[int]]:
    """y^ from a file, (1, M, h, w) with zeros where a channel was not sent, and the channels sent."""
    section = Section.unpack(sem.section)
    expected = (-(-sem.height // MULTIPLE), -(-sem.width // MULTIPLE))   # z of the image padded to MULTIPLE
    if tuple(section.z_shape) != expected:
        raise DeclaredSizeError(f"the file declares a {section.z_shape[0]}x{section.z_shape[1]} hyper-latent; a "
                                f"{sem.width}x{sem.height} image has {expected[0]}x{expected[1]}")
    codec = bank.codec(section.quality)
    if codec.M != section.latent_channels:
        raise LayerError(f"the file has {section.latent_channels} latent channels, the quality-{section.quality} "
                         f"codec {codec.M}")
    for layer in sem.layers:
        if layer.role not in (ROLE_HYPER, ROLE_TASK, ROLE_REST):
            raise LayerError(f"a hyperprior file has no layer of role {layer.role}")
    hyper, task_layer, rest_layer = (sem.layer(r) for r in (ROLE_HYPER, ROLE_TASK, ROLE_REST))
    if hyper is None or task_layer is None:
        raise LayerError("a hyperprior file needs its hyper and task layers")
    task, rest = section.channels()
    if need_all and rest and rest_layer is None:
        raise LayerError(f"this file carries only the {len(task)} latent channels of the task, not the image: "
                         "it decodes to a segmentation (semlic eval-latent-seg), not to pixels")
    indexes = hyperprior.hyper_decode(codec, hyper.payload, section.z_shape, integer=section.checked)
    y_hat = torch.zeros(indexes.shape, dtype=torch.float32)
    try:
        y_hat[:, task] = hyperprior.decompress_channels(codec, task_layer.payload, indexes, task)
        sent = list(task)
        if rest and rest_layer is not None:
            y_hat[:, rest] = hyperprior.decompress_channels(codec, rest_layer.payload, indexes, rest)
            sent += rest
    except (RuntimeError, ValueError) as exc:
        raise LayerError(f"the latent strings do not decode: {exc}") from exc
    if section.checked:
        for name, channels, expected in (("task", task, section.crcs[0]), ("rest", rest, section.crcs[1])):
            if name == "rest" and (not rest or rest_layer is None):
                continue
            found = symbols_crc(y_hat, channels)
            if found != expected:
                raise EntropyModelMismatchError(
                    f"the {name} layer's decoded symbols do not match the encoder's (CRC-32 {found:08x}, the file "
                    f"says {expected:08x}): this decoder computed another probability model than the encoder "
                    "(other model weights or tables, or arithmetic that differs between the machines)")
    return y_hat, sorted(sent)


@register_method
class HyperpriorCodec(Method):
    """Balle et al. 2018's scale hyperprior (CompressAI bmshj2018-hyperprior) as an image codec."""

    name = "hyperprior"
    format_id = 5
    label = "Hyperprior (Balle 2018)"
    paper = "Balle, Minnen, Singh, Hwang, Johnston: Variational image compression with a scale hyperprior, ICLR 2018"
    models = ("hyperprior",)
    quality_name = "quality"
    default_qualities = (1, 3)      # train_hyperprior's default qualities
    default_quality = 3
    decode_tolerance = 2            # g_s is float (the entropy parameters are integer: no desynchronisation)
    options = {"hyper_decoder": Option("integer", str,
                                       "integer: scale indexes in exact integer arithmetic, symbols checked (the "
                                       "default); float: CompressAI's h_s, no check, as files were written before")}
    layer_roles = {ROLE_HYPER: "hyper", ROLE_TASK: "task", ROLE_REST: "rest"}
    colour = "tab:olive"

    def parse_quality(self, value: Any) -> int:
        """An integer quality 1..8 from an int, an integral float or a string ("3")."""
        try:
            number = float(value)
        except (TypeError, ValueError):
            return check_quality(value)
        return check_quality(int(number) if number == int(number) else number)

    def encode(self, image: np.ndarray, models: ModelSet, quality: Any = 3, *,
               segmentation: np.ndarray | None = None, **options) -> EncodeResult:
        options = self.encode_options(options)
        if options["hyper_decoder"] not in ("integer", "float"):
            raise ConfigError(f"hyper_decoder must be 'integer' or 'float', got {options['hyper_decoder']!r}")
        check_image(image)
        self.check_models(models)
        quality = self.parse_quality(quality)
        bank = models["hyperprior"]
        started = time.perf_counter()
        latents = hyperprior.analyse(bank.codec(quality), image_tensor(image), integer=options["hyper_decoder"] == "integer")
        network_s = time.perf_counter() - started
        t = time.perf_counter()
        sem = encode_latents(self, bank, quality, latents, image.shape[:2])
        data = fmt.pack(sem)
        entropy_s = time.perf_counter() - t
        reconstruction = hyperprior.synthesise(bank.codec(quality), latents.y_hat, image.shape[:2])
        return EncodeResult(data, reconstruction, self.layer_bits(sem), quality, time.perf_counter() - started,
                            {"network_s": network_s, "entropy_s": entropy_s})

    def decode_file(self, sem: fmt.SemFile, models: ModelSet) -> np.ndarray:
        bank = models["hyperprior"]
        y_hat, _ = read_latents(sem, bank, need_all=True)
        return hyperprior.synthesise(bank.codec(Section.unpack(sem.section).quality), y_hat, (sem.height, sem.width))

    def entropy_parameters(self, data, models: ModelSet) -> dict[str, np.ndarray]:
        """The scales (the integer hyper-decoder's accumulators, or h_s's floats in an unchecked file) and the
        table index of every latent element: what the decoder computes from the hyper layer."""
        sem = self.open(data, models)
        section = Section.unpack(sem.section)
        codec = models["hyperprior"].codec(section.quality)
        hyper = sem.layer(ROLE_HYPER)
        if hyper is None:
            raise LayerError("a hyperprior file needs its hyper layer")
        symbols = int(codec.entropy_bottleneck.channels) * int(section.z_shape[0]) * int(section.z_shape[1])
        with torch.inference_mode():
            z_hat = codec.entropy_bottleneck.decompress([bounded_string(hyper.payload, symbols)], section.z_shape)
            if section.checked:
                scales = hyperprior.integer_hyper_decoder(codec).scales_accumulator(z_hat)
            else:
                scales = codec.h_s(z_hat)
        indexes = hyperprior.hyper_decode(codec, hyper.payload, section.z_shape, integer=section.checked)
        return {"scales": scales.cpu().numpy(), "indexes": indexes.cpu().numpy()}

    def describe(self, sem: fmt.SemFile) -> dict:
        section = Section.unpack(sem.section)
        task, rest = section.channels()
        return {"quality": section.quality, "latent_channels": section.latent_channels, "task_channels": len(task),
                "z_shape": list(section.z_shape), "image": sem.layer(ROLE_REST) is not None or not rest,
                "entropy_parameters": "integer" if section.checked else "float (no symbol check)",
                **({"symbol_crc": [f"{c:08x}" for c in section.crcs]} if section.checked else {})}
