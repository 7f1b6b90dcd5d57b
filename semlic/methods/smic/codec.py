"""The SMIC codec: a lossy semantic map and a losslessly coded downsampled image; Rec-Net decodes.

Wei et al. 2020, Fig. 1, with the project's codecs in place of the paper's: the map layer is
HEVC intra at an explicit QP (the paper's BPG), the small image is coded losslessly (the
paper's FLIF; here JPEG XL lossless, FLIF's successor, or any lossless codec).

encode(x), quality (factor f, map QP q):
  1. m = snap(SS-Net(x)): the semantic map drawn in the palette colours (H, W, 3) uint8
     (computed once for every quality of an image);
  2. layer 1: HEVC(m, q) (chroma 4:2:0 as BPG's default, or 4:4:4); the encoder decodes its
     own bytes, m^;
  3. layer 2: the image downsampled by f (Pillow bicubic, ceil(H/f) x ceil(W/f)), lossless;
  4. x~ = Rec-Net(up(small), m^, f), up = bicubic to (H, W); what the decoder computes.
decode(file): m^ and small from their layers, x~ as in 4.

The method section (3 bytes): factor (u8, a power of two 1..64), map QP (u8), map chroma
(u8: 0 4:2:0, 1 4:4:4). The header fingerprint names Rec-Net's weights (the decoder needs
nothing else; SS-Net is the encoder's).
"""

from __future__ import annotations

import re
import struct
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from PIL import Image

from ... import format as fmt
from ...errors import ConfigError, DeclaredSizeError, LayerError
from ...image_codecs import get_codec
from ...layers import (LOSSLESS_CHOICES, LOSSLESS_DEFAULT, array_to_tensor, check_image, code_lossless, decode_layer,
                       module_device, tensor_to_uint8)
from ...lazy import inference_mode, lazy_module
from .. import DecoderMap, EncodeResult, Method, ModelSet, Option, register_method

if TYPE_CHECKING:
    from .networks import RecNet, SSNet

torch = lazy_module("torch")
F = lazy_module("torch.nn.functional")

ROLE_MAP, ROLE_SMALL = 1, 2
FACTORS = (2, 4, 8, 16)
_SECTION = struct.Struct("<BBB")
_CHROMA = {"420": 0, "444": 1}


@dataclass(frozen=True)
class Section:
    factor: int
    map_qp: int
    map_chroma: str = "420"

    def pack(self) -> bytes:
        return _SECTION.pack(self.factor, self.map_qp, _CHROMA[self.map_chroma])

    @classmethod
    def unpack(cls, data: bytes) -> "Section":
        if len(data) != _SECTION.size:
            raise LayerError(f"the SMIC section has {len(data)} bytes, expected {_SECTION.size}")
        factor, qp, chroma = _SECTION.unpack(data)
        if factor < 1 or factor & (factor - 1) or factor > 64:
            raise DeclaredSizeError(f"declared downsampling factor {factor} is not a power of two in 1..64")
        if qp > 51 or chroma not in _CHROMA.values():
            raise LayerError(f"declared map QP {qp} / chroma code {chroma} is out of range")
        return cls(factor, qp, {v: k for k, v in _CHROMA.items()}[chroma])


def small_size(height: int, width: int, factor: int) -> tuple[int, int]:
    """(h, w) of the downsampled image: ceil(H / f) x ceil(W / f)."""
    return -(-height // factor), -(-width // factor)


def downsample(image: np.ndarray, factor: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (ceil(H/f), ceil(W/f), 3) uint8, Pillow bicubic (antialiased)."""
    h, w = small_size(*image.shape[:2], factor)
    if factor == 1:
        return image.copy()
    return np.asarray(Image.fromarray(image, "RGB").resize((w, h), Image.Resampling.BICUBIC), dtype=np.uint8).copy()


def upsample(small: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, 3, h, w) in [-1, 1] -> (N, 3, H, W): bicubic, clamped to [-1, 1]; the same at both ends."""
    if tuple(small.shape[-2:]) == tuple(size):
        return small.float()
    return F.interpolate(small.float(), size=tuple(size), mode="bicubic", align_corners=False).clamp(-1, 1)


def to_unit(image: np.ndarray | torch.Tensor, device=None) -> torch.Tensor:
    """(H, W, 3) uint8 array -> (1, 3, H, W) float in [-1, 1]; an (N, 3, H, W) uint8 tensor likewise."""
    if isinstance(image, np.ndarray):
        image = array_to_tensor(image).permute(2, 0, 1)[None]
    return image.to(device).float() / 127.5 - 1


def _pad(x: torch.Tensor, multiple: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    return F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x


@inference_mode
def draw_map(ssnet: SSNet, image: np.ndarray) -> np.ndarray:
    """snap(SS-Net(x)): the map in palette colours, (H, W, 3) uint8."""
    h, w = image.shape[:2]
    drawn = ssnet(_pad(to_unit(image, module_device(ssnet)), ssnet.multiple))[..., :h, :w]
    return ssnet.snap(drawn)[0].permute(1, 2, 0).cpu().numpy()


@inference_mode
def reconstruct(recnet: RecNet, small: np.ndarray, decoded_map: np.ndarray, factor: int) -> np.ndarray:
    """x~ = Rec-Net(up(small), m^, f), (H, W, 3) uint8, H x W the map's size."""
    device = module_device(recnet)
    h, w = decoded_map.shape[:2]
    multiple = recnet.config.multiple
    up = _pad(upsample(to_unit(small, device), (h, w)), multiple)
    out = recnet(up, _pad(to_unit(decoded_map, device), multiple), factor)
    return tensor_to_uint8(out[..., :h, :w])


def parse_quality(value: Any) -> tuple[int, int]:
    """(factor, map QP) from (f, q), [f, q], {"factor": f, "map_qp": q}, "f/q", "f:q" or "f8q32"."""
    if isinstance(value, dict):
        pair = (value.get("factor"), value.get("map_qp"))
    elif isinstance(value, (list, tuple)):
        pair = tuple(value)
    elif isinstance(value, str):
        match = re.fullmatch(r"\s*f?(\d+)\s*[:/,q]\s*(\d+)\s*", value)
        pair = match.groups() if match else ()
    elif isinstance(value, (int, float)) and value >= 100:   # a quality value: factor * 100 + QP
        pair = divmod(int(value), 100)
    else:
        pair = ()
    try:
        factor, qp = (int(v) for v in pair)
    except (TypeError, ValueError):
        raise ConfigError(f"smic: a quality is (factor, map QP), e.g. 8/32 or [8, 32]; got {value!r}") from None
    if factor < 1 or factor & (factor - 1) or factor > 64 or not 0 <= qp <= 51:
        raise ConfigError(f"smic: factor must be a power of two in 1..64 and the map QP in 0..51; got {factor}, {qp}")
    return factor, qp


@register_method
class SMICCodec(Method):
    """SMIC: HEVC-coded semantic map + losslessly coded downsampled image, Rec-Net at the decoder."""

    name = "smic"
    format_id = 4
    label = "SMIC"
    paper = ("Wei, Liao, Bai, Zhao: Semantic Map Based Image Compression via Conditional Generative "
             "Adversarial Network, PRCV 2020")
    models = ("smic_recnet",)
    encoder_models = ("smic_ssnet",)
    quality_name = "factor*100+map_qp"
    default_qualities = tuple((f, q) for f in (16, 8, 4, 2) for q in (40, 28))
    default_quality = (8, 28)            # the paper's middle downsampling factor, the finer map QP
    decode_tolerance = 2                 # Rec-Net is float; both layers are classical codecs
    options = {
        "map_chroma": Option("420", str, "chroma of the HEVC-coded map: 420 (BPG's default) or 444"),
        "lossless": Option(LOSSLESS_DEFAULT, str, f"lossless codec of the small image: {', '.join(LOSSLESS_CHOICES)}"),
    }
    layer_roles = {ROLE_MAP: "map", ROLE_SMALL: "small_image"}
    colour = "tab:cyan"
    task_models = ("smic_ssnet",)        # its palette turns the decoded map's colours into classes

    def parse_quality(self, value: Any) -> tuple[int, int]:
        return parse_quality(value)

    def quality_value(self, quality: Any) -> float:
        factor, qp = parse_quality(quality)
        return float(factor * 100 + qp)

    def quality_label(self, quality: Any) -> str:
        factor, qp = parse_quality(quality)
        return f"f{factor}q{qp}"

    def encode(self, image: np.ndarray, models: ModelSet, quality: Any = (8, 32), *,
               segmentation: np.ndarray | None = None, **options) -> EncodeResult:
        return self.encode_many(image, models, [quality], segmentation=segmentation, **options)[0]

    def encode_many(self, image: np.ndarray, models: ModelSet, qualities: Sequence[Any], *,
                    segmentation: np.ndarray | None = None, **options) -> list[EncodeResult]:
        """The map is drawn once; each factor's small image is coded once; each (factor, QP) once."""
        options = self.encode_options(options)
        if options["map_chroma"] not in _CHROMA or options["lossless"] not in LOSSLESS_CHOICES:
            raise ConfigError(f"smic: map_chroma must be 420 or 444 and lossless one of {LOSSLESS_CHOICES}; "
                              f"got {options['map_chroma']!r}, {options['lossless']!r}")
        check_image(image)
        self.check_models(models, self.models + self.encoder_models)
        pairs = [parse_quality(q) for q in qualities]
        h, w = image.shape[:2]
        started = time.perf_counter()
        drawn = draw_map(models["smic_ssnet"], image)
        shared = {"ssnet_s": time.perf_counter() - started}
        hevc, smalls, maps, out = get_codec("hevc"), {}, {}, []
        for factor, qp in pairs:
            start = time.perf_counter()
            timings = dict(shared)
            if factor not in smalls:
                t = time.perf_counter()
                small = downsample(image, factor)
                smalls[factor] = (small, *code_lossless(small, options["lossless"]), time.perf_counter() - t)
            small, small_codec, small_bytes, small_s = smalls[factor]
            if qp not in maps:
                t = time.perf_counter()
                payload = hevc.encode(drawn, qp, chroma=options["map_chroma"])
                maps[qp] = (payload, hevc.decode(payload, 3), time.perf_counter() - t)
            map_bytes, decoded_map, map_s = maps[qp]
            t = time.perf_counter()
            reconstruction = reconstruct(models["smic_recnet"], small, decoded_map, factor)
            timings.update(recnet_s=time.perf_counter() - t, small_image_s=small_s, map_s=map_s)
            timings.update(network_s=timings["ssnet_s"] + timings["recnet_s"], entropy_s=small_s + map_s)
            section = Section(factor, qp, options["map_chroma"])
            layers = (fmt.Layer(ROLE_MAP, hevc.codec_id, map_bytes), fmt.Layer(ROLE_SMALL, small_codec, small_bytes))
            sem = fmt.SemFile(self.name, w, h, self.fingerprint(models), section.pack(), layers)
            data = fmt.pack(sem)
            seconds = shared["ssnet_s"] + small_s + map_s + time.perf_counter() - start
            out.append(EncodeResult(data, reconstruction, self.layer_bits(sem), (factor, qp), seconds, timings,
                                    {"map": drawn, "decoded_map": decoded_map}))
        return out

    def decode_file(self, sem: fmt.SemFile, models: ModelSet) -> np.ndarray:
        section = Section.unpack(sem.section)
        self.check_roles(sem, (ROLE_MAP, ROLE_SMALL), (ROLE_MAP, ROLE_SMALL))
        decoded_map = decode_layer(sem.layer(ROLE_MAP), 3, (sem.height, sem.width), "map")
        small = decode_layer(sem.layer(ROLE_SMALL), 3, small_size(sem.height, sem.width, section.factor), "small image")
        return reconstruct(models["smic_recnet"], small, decoded_map, section.factor)

    @inference_mode
    def decoder_maps(self, sem: fmt.SemFile, models: ModelSet) -> dict[str, DecoderMap]:
        """The decoded map layer read as classes: each pixel's nearest palette colour (void: 255)."""
        self.check_roles(sem, (ROLE_MAP, ROLE_SMALL), (ROLE_MAP, ROLE_SMALL))
        self.check_models(models, self.task_models)
        ssnet = models["smic_ssnet"]
        decoded_map = decode_layer(sem.layer(ROLE_MAP), 3, (sem.height, sem.width), "map")
        drawn = torch.from_numpy(np.ascontiguousarray(decoded_map)).permute(2, 0, 1)[None].float() / 127.5 - 1
        labels = ssnet.labels(drawn)[0]
        labels = torch.where(labels < ssnet.config.num_classes, labels, torch.full_like(labels, 255))
        return {"map": DecoderMap(labels.to(torch.uint8).numpy(), (ROLE_MAP,))}

    def describe(self, sem: fmt.SemFile) -> dict:
        section = Section.unpack(sem.section)
        return {"factor": section.factor, "map_qp": section.map_qp, "map_chroma": section.map_chroma}
