"""HEVC intra 4:4:4 plus a decoder-side enhancement network guided by a segmentation of the decoded image.

The file: the whole image HEVC-intra coded (x265 through the same HEIF codec and settings as the
HEVC 4:4:4 baseline, every byte of it counted) and a 2-byte method section (the QP; a flag: enhance
or not). The header's fingerprint names the enhancement network and the segmenter.

The decoder: HEVC decode -> x^; PSPNet segments x^ (``sgfilter``: the map costs no bits) -> s^;
x~ = x^ + f(x^, s^, QP) (:mod:`.network`). The encoder runs the same steps on its own decoded x^
and clears the flag where x~ would be further from the image than x^ (option ``enhance: auto``),
so that no QP is made worse: the decoder then returns x^ as HEVC decodes it. Nothing but the
enhancement depends on the map: where PSPNet at the decoder breaks a near tie the other way
than at the encoder, one pixel's conditioning differs and the picture by a few grey levels at
most (``decode_tolerance``; semlic.conformance measures it), so no correction layer is sent.

Ablations, each a method of its own with its own network (the same class, preset and budget):
``sgfilter_nomap`` (no map: the plain post-filter) and ``sgfilter_sent`` (the encoder's PSPNet map
of the original sent losslessly in a layer of its own, its bits counted).
"""

from __future__ import annotations

import struct
import time
from typing import Any

import numpy as np

from ... import format as fmt
from ...errors import ConfigError, LayerError
from ...image_codecs import CODECS, get_codec
from ...layered_codec import segment_image
from ...layers import LOSSLESS_CHOICES, LOSSLESS_DEFAULT, check_image, code_lossless, decode_layer
from ...lazy import lazy_module
from .. import DecoderMap, EncodeResult, Method, ModelSet, Option, register_method

sgf_network = lazy_module("semlic.methods.sgfilter.network")   # the network: torch

ROLE_IMAGE, ROLE_MAP = 1, 2
SECTION = struct.Struct("<BB")   # QP, flags
FLAG_ENHANCE = 1
QPS = (47, 42, 37, 32)           # the grid of the training and the reports (HEVC's low and middle rates)
CHROMA = dict(CODECS["hevc"].default_options)["chroma"]   # the HEVC baseline's chroma: 4:4:4


def parse_qp(value: Any) -> int:
    try:
        qp = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"sgfilter: the quality is an HEVC QP 0..51, got {value!r}") from None
    if not 0 <= qp <= 51 or qp != float(value):
        raise ConfigError(f"sgfilter: the quality is an HEVC QP 0..51, got {value!r}")
    return qp


def _mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((a.astype(np.float64) - b) ** 2))


@register_method
class SGFilterCodec(Method):
    """HEVC intra 4:4:4 + an enhancement network conditioned on the map the decoder derives."""

    name = "sgfilter"
    format_id = 11
    label = "HEVC + SG filter"
    paper = ("semlic: HEVC intra 4:4:4 with a decoder-side, segmentation-guided enhancement network "
             "(EDMS's derived map, used to improve a classical picture)")
    network = "sgfilter"
    models = ("sgfilter", "pspnet")
    map_source = "derived"        # derived (PSPNet at the decoder), sent (a map layer) or none
    quality_name = "qp"
    default_qualities = QPS
    default_quality = 37
    decode_tolerance = 2          # the network is float (and so is the decoder's PSPNet)
    options = {
        "enhance": Option("auto", str, "auto: enhance where it lowers the error (decided at the encoder); "
                                       "on; off (HEVC alone, the flag cleared)"),
    }
    layer_roles = {ROLE_IMAGE: "image", ROLE_MAP: "map"}
    colour = "crimson"

    # --- qualities -------------------------------------------------------------------------------
    def parse_quality(self, value: Any) -> int:
        return parse_qp(value)

    def quality_value(self, quality: Any) -> float:
        return float(parse_qp(quality))

    def check_options(self, options: dict) -> None:
        if options["enhance"] not in ("auto", "on", "off"):
            raise ConfigError(f"{self.name}: enhance must be auto, on or off, got {options['enhance']!r}")

    # --- the map: hooks ----------------------------------------------------------------------------
    def encoder_map(self, image: np.ndarray, decoded: np.ndarray, models: ModelSet,
                    segmentation: np.ndarray | None, options: dict, timings: dict) -> tuple[np.ndarray | None, list]:
        """(the map the network gets, layers that carry it): PSPNet on x^, as the decoder will run it."""
        start = time.perf_counter()
        labels = segment_image(models["pspnet"], decoded)
        timings["segment_s"] = time.perf_counter() - start
        return labels, []

    def decoder_labels(self, sem: fmt.SemFile, decoded: np.ndarray, models: ModelSet) -> np.ndarray | None:
        """The map the decoder gives the network, from the file and x^."""
        return segment_image(models["pspnet"], decoded)

    def map_roles(self) -> tuple[int, ...]:
        """The layers a receiver reads for the map (the derived one: the image's)."""
        return (ROLE_IMAGE,)

    def map_output(self) -> str | None:
        return "derived"

    def required_roles(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return (ROLE_IMAGE,), (ROLE_IMAGE,)

    # --- coding ------------------------------------------------------------------------------------
    def encode(self, image: np.ndarray, models: ModelSet, quality: Any = 37, *,
               segmentation: np.ndarray | None = None, **options) -> EncodeResult:
        started = time.perf_counter()
        check_image(image)
        self.check_models(models, self.models + self.encoder_models)
        options = self.encode_options(options)
        self.check_options(options)
        qp = parse_qp(quality)
        h, w = image.shape[:2]
        timings: dict[str, float] = {}
        hevc = get_codec("hevc")
        t = time.perf_counter()
        payload = hevc.encode(image, qp, chroma=CHROMA)
        decoded = hevc.decode(payload, 3)
        timings["hevc_s"] = time.perf_counter() - t
        labels, map_layers = self.encoder_map(image, decoded, models, segmentation, options, timings)
        enhanced = decoded
        if options["enhance"] != "off":
            t = time.perf_counter()
            enhanced = sgf_network.enhance(models[self.network], decoded, labels, qp)
            timings["network_s"] = time.perf_counter() - t
        mse_hevc, mse_enhanced = _mse(decoded, image), _mse(enhanced, image)
        flag = options["enhance"] == "on" or (options["enhance"] == "auto" and mse_enhanced < mse_hevc)
        layers = (fmt.Layer(ROLE_IMAGE, hevc.codec_id, payload), *map_layers)
        sem = fmt.SemFile(self.name, w, h, self.fingerprint(models), SECTION.pack(qp, FLAG_ENHANCE if flag else 0),
                          layers)
        data = fmt.pack(sem)
        bits = self.layer_bits(sem)
        assert sum(bits.values()) == 8 * len(data)
        gain = 10 * np.log10(mse_hevc / mse_enhanced) if mse_enhanced > 0 and mse_hevc > 0 else 0.0
        return EncodeResult(data, enhanced if flag else decoded, bits, qp, time.perf_counter() - started, timings,
                            {"enhanced": bool(flag), "gain_db": float(gain), "hevc": decoded, "map": labels})

    def read_section(self, sem: fmt.SemFile) -> tuple[int, bool]:
        if len(sem.section) != SECTION.size:
            raise LayerError(f"the method section has {len(sem.section)} bytes, expected {SECTION.size}")
        qp, flags = SECTION.unpack(sem.section)
        if qp > 51 or flags & ~FLAG_ENHANCE:
            raise LayerError(f"declared QP {qp} / flags {flags:#x}: not a {self.name} section")
        return qp, bool(flags & FLAG_ENHANCE)

    def _decoded(self, sem: fmt.SemFile) -> np.ndarray:
        self.check_roles(sem, *self.required_roles())
        return decode_layer(sem.layer(ROLE_IMAGE), 3, (sem.height, sem.width), "image")

    def decode_file(self, sem: fmt.SemFile, models: ModelSet) -> np.ndarray:
        qp, flag = self.read_section(sem)
        decoded = self._decoded(sem)
        if not flag:
            return decoded
        return sgf_network.enhance(models[self.network], decoded, self.decoder_labels(sem, decoded, models), qp)

    def decoder_maps(self, sem: fmt.SemFile, models: ModelSet) -> dict[str, DecoderMap]:
        output = self.map_output()
        if output is None:
            return {}
        self.read_section(sem)
        decoded = self._decoded(sem)
        labels = self.decoder_labels(sem, decoded, models)
        return {output: DecoderMap(np.ascontiguousarray(labels, dtype=np.uint8), self.map_roles())}

    def describe(self, sem: fmt.SemFile) -> dict:
        qp, flag = self.read_section(sem)
        return {"qp": qp, "enhance": flag, "map": self.map_source}


@register_method
class SGFilterNoMap(SGFilterCodec):
    """The ablation without a map: the same network with no class input (a plain post-filter)."""

    name = "sgfilter_nomap"
    format_id = 12
    label = "HEVC + post-filter (no map)"
    paper = "semlic ablation: the enhancement network without the segmentation"
    network = "sgfilter_nomap"
    models = ("sgfilter_nomap",)
    map_source = "none"
    compare_to = "sgfilter"
    colour = "salmon"

    def encoder_map(self, image, decoded, models, segmentation, options, timings):
        return None, []

    def decoder_labels(self, sem, decoded, models):
        return None

    def map_output(self) -> str | None:
        return None


@register_method
class SGFilterSent(SGFilterCodec):
    """The ablation with the map sent: the encoder's PSPNet map of the original, coded losslessly."""

    name = "sgfilter_sent"
    format_id = 13
    label = "HEVC + SG filter (map sent)"
    paper = "semlic ablation: the encoder's segmentation of the original sent losslessly, its bits counted"
    network = "sgfilter_sent"
    models = ("sgfilter_sent",)
    encoder_models = ("pspnet",)
    uses_segmentation = True
    map_source = "sent"
    compare_to = "sgfilter"
    colour = "darkred"
    options = {**SGFilterCodec.options,
               "lossless": Option(LOSSLESS_DEFAULT, str, f"lossless codec of the map: {', '.join(LOSSLESS_CHOICES)}")}

    def check_options(self, options: dict) -> None:
        super().check_options(options)
        if options["lossless"] not in LOSSLESS_CHOICES:
            raise ConfigError(f"lossless must be one of {', '.join(LOSSLESS_CHOICES)}, got {options['lossless']!r}")

    def encoder_map(self, image, decoded, models, segmentation, options, timings):
        start = time.perf_counter()
        if segmentation is None:
            if models.get("pspnet") is None:
                raise ConfigError(f"{self.name} needs the image's segmentation map: give it (--seg LABELS.png) "
                                  "or a PSPNet model file to compute it")
            segmentation = segment_image(models["pspnet"], image)
        if segmentation.shape != image.shape[:2]:
            raise ConfigError(f"segmentation {segmentation.shape} does not match image {image.shape[:2]}")
        classes = models[self.network].config.num_classes
        if segmentation.size and int(segmentation.max()) >= classes:
            raise ConfigError(f"segmentation label {int(segmentation.max())} >= the network's {classes} classes")
        codec_id, payload = code_lossless(segmentation, options["lossless"])
        timings["map_s"] = time.perf_counter() - start
        return segmentation, [fmt.Layer(ROLE_MAP, codec_id, payload)]

    def decoder_labels(self, sem, decoded, models):
        labels = decode_layer(sem.layer(ROLE_MAP), 1, (sem.height, sem.width), "map")
        classes = models[self.network].config.num_classes
        if labels.size and int(labels.max()) >= classes:
            raise LayerError(f"map label {int(labels.max())} >= the network's {classes} classes")
        return labels

    def map_roles(self) -> tuple[int, ...]:
        return (ROLE_MAP,)

    def map_output(self) -> str | None:
        return "map"

    def required_roles(self):
        return (ROLE_IMAGE, ROLE_MAP), (ROLE_IMAGE, ROLE_MAP)
