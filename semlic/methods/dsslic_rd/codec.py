"""DSSLIC with a rate-aware base layer: the compact image entropy-coded with a learned prior.

DSSLIC's layered codec (:class:`semlic.layered_codec.LayeredCodec`) with one change in
the base layer: CompNet's output is not rounded to 8 bits and coded losslessly (about 17 bits
per compact pixel on CamVid, reports/camvid_cpu) but range-coded with the EntropyBottleneck the
network was trained with, end to end, under loss = lambda * 255^2 * MSE + bits (:mod:`.training`).
A quality is a pair (level, residual QP): the level picks the bank's network (one per lambda,
ascending), the QP the HEVC residual (None: none), 8-bit scaled as DSSLIC's or, with
``residual_depth: 10``, x - x' + 512 in a 10-bit layer.

Three methods, one per way the map reaches the decoder, each with its own model name:

* ``dsslic_rd``: the map sent losslessly (DSSLIC);
* ``dsslic_rd_lossy``: the map subsampled by the bank's ``map_factor`` (nearest), sent
  losslessly, upsampled by repetition at both ends (a lossy map at a fraction of the bits);
* ``dsslic_rd_derived``: no map in the file; both ends run PSPNet on up(c^), the decoded compact
  image upsampled (EDMS's idea: the decoder derives what the encoder used). As for EDMS, the
  decoder reproduces the encoder's map where it runs PSPNet the same way (device, bf16 autocast
  or not, threads); across them an argmax may flip.

File: the DSSLIC header section (6 bytes) + the level (u8). Layers: ``segmentation`` (lossless
and lossy maps), ``compact`` (RAW: the EntropyBottleneck's range-coder string of
round(y - median), its shape implied by the header), ``residual`` (hevc or hevc10).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ... import format as fmt
from ...agreement import AGREEMENT_TAU, corrected, correction_layers
from ...entropy import bounded_string
from ...errors import ConfigError, LayerError, MissingModelError, ModelMismatchError
from ...layers import (
    array_to_tensor,
    check_image,
    code_lossless,
    decode_layer,
    image_to_tensor,
    module_device,
    pad_to_multiple,
    tensor_to_uint8,
)
from ...layered_codec import (ROLE_COMPACT, ROLE_CORRECTION, ROLE_RESIDUAL, ROLE_SEGMENTATION, SECTION, LayeredCodec,
                              Section, parse_qp)
from ...lazy import inference_mode, lazy_module
from .. import EncodeResult, ModelSet, Option, register_method

torch = lazy_module("torch")
rd_model = lazy_module("semlic.methods.dsslic_rd.model")   # the networks: torch and CompressAI

MAX_LEVELS = 32


@dataclass(frozen=True)
class Compact:
    """c^ as both ends have it: the bank level that coded it and its values, (h, w, 3) float32."""

    level: int
    values: np.ndarray


def parse_quality(value: Any) -> tuple[int, int | None]:
    """(level, residual QP or None) from (l, q), [l, q], {"level": l, "qp": q}, "l:q", "l/q" or "l1q32"."""
    if isinstance(value, dict):
        pair = (value.get("level"), value.get("qp"))
    elif isinstance(value, (list, tuple)):
        pair = tuple(value)
    elif isinstance(value, str):
        match = re.fullmatch(r"\s*l?(\d+)\s*(?:[:/,]|q)\s*(\w+)\s*", value)
        pair = match.groups() if match else ()
    else:
        pair = ()
    if len(pair) != 2:
        raise ConfigError(f"a dsslic_rd quality is (level, residual QP or none), e.g. [0, 32] or l0q32; got {value!r}")
    try:
        level = int(pair[0])
    except (TypeError, ValueError):
        raise ConfigError(f"a dsslic_rd level is an integer, got {pair[0]!r}") from None
    if not 0 <= level < MAX_LEVELS:
        raise ConfigError(f"a dsslic_rd level is in 0..{MAX_LEVELS - 1}, got {level}")
    try:
        return level, parse_qp(pair[1])
    except ValueError:
        raise ConfigError(f"a dsslic_rd residual QP is 0..51 or none, got {pair[1]!r}") from None


def derive_scores(generator: torch.nn.Module, segnet: torch.nn.Module, compact: torch.Tensor) -> torch.Tensor:
    """PSPNet's class scores (N, K, H, W) of up(c^) rounded to 8 bits, in float32 with no autocast: what
    both ends of ``dsslic_rd_derived`` compute from the decoded compact image (their argmax is the map;
    their top-2 margins decide the correction layer, semlic.agreement)."""
    up = generator.upsample(compact.float()).clamp(-1, 1)
    image = torch.round((up + 1) * 127.5) / 255.0
    segnet.eval()
    with torch.inference_mode():
        return segnet(image.to(module_device(segnet)).float()).float()


def derive_map(generator: torch.nn.Module, segnet: torch.nn.Module, compact: torch.Tensor) -> torch.Tensor:
    """PSPNet's labels (N, H, W) of up(c^) rounded to 8 bits, c^ (N, 3, h, w) in [-1, 1] and ``generator``
    a DSSLIC generator (its upsampling): the map both ends of ``dsslic_rd_derived`` compute (training
    calls it on a batch)."""
    from ...segnet.inference import predict_labels

    up = generator.upsample(compact.float()).clamp(-1, 1)
    image = torch.round((up + 1) * 127.5) / 255.0
    return predict_labels(segnet, image.to(module_device(segnet))).to(compact.device)


class RDCodec(LayeredCodec):
    """The rate-aware DSSLIC of the module docstring, map sent losslessly."""

    name = "dsslic_rd"
    format_id = 8
    label = "DSSLIC-RD (entropy-coded compact)"
    paper = "beyond DSSLIC: its base layer trained end to end with a rate term and a learned entropy coder"
    colour = "crimson"
    compare_to = "dsslic"
    network = "dsslic_rd"
    models = ("dsslic_rd",)
    quality_name = "level_qp"
    default_qualities = ((0, None), (0, 40), (0, 34), (0, 28), (0, 22))
    default_quality = (0, 28)            # the bank's first level, a mid residual QP

    # --- qualities --------------------------------------------------------------------------
    def parse_quality(self, value: Any) -> tuple[int, int | None]:
        return parse_quality(value)

    def quality_value(self, quality: Any) -> float:
        level, qp = parse_quality(quality)
        return float(100 * level + (99 if qp is None else qp))

    def quality_label(self, quality: Any) -> str:
        level, qp = parse_quality(quality)
        return f"l{level}" + ("none" if qp is None else f"q{qp}")

    # --- the bank ----------------------------------------------------------------------------
    def bank(self, models: ModelSet) -> "rd_model.RDBank":
        bank = models[self.network]
        if not isinstance(bank, rd_model.RDBank) or not bank.ready():
            raise MissingModelError(f"{self.name}: the {self.network} model has no entropy tables (an unfinished "
                                    "training state?): give the model file train_dsslic_rd wrote")
        return bank

    # --- the compact image --------------------------------------------------------------------
    @inference_mode
    def compact_layer(self, model, image_padded, seg_padded, options, timings):
        bank = self.bank({self.network: model})
        net = bank.level(options["level"])
        device = module_device(net)
        t = time.perf_counter()
        labels = array_to_tensor(seg_padded).to(device)[None].long()
        y = net.analyse(image_to_tensor(image_padded, device), labels)
        timings["compnet_s"] = time.perf_counter() - t
        t = time.perf_counter()
        string = net.entropy_bottleneck.compress(y)[0]
        y_hat = net.entropy_bottleneck.decompress([string], tuple(y.shape[-2:]))   # what the decoder will have
        timings["entropy_compact_s"] = time.perf_counter() - t
        values = (y_hat / rd_model.SCALE)[0].permute(1, 2, 0).float().cpu().numpy()
        return Compact(int(options["level"]), values), fmt.Layer(ROLE_COMPACT, fmt.RAW, string)

    @inference_mode
    def decoded_compact(self, sem, model, shape):
        layer = sem.layer(ROLE_COMPACT)
        if layer.codec != fmt.RAW:
            raise LayerError(f"the compact layer of a {self.name} file is RAW (a range-coder string), "
                             f"not {layer.codec_name}")
        level, bank = self.level_of(sem), self.bank({self.network: model})
        if level >= len(bank.levels):
            raise LayerError(f"the file names level {level}; its {self.network} model has levels "
                             f"0..{len(bank.levels) - 1}")
        net = bank.level(level)
        channels = net.generator.config.image_nc
        string = bounded_string(layer.payload, channels * shape[0] * shape[1])
        y_hat = net.entropy_bottleneck.decompress([string], tuple(shape))
        return Compact(level, (y_hat / rd_model.SCALE)[0].permute(1, 2, 0).float().cpu().numpy())

    @inference_mode
    def predict(self, model, compact: Compact, used_map, size):
        net = self.bank({self.network: model}).level(compact.level)
        device = module_device(net)
        c = array_to_tensor(compact.values).to(device).permute(2, 0, 1)[None]
        if used_map is None:
            raise ConfigError(f"{self.name} predicts with a map")
        labels = array_to_tensor(used_map).to(device)[None].long()
        return tensor_to_uint8(net.generator.reconstruct(c, labels)[..., : size[0], : size[1]])

    # --- qualities sharing work: the map once, the base once per level, the residual per QP ------------------
    def encode_many(self, image: np.ndarray, models: ModelSet, qualities: Sequence[Any], *,
                    segmentation: np.ndarray | None = None, **options) -> list[EncodeResult]:
        options = self.encode_options(options)
        pairs = [self.parse_quality(q) for q in qualities]
        check_image(image)
        self.check_models(models)
        timings: dict[str, float] = {}
        start = time.perf_counter()
        if self.uses_segmentation:
            segmentation = self._segmentation(image, segmentation, models, timings)
        map_s = time.perf_counter() - start
        bases = {}
        out = []
        for level, qp in pairs:
            if level not in bases:
                bases[level] = self._base(image, models, segmentation, {**options, "level": level})
                bases[level].seconds += map_s
                bases[level].timings.update(timings)
                bases[level].extras["level"] = level
            out.append(self._finish(bases[level], models, qp, options))
            out[-1].quality = (level, qp)
        return out

    def section_bytes(self, section: Section, base) -> bytes:
        return section.pack() + bytes([base.extras["level"]])

    def read_section(self, sem: fmt.SemFile) -> Section:
        if len(sem.section) != SECTION.size + 1:
            raise LayerError(f"the {self.name} method section has {len(sem.section)} bytes, "
                             f"expected {SECTION.size + 1}")
        return Section.unpack(sem.section[:SECTION.size])

    def level_of(self, sem: fmt.SemFile) -> int:
        self.read_section(sem)
        return int(sem.section[SECTION.size])

    def describe(self, sem: fmt.SemFile) -> dict:
        return {**super().describe(sem), "level": self.level_of(sem), "map": self.map_description}

    map_description = "sent losslessly"


class LossyMapCodec(RDCodec):
    """The map subsampled by the bank's ``map_factor`` (nearest) and sent losslessly."""

    name = "dsslic_rd_lossy"
    format_id = 9
    label = "DSSLIC-RD, lossy map"
    colour = "orchid"
    network = "dsslic_rd_lossy"
    models = ("dsslic_rd_lossy",)
    map_description = "subsampled, sent losslessly"

    def _factor(self, models: ModelSet) -> int:
        return int(models[self.network].config.map_factor)

    def map_layers(self, segmentation, seg_padded, compact, models, options, timings):
        start = time.perf_counter()
        factor = self._factor(models)
        small = np.ascontiguousarray(segmentation[::factor, ::factor])
        codec_id, payload = code_lossless(small, options["lossless"])
        used = self._upsampled(small, factor, segmentation.shape, models[self.network].config.multiple)
        timings["lossless_s"] = timings.get("lossless_s", 0.0) + time.perf_counter() - start
        return used, [fmt.Layer(ROLE_SEGMENTATION, codec_id, payload)], [], {}

    @staticmethod
    def _upsampled(small: np.ndarray, factor: int, shape: tuple[int, int], multiple: int) -> np.ndarray:
        full = np.repeat(np.repeat(small, factor, 0), factor, 1)[: shape[0], : shape[1]]
        return pad_to_multiple(np.ascontiguousarray(full), multiple)

    def decoder_map(self, sem, compact, models):
        factor = self._factor(models)
        shape = (-(-sem.height // factor), -(-sem.width // factor))
        small = decode_layer(sem.layer(ROLE_SEGMENTATION), 1, shape, "segmentation")
        if int(small.max(initial=0)) >= models[self.network].config.label_nc:
            raise LayerError(f"segmentation label {int(small.max())} >= the model's label_nc "
                             f"{models[self.network].config.label_nc}")
        return self._upsampled(small, factor, (sem.height, sem.width), self.read_section(sem).multiple)


class DerivedMapCodec(RDCodec):
    """No map in the file: both ends run PSPNet on up(c^); the encoder sends its class where PSPNet's
    top-2 margin is below ``agreement_tau`` (semlic.agreement's correction layer), so that a decoder
    whose float scores differ in the last bits (another CPU or thread count) derives the same map."""

    name = "dsslic_rd_derived"
    format_id = 10
    label = "DSSLIC-RD, derived map"
    colour = "darkorange"
    network = "dsslic_rd_derived"
    models = ("dsslic_rd_derived", "pspnet")
    encoder_models = ("pspnet",)
    map_description = "derived at both ends (PSPNet on up(c^))"
    options = {**RDCodec.options,
               "agreement_tau": Option(AGREEMENT_TAU, float,
                                       "send the encoder's class where PSPNet's top-2 margin is below this (0: never)")}

    def _scores(self, compact: Compact, models: ModelSet) -> torch.Tensor:
        bank = self.bank(models)
        c = array_to_tensor(compact.values).to(module_device(bank)).permute(2, 0, 1)[None]
        scores = derive_scores(bank.level(compact.level).generator, models["pspnet"], c)
        if scores.shape[1] > bank.config.label_nc:
            raise ModelMismatchError(f"PSPNet has {scores.shape[1]} classes, more than the model's label_nc "
                                     f"{bank.config.label_nc}: the PSPNet of the model's training is needed")
        return scores

    def map_layers(self, segmentation, seg_padded, compact, models, options, timings):
        start = time.perf_counter()
        scores = self._scores(compact, models)
        used = scores[0].argmax(0).to(torch.uint8).cpu().numpy()
        after = correction_layers(scores, float(options["agreement_tau"]), ROLE_CORRECTION)
        timings["segmentation_s"] = time.perf_counter() - start
        return used, [], after, {"derived_segmentation": used}

    def decoder_map(self, sem, compact, models):
        used = self._scores(compact, models)[0].argmax(0).to(torch.uint8).cpu().numpy()
        return corrected(used, sem.layer(ROLE_CORRECTION))

    map_output = "derived"

    def map_roles(self):
        return (ROLE_COMPACT, ROLE_CORRECTION)

    def required_roles(self):
        return (ROLE_COMPACT,), (ROLE_COMPACT, ROLE_CORRECTION, ROLE_RESIDUAL)


register_method(RDCodec)
register_method(LossyMapCodec)
register_method(DerivedMapCodec)

__all__ = ["Compact", "DerivedMapCodec", "LossyMapCodec", "RDCodec", "derive_map", "parse_quality"]
