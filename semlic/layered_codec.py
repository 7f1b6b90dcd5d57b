"""The layered-codec machinery: compact image + prediction + HEVC residual; the decoder sees only the file.

The machinery of the layered systems (DSSLIC, Akbari et al. 2019, Algorithm 1, with the fixes
docs/DESIGN.md calls for; EDMS and DSSLIC-RD change one hook each). A method subclasses
:class:`LayeredCodec`, names its network (``network``: a registered model with ``compact(x, s)``,
``reconstruct(c, s)``, ``upsample(c)`` and a config with ``multiple``, ``alpha`` and ``label_nc``,
:class:`LayeredNetwork`) and overrides the hooks that differ; the core names no method.

encode(x, s):
  1. pad x and s to a multiple of the model's input multiple, at least 4 multiples
     (reflect; cropped back after RecNet);
  2. c = CompNet(x, s), rounded (not truncated) to 8 bits, coded losslessly;
  3. x' = RecNet(s, c^) on the *decoded* 8-bit compact image c^ (what the decoder will have),
     cropped and rounded to 8 bits;
  4. r = x - x' (integers in -255..255); min/max (integers, in the method section), r scaled
     to 0..255, rounded, HEVC-intra coded at an explicit QP (chroma 4:2:0 as in the paper, or
     4:4:4); the quality ``None`` sends no residual (the paper's Table 1 setting). With the
     option ``residual_depth: 10`` the residual is instead x - x' + 512, unscaled, in a 10-bit
     HEVC layer (x265 main10, codec ``hevc10``): no 8-bit squeeze of a wide residual;
  5. s coded losslessly at its original size (hook :meth:`LayeredCodec.map_layers`: a method may
     send it lossy, or derive it at the decoder and send nothing).
decode(file): s^ and c^ from their layers, x' = RecNet(s^, c^), x~ = clip(round(x' + r^)).

Steps 1-3 do not depend on the QP: :meth:`LayeredCodec.encode_many` runs them once per image
and codes only the residual per QP. The encoder computes its reconstruction by decoding its
own residual bytes, so the decoder reproduces it exactly on the same device and thread
settings.

The method section (6 bytes, :data:`SECTION`): input multiple m (u8; each side is padded to
max(4 m, ceil(side / m) m)), residual QP (u8, 255: none), residual min and max (i16 each). A
method may append fields (:meth:`LayeredCodec.section_bytes`).
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np

from . import format as fmt
from .errors import ConfigError, DeclaredSizeError, LayerError
from .image_codecs import get_codec
from .layers import LOSSLESS_CHOICES, LOSSLESS_DEFAULT, add_residual, array_to_tensor, check_image, code_lossless
from .layers import decode_layer, image_to_tensor, module_device, offset_residual, pad_to_multiple, padded_side
from .layers import scaled_residual, tensor_to_uint8, unoffset_residual, unscaled_residual
from .lazy import inference_mode, lazy_module
from .methods.base import DecoderMap, EncodeResult, Method, ModelSet, Option

torch = lazy_module("torch")

#: The residual QPs of the DSSLIC paper's evaluation script (docs/DESIGN.md), the layered codecs' default grid.
PAPER_RESIDUAL_QPS = (32, 27, 23, 19, 16, 14, 12, 10)
#: The residual's chroma. The papers code it with libbpg's default, 4:2:0; 4:4:4 has the better
#: BD-rate on CamVid and Kodak with the CamVid-trained models (reports/camvid_cpu/chroma.csv), and
#: 4:2:0 caps the quality of the smoke test's curves, so 4:4:4 is the default ("420" stays available).
RESIDUAL_CHROMA_DEFAULT = "444"
ROLE_SEGMENTATION, ROLE_COMPACT, ROLE_RESIDUAL, ROLE_CORRECTION = 1, 2, 3, 4
NO_RESIDUAL = 255
SECTION = struct.Struct("<BBhh")   # multiple, residual QP, residual min, max


class LayeredNetwork(Protocol):
    """What the machinery asks of a layered system's network (DSSLIC's generator is one)."""

    config: Any   # .multiple (input multiple), .alpha (compact-image factor), .label_nc (map classes)

    def compact(self, image: torch.Tensor, labels: torch.Tensor) -> torch.Tensor: ...

    def reconstruct(self, compact: torch.Tensor, labels: torch.Tensor) -> torch.Tensor: ...

    def upsample(self, compact: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class Section:
    """The layered codecs' header fields."""

    multiple: int
    residual_qp: int | None = None
    res_min: int = 0
    res_max: int = 0

    def pack(self) -> bytes:
        qp = NO_RESIDUAL if self.residual_qp is None else int(self.residual_qp)
        return SECTION.pack(self.multiple, qp, self.res_min, self.res_max)

    @classmethod
    def unpack(cls, data: bytes) -> "Section":
        if len(data) != SECTION.size:
            raise LayerError(f"the method section has {len(data)} bytes, expected {SECTION.size}")
        multiple, qp, res_min, res_max = SECTION.unpack(data)
        if multiple < 1 or multiple & (multiple - 1) or multiple > 64:
            raise DeclaredSizeError(f"declared size multiple {multiple} is not a power of two in 1..64")
        if not (-255 <= res_min <= res_max <= 255):
            raise LayerError(f"declared residual range {res_min}..{res_max} is outside -255..255")
        return cls(multiple, None if qp == NO_RESIDUAL else qp, res_min, res_max)


@inference_mode
def compact_image(model: LayeredNetwork, image_padded: np.ndarray, seg_padded: np.ndarray) -> np.ndarray:
    """c^ = CompNet(x, s) rounded to 8 bits: (H / alpha, W / alpha, 3) uint8 from padded x and s."""
    device = module_device(model)
    labels = array_to_tensor(seg_padded).to(device)[None].long()
    return tensor_to_uint8(model.compact(image_to_tensor(image_padded, device), labels))


@inference_mode
def predict(model: LayeredNetwork, compact: np.ndarray, seg_padded: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """x' = RecNet(s, c^) from the 8-bit compact image, cropped to ``size`` = (H, W), uint8."""
    device = module_device(model)
    labels = array_to_tensor(seg_padded).to(device)[None].long()
    recon = model.reconstruct(image_to_tensor(compact, device), labels)
    return tensor_to_uint8(recon[..., : size[0], : size[1]])


def segment_image(segnet: torch.nn.Module, image: np.ndarray) -> np.ndarray:
    """PSPNet label map (H, W) uint8 of an (H, W, 3) uint8 image, on the network's device."""
    from .segnet.inference import predict_labels
    from .segnet.prepared import image_to_tensor as segnet_input

    return predict_labels(segnet, segnet_input(image)[None].to(module_device(segnet)))[0].cpu().numpy()


def parse_qp(value: Any) -> int | None:
    """A residual QP 0..51, or None (no residual) for None, "none", "" or a negative number."""
    if value is None or (isinstance(value, str) and value.lower() in ("none", "")):
        return None
    qp = int(value)
    if qp < 0:
        return None
    if qp > 51:
        raise ConfigError(f"residual QP must be in 0..51 (or -1 / none: no residual), got {qp}")
    return qp


@dataclass
class _Base:
    """What every QP of one image shares: x, the padded map, c^, the map the prediction uses, x'."""

    image: np.ndarray
    prediction: np.ndarray
    layers_before: list[fmt.Layer]
    layers_after: list[fmt.Layer]
    seconds: float
    timings: dict[str, float]
    extras: dict[str, Any]


class LayeredCodec(Method):
    """Compact image + prediction + HEVC residual; how the map reaches the decoder is a hook."""

    network: str = ""         # the registered model of CompNet and RecNet (a subclass names it)
    models: tuple[str, ...] = ()
    encoder_models = ("pspnet",)
    uses_segmentation = True
    quality_name = "qp"
    default_qualities = PAPER_RESIDUAL_QPS
    default_quality = 27                 # a residual QP in the middle of the paper's grid
    decode_tolerance = 2                 # RecNet is float; the layers are classical or fixed-table coded
    options = {
        "chroma": Option(RESIDUAL_CHROMA_DEFAULT, str,
                         "residual chroma: 444 (the default, measured better) or 420 (the paper's libbpg default)"),
        "lossless": Option(LOSSLESS_DEFAULT, str, f"lossless codec of the image-like layers: {', '.join(LOSSLESS_CHOICES)}"),
        "residual_depth": Option(8, int, "8: the residual scaled by its min/max into 8 bits (the paper); "
                                         "10: x - x' + 512 unscaled in a 10-bit HEVC layer"),
    }
    layer_roles = {ROLE_SEGMENTATION: "segmentation", ROLE_COMPACT: "compact", ROLE_RESIDUAL: "residual",
                   ROLE_CORRECTION: "correction"}
    map_output: str | None = "map"       # the decoder's map in decoder_maps (None: the file carries none)

    # --- qualities ----------------------------------------------------------------------------
    def parse_quality(self, value: Any) -> int | None:
        return parse_qp(value)

    def quality_value(self, quality: int | None) -> float:
        return -1.0 if quality is None else float(quality)

    def quality_label(self, quality: int | None) -> str:
        return "none" if quality is None else str(int(quality))

    # --- the map: hooks ---------------------------------------------------------------------
    def map_layers(self, segmentation: np.ndarray, seg_padded: np.ndarray, compact: np.ndarray, models: ModelSet,
                   options: dict, timings: dict) -> tuple[np.ndarray, list[fmt.Layer], list[fmt.Layer], dict]:
        """(map the prediction uses (padded), layers before the compact one, layers after it, extras)."""
        start = time.perf_counter()
        codec_id, payload = code_lossless(segmentation, options["lossless"])
        timings["lossless_s"] = timings.get("lossless_s", 0.0) + time.perf_counter() - start
        return seg_padded, [fmt.Layer(ROLE_SEGMENTATION, codec_id, payload)], [], {}

    def decoder_map(self, sem: fmt.SemFile, compact: np.ndarray, models: ModelSet) -> np.ndarray:
        """The padded map the decoder predicts with, from the file and c^."""
        model = models[self.network]
        segmentation = decode_layer(sem.layer(ROLE_SEGMENTATION), 1, (sem.height, sem.width), "segmentation")
        if int(segmentation.max()) >= model.config.label_nc:
            raise LayerError(f"segmentation label {int(segmentation.max())} >= the model's label_nc "
                             f"{model.config.label_nc}")
        return pad_to_multiple(segmentation, self.read_section(sem).multiple)

    def map_roles(self) -> tuple[int, ...]:
        """The layers :meth:`decoder_map` reads (c^ is decoded only when the compact layer is one)."""
        return (ROLE_SEGMENTATION,)

    def required_roles(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(roles every file has, roles a file may have)."""
        return (ROLE_SEGMENTATION, ROLE_COMPACT), (ROLE_SEGMENTATION, ROLE_COMPACT, ROLE_RESIDUAL)

    def predict(self, model: LayeredNetwork, compact: np.ndarray, used_map: np.ndarray | None,
                size: tuple[int, int]) -> np.ndarray:
        """x' from c^ and the map both ends use (RecNet); a hook for the ablations."""
        return predict(model, compact, used_map, size)

    # --- the compact image: hooks -----------------------------------------------------------
    def compact_layer(self, model: LayeredNetwork, image_padded: np.ndarray, seg_padded: np.ndarray, options: dict,
                      timings: dict) -> tuple[np.ndarray, fmt.Layer]:
        """(c^ as the decoder will have it, its layer): CompNet's output rounded to 8 bits, coded losslessly."""
        t = time.perf_counter()
        compact = compact_image(model, image_padded, seg_padded)
        timings["compnet_s"] = time.perf_counter() - t
        t = time.perf_counter()
        codec_id, payload = code_lossless(compact, options["lossless"])
        timings["lossless_s"] = timings.get("lossless_s", 0.0) + time.perf_counter() - t
        return compact, fmt.Layer(ROLE_COMPACT, codec_id, payload)

    def decoded_compact(self, sem: fmt.SemFile, model: LayeredNetwork, shape: tuple[int, int]) -> np.ndarray:
        """c^ from the file: the compact layer, of (h, w) = ``shape``."""
        return decode_layer(sem.layer(ROLE_COMPACT), 3, shape, "compact")

    # --- encoding ---------------------------------------------------------------------------
    def _segmentation(self, image: np.ndarray, segmentation: np.ndarray | None, models: ModelSet,
                      timings: dict) -> np.ndarray:
        if segmentation is None:
            segnet = models.get("pspnet")
            if segnet is None:
                raise ConfigError(f"{self.name} needs the image's segmentation map: give it (--seg LABELS.png) "
                                  "or a PSPNet model file to compute it")
            start = time.perf_counter()
            segmentation = segment_image(segnet, image)
            timings["segment_x_s"] = time.perf_counter() - start
        if segmentation.shape != image.shape[:2]:
            raise ConfigError(f"segmentation {segmentation.shape} does not match image {image.shape[:2]}")
        label_nc = models[self.network].config.label_nc
        if segmentation.size and int(segmentation.max()) >= label_nc:
            raise ConfigError(f"segmentation label {int(segmentation.max())} >= the model's label_nc {label_nc}")
        return segmentation

    def check_options(self, options: dict) -> None:
        if options["chroma"] not in ("420", "444"):
            raise ConfigError(f"chroma must be '420' or '444', got {options['chroma']!r}")
        if options["lossless"] not in LOSSLESS_CHOICES:
            raise ConfigError(f"lossless must be one of {', '.join(LOSSLESS_CHOICES)}, got {options['lossless']!r}")
        if options["residual_depth"] not in (8, 10):
            raise ConfigError(f"residual_depth must be 8 or 10, got {options['residual_depth']!r}")

    def _base(self, image: np.ndarray, models: ModelSet, segmentation: np.ndarray | None, options: dict) -> _Base:
        check_image(image)
        self.check_models(models)
        self.check_options(options)
        model = models[self.network]
        started = time.perf_counter()
        timings: dict[str, float] = {}
        segmentation = self._segmentation(image, segmentation, models, timings)
        h, w = image.shape[:2]
        multiple = model.config.multiple
        seg_padded = pad_to_multiple(segmentation, multiple)
        compact, compact_layer = self.compact_layer(model, pad_to_multiple(image, multiple), seg_padded, options,
                                                    timings)
        used_map, before, after, extras = self.map_layers(segmentation, seg_padded, compact, models, options, timings)
        t = time.perf_counter()
        prediction = self.predict(model, compact, used_map, (h, w))
        timings["recnet_s"] = time.perf_counter() - t
        extras["prediction"] = prediction
        return _Base(image, prediction, before + [compact_layer], after, time.perf_counter() - started, timings,
                     extras)

    def _finish(self, base: _Base, models: ModelSet, qp: int | None, options: dict) -> EncodeResult:
        start = time.perf_counter()
        h, w = base.image.shape[:2]
        layers = list(base.layers_before) + list(base.layers_after)
        res_min = res_max = 0
        reconstruction = base.prediction
        timings = dict(base.timings)
        if qp is not None and options["residual_depth"] == 10:
            hevc = get_codec("hevc10")
            payload = hevc.encode(offset_residual(base.image, base.prediction), qp, chroma=options["chroma"])
            layers.append(fmt.Layer(ROLE_RESIDUAL, hevc.codec_id, payload))
            reconstruction = add_residual(base.prediction, unoffset_residual(hevc.decode(payload, 3)))
        elif qp is not None:
            r8, res_min, res_max = scaled_residual(base.image, base.prediction)
            hevc = get_codec("hevc")
            payload = hevc.encode(r8, qp, chroma=options["chroma"])
            layers.append(fmt.Layer(ROLE_RESIDUAL, hevc.codec_id, payload))
            reconstruction = add_residual(base.prediction, unscaled_residual(hevc.decode(payload, 3), res_min, res_max))
        timings["residual_s"] = time.perf_counter() - start
        section = Section(models[self.network].config.multiple, qp, res_min, res_max)
        sem = fmt.SemFile(self.name, w, h, self.fingerprint(models), self.section_bytes(section, base), tuple(layers))
        data = fmt.pack(sem)
        bits = self.layer_bits(sem)
        assert sum(bits.values()) == 8 * len(data)
        network = sum(timings.get(k, 0.0) for k in ("segment_x_s", "compnet_s", "segmentation_s", "recnet_s"))
        entropy = sum(timings.get(k, 0.0) for k in ("lossless_s", "entropy_compact_s", "residual_s"))
        timings.update(network_s=network, entropy_s=entropy)
        seconds = base.seconds + time.perf_counter() - start
        return EncodeResult(data, reconstruction, bits, qp, seconds, timings, dict(base.extras))

    def encode(self, image: np.ndarray, models: ModelSet, quality: Any = 27, *,
               segmentation: np.ndarray | None = None, **options) -> EncodeResult:
        return self.encode_many(image, models, [quality], segmentation=segmentation, **options)[0]

    def encode_many(self, image: np.ndarray, models: ModelSet, qualities: Sequence[Any], *,
                    segmentation: np.ndarray | None = None, **options) -> list[EncodeResult]:
        """c^ and x' once, then the residual at each QP (steps 1-3 do not depend on it)."""
        options = self.encode_options(options)
        qps = [self.parse_quality(q) for q in qualities]
        base = self._base(image, models, segmentation, options)
        return [self._finish(base, models, qp, options) for qp in qps]

    def section_bytes(self, section: Section, base: _Base) -> bytes:
        """The method section of a file (a hook: a method may append fields)."""
        return section.pack()

    def read_section(self, sem: fmt.SemFile) -> Section:
        """The :class:`Section` of a parsed file (the hook's inverse)."""
        return Section.unpack(sem.section)

    # --- decoding ---------------------------------------------------------------------------
    def _prediction(self, sem: fmt.SemFile, models: ModelSet, found: dict | None = None) -> tuple[np.ndarray, Section]:
        """x' of a parsed file: everything but the residual. ``found`` (a dict): also gets the map the
        prediction used (``map``) and the seconds of the compact layer's decode and of the map."""
        model = models[self.network]
        section = self.read_section(sem)
        if section.multiple != model.config.multiple:
            raise LayerError(f"file declares input multiple {section.multiple}, the model needs {model.config.multiple}")
        required, allowed = self.required_roles()
        self.check_roles(sem, required, allowed)
        h, w = sem.height, sem.width
        ph, pw = padded_side(h, section.multiple), padded_side(w, section.multiple)
        alpha = model.config.alpha
        start = time.perf_counter()
        compact = self.decoded_compact(sem, model, (ph // alpha, pw // alpha))
        compact_s = time.perf_counter() - start
        start = time.perf_counter()
        used_map = self.decoder_map(sem, compact, models)
        if found is not None:
            found.update(map=used_map, compact_s=compact_s, map_s=time.perf_counter() - start)
        return self.predict(model, compact, used_map, (h, w)), section

    @staticmethod
    def _with_residual(sem: fmt.SemFile, section: Section, prediction: np.ndarray) -> np.ndarray:
        residual = sem.layer(ROLE_RESIDUAL)
        if residual is None:
            return prediction
        if residual.codec == get_codec("hevc10").codec_id:   # x - x' + 512, unscaled
            r10 = decode_layer(residual, 3, (sem.height, sem.width), "residual")
            return add_residual(prediction, unoffset_residual(r10))
        r8 = decode_layer(residual, 3, (sem.height, sem.width), "residual")
        return add_residual(prediction, unscaled_residual(r8, section.res_min, section.res_max))

    def decoder_maps(self, sem: fmt.SemFile, models: ModelSet) -> dict[str, DecoderMap]:
        """The map the decoder predicts with, cropped to the image, from the layers of :meth:`map_roles`."""
        if self.map_output is None:
            return {}
        model = models[self.network]
        section = self.read_section(sem)
        self.check_roles(sem, *self.required_roles())
        roles = self.map_roles()
        compact = None
        if ROLE_COMPACT in roles:
            alpha = model.config.alpha
            ph, pw = padded_side(sem.height, section.multiple), padded_side(sem.width, section.multiple)
            compact = self.decoded_compact(sem, model, (ph // alpha, pw // alpha))
        labels = self.decoder_map(sem, compact, models)[: sem.height, : sem.width]
        return {self.map_output: DecoderMap(np.ascontiguousarray(labels, dtype=np.uint8), roles)}

    def decode_with_prediction(self, data: bytes | fmt.SemFile, models: ModelSet) -> tuple[np.ndarray, np.ndarray]:
        """(x~, x') of a file: the reconstruction and the prediction before the residual."""
        sem = self.open(data, models)
        prediction, section = self._prediction(sem, models)
        return self._with_residual(sem, section, prediction), prediction

    @staticmethod
    def _shared_key(sem: fmt.SemFile, section: Section) -> tuple:
        """What files of one image at several QPs share: everything but the residual QP and layer."""
        return (sem.width, sem.height, section.multiple, bytes(sem.section[SECTION.size:]),
                tuple((layer.role, layer.codec, bytes(layer.payload)) for layer in sem.layers
                      if layer.role != ROLE_RESIDUAL))

    def decoder_maps_many(self, files: Sequence[bytes], models: ModelSet) -> list[tuple[dict[str, DecoderMap], float]]:
        """Files that share all but the residual share their decoder map: it is computed once, and
        each file's seconds count it (parse + map)."""
        shared: dict[tuple, tuple[dict[str, DecoderMap], float]] = {}
        out = []
        for data in files:
            start = time.perf_counter()
            sem = self.open(data, models)
            key = self._shared_key(sem, self.read_section(sem))
            parsed = time.perf_counter() - start
            if key not in shared:
                t = time.perf_counter()
                maps = self.decoder_maps(sem, models)
                shared[key] = (maps, time.perf_counter() - t)
            maps, maps_s = shared[key]
            out.append((maps, parsed + maps_s))
        return out

    def decode_with_maps_many(self, files: Sequence[bytes], models: ModelSet
                              ) -> list[tuple[np.ndarray, float, dict[str, DecoderMap], float]]:
        """The decoder's map is the one its prediction uses: computed once per group of files that share
        all but the residual, for the image and the map output alike. A map's seconds count the parse, its
        own computation and, where it reads c^ (:meth:`map_roles`), the compact layer's decode."""
        shared: dict[tuple, tuple] = {}
        out = []
        for data in files:
            start = time.perf_counter()
            sem = self.open(data, models)
            section = self.read_section(sem)
            key = self._shared_key(sem, section)
            parsed = time.perf_counter() - start
            if key not in shared:
                found: dict = {}
                t = time.perf_counter()
                prediction, _ = self._prediction(sem, models, found)
                maps, maps_s = {}, 0.0
                if self.map_output is not None:
                    labels = np.ascontiguousarray(found["map"][: sem.height, : sem.width], dtype=np.uint8)
                    maps = {self.map_output: DecoderMap(labels, self.map_roles())}
                    maps_s = found["map_s"] + (found["compact_s"] if ROLE_COMPACT in self.map_roles() else 0.0)
                shared[key] = (prediction, time.perf_counter() - t, maps, maps_s)
            prediction, prediction_s, maps, maps_s = shared[key]
            t = time.perf_counter()
            image = self._with_residual(sem, section, prediction)
            out.append((image, parsed + prediction_s + time.perf_counter() - t, maps, parsed + maps_s))
        return out

    def decode_many(self, files: Sequence[bytes], models: ModelSet) -> list[tuple[np.ndarray, float]]:
        """Files whose layers other than the residual are byte-identical (one image at several QPs)
        share x': it is computed once, and each file's seconds count it (parse + x' + residual)."""
        return [(image, seconds) for image, seconds, _, _ in self.decode_with_maps_many(files, models)]

    def decode_file(self, sem: fmt.SemFile, models: ModelSet) -> np.ndarray:
        return self.decode_with_prediction(sem, models)[0]

    def describe(self, sem: fmt.SemFile) -> dict:
        section = self.read_section(sem)
        return {"input_multiple": section.multiple, "residual_qp": section.residual_qp,
                "residual_min": section.res_min, "residual_max": section.res_max}
