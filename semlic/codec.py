"""The layered DSSLIC and EDMS codecs, done right: the decoder sees only the file.

Akbari et al. 2019, Algorithm 1, with the fixes REFERENCE.md calls for:

encode(x, s):
  1. pad x and s to a multiple of the model's input multiple, at least 4 multiples
     (reflect; cropped back after RecNet);
  2. c = CompNet(x, s), rounded (not truncated) to 8 bits, coded losslessly;
  3. x' = RecNet(s, c^) on the *decoded* 8-bit compact image c^ (what the decoder will have),
     cropped and rounded to 8 bits;
  4. r = x - x' (integers in -255..255); min/max (integers, in the header), r scaled to
     0..255, rounded, HEVC-intra coded at an explicit QP (chroma 4:2:0 as in the paper, or
     4:4:4); ``residual_qp=None`` sends no residual (the paper's Table 1 setting);
  5. s coded losslessly at its original size.
decode(file): s^ and c^ from their layers, x' = RecNet(s^, c^), x~ = clip(round(x' + r^)).

EDMS (Hoang et al. 2020; ``method="edms"`` or ``"edms_noenh"``): steps 1, 2 and 4 as above
(CompNet still sees the original segmentation s), but no segmentation layer: step 3 uses
s^ = argmax SMapNet(PSPNet(up(c^))) (or PSPNet's own map), which the decoder derives from c^
the same way (:mod:`semlic.edms`). The header fingerprint then names the base model, the
PSPNet and the SMapNet together (:func:`semlic.edms.decoder_fingerprint`).

The encoder computes its reconstruction by decoding its own residual bytes, so the decoder
reproduces it exactly on the same device and thread settings (see the tests).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from . import edms
from . import format as fmt
from .codecs import CODECS_BY_ID, LOSSLESS, get_codec
from .errors import ConfigError, FingerprintMismatchError, LayerError, UnknownMethodError
from .models import DSSLIC, SMapNet

CODEC_METHODS = ("dsslic",) + edms.EDMS_METHODS

# EDMS decision margin below which the encoder sends its class (reports/edms_agreement.md:
# class scores differed by at most 7.3e-5 between 1 and 2 CPU threads).
AGREEMENT_TAU = 2e-4
LOSSLESS_DEFAULT = "jxl_lossless"  # smallest on label maps and compact images; "best" tries all (reports/lossless.md)


@dataclass
class EncodeResult:
    data: bytes
    prediction: np.ndarray          # x' (H, W, 3) uint8: RecNet's output as both ends compute it
    reconstruction: np.ndarray      # x~ (H, W, 3) uint8: what the decoder will output
    layer_bits: dict[str, int]
    timings: dict[str, float] = field(default_factory=dict)
    matched_segmentation: np.ndarray | None = None   # EDMS: s^ (padded H, W) uint8, as the decoder derives it


def pad_to_multiple(array: np.ndarray, multiple: int) -> np.ndarray:
    """Reflect-pad the bottom and right of an (H, W[, C]) array to ``format.padded_side``."""
    h, w = array.shape[:2]
    ph, pw = fmt.padded_side(h, multiple) - h, fmt.padded_side(w, multiple) - w
    if not ph and not pw:
        return array
    pad = ((0, ph), (0, pw)) + ((0, 0),) * (array.ndim - 2)
    return np.pad(array, pad, mode="reflect")


def _to_tensor(image: np.ndarray, device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1)[None].float() / 127.5 - 1


def _to_uint8(t: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) in [-1, 1] -> (H, W, 3) uint8, rounding to nearest."""
    return torch.round((t[0].float() + 1) * 127.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _code_lossless(array: np.ndarray, codec_name: str) -> tuple[int, bytes]:
    names = LOSSLESS if codec_name == "best" else (codec_name,)
    best = None
    for name in names:
        codec = get_codec(name)
        if not codec.lossless:
            raise ConfigError(f"{name} is not a lossless codec; choose one of {', '.join(LOSSLESS)} or 'best'")
        data = codec.encode(array)
        if best is None or len(data) < len(best[1]):
            best = (codec.codec_id, data)
    return best


def _decode_layer(layer: fmt.Layer, channels: int, shape: tuple[int, int]) -> np.ndarray:
    array = CODECS_BY_ID[layer.codec].decode(layer.payload, channels)
    if array.shape[:2] != shape:
        raise LayerError(f"{layer.role_name} layer is {array.shape[1]}x{array.shape[0]}, the header implies "
                         f"{shape[1]}x{shape[0]}")
    return array


@torch.inference_mode()
def compact_image(model: DSSLIC, image_padded: np.ndarray, seg_padded: np.ndarray) -> np.ndarray:
    """c^ = CompNet(x, s) rounded to 8 bits: (H / alpha, W / alpha, 3) uint8 from padded x and s."""
    device = _device(model)
    labels = torch.from_numpy(np.ascontiguousarray(seg_padded)).to(device)[None].long()
    return _to_uint8(model.compact(_to_tensor(image_padded, device), labels))


@torch.inference_mode()
def predict(model: DSSLIC, compact: np.ndarray, seg_padded: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """x' = RecNet(s, c^) from the 8-bit compact image, cropped to ``size`` = (H, W), uint8."""
    device = _device(model)
    labels = torch.from_numpy(seg_padded).to(device)[None].long()
    recon = model.reconstruct(_to_tensor(compact, device), labels)
    return _to_uint8(recon[..., : size[0], : size[1]])


def _residual_decode(r8: np.ndarray, res_min: int, res_max: int) -> np.ndarray:
    return r8.astype(np.float32) / 255.0 * float(res_max - res_min) + float(res_min)


def _add_residual(prediction: np.ndarray, residual: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(prediction.astype(np.float32) + residual), 0, 255).astype(np.uint8)


def _method_fingerprint(method: str, model: DSSLIC, segnet, smapnet: SMapNet | None) -> bytes:
    if method not in CODEC_METHODS:
        raise UnknownMethodError(f"method {method!r} is not coded by this codec; "
                                 f"choose one of {', '.join(CODEC_METHODS)}")
    return edms.decoder_fingerprint(method, model, segnet, smapnet)


def encode(image: np.ndarray, segmentation: np.ndarray, model: DSSLIC, residual_qp: int | None = 27, *,
           chroma: str = "420", lossless: str = LOSSLESS_DEFAULT, method: str = "dsslic", segnet=None,
           smapnet: SMapNet | None = None, agreement_tau: float = AGREEMENT_TAU) -> EncodeResult:
    """Code an (H, W, 3) uint8 image with its (H, W) uint8 segmentation map into a .sem file.

    ``method``: ``dsslic`` sends the map; ``edms`` / ``edms_noenh`` send only compact +
    residual and need ``segnet`` (a PSPNet) and, for ``edms``, ``smapnet``: the same weights
    must decode it. The segmentation map feeds CompNet in every method.

    ``agreement_tau`` (EDMS): pixels whose top-2 class-score margin is below it get the
    encoder's class sent in a sparse correction layer, so a decoder whose scores differ by
    less than tau / 2 (another thread count or device) derives the same s^; 0 sends none.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ConfigError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if segmentation.shape != image.shape[:2]:
        raise ConfigError(f"segmentation {segmentation.shape} does not match image {image.shape[:2]}")
    label_nc = model.config.label_nc
    if segmentation.size and int(segmentation.max()) >= label_nc:
        raise ConfigError(f"segmentation label {int(segmentation.max())} >= the model's label_nc {label_nc}")
    fingerprint = _method_fingerprint(method, model, segnet, smapnet)
    h, w = image.shape[:2]
    multiple = model.config.multiple
    timings: dict[str, float] = {}
    t = time.perf_counter()
    image_padded, seg_padded = pad_to_multiple(image, multiple), pad_to_multiple(segmentation, multiple)
    compact = compact_image(model, image_padded, seg_padded)
    timings["compnet_s"] = time.perf_counter() - t

    t = time.perf_counter()
    layers = []
    if method == "dsslic":
        seg_codec, seg_bytes = _code_lossless(segmentation, lossless)
        layers.append(fmt.Layer(fmt.ROLE_SEGMENTATION, seg_codec, seg_bytes))
    comp_codec, comp_bytes = _code_lossless(compact, lossless)
    layers.append(fmt.Layer(fmt.ROLE_COMPACT, comp_codec, comp_bytes))
    timings["lossless_s"] = time.perf_counter() - t

    matched = None
    if method != "dsslic":
        t = time.perf_counter()
        scores = edms.matched_scores(compact, model, segnet, smapnet if method == "edms" else None)
        matched = seg_padded = scores[0].argmax(0).to(torch.uint8).cpu().numpy()
        if agreement_tau > 0:
            correction = edms.correction_map(scores, agreement_tau)
            if correction.any():
                sparse = get_codec("sparse_labels")
                layers.append(fmt.Layer(fmt.ROLE_CORRECTION, sparse.codec_id, sparse.encode(correction)))
        timings["segmentation_s"] = time.perf_counter() - t
    t = time.perf_counter()
    prediction = predict(model, compact, seg_padded, (h, w))
    timings["recnet_s"] = time.perf_counter() - t

    res_min = res_max = 0
    reconstruction = prediction
    if residual_qp is not None:
        t = time.perf_counter()
        residual = image.astype(np.int16) - prediction.astype(np.int16)
        res_min, res_max = int(residual.min()), int(residual.max())
        span = max(1, res_max - res_min)
        r8 = np.rint((residual - res_min).astype(np.float32) * (255.0 / span)).astype(np.uint8)
        hevc = get_codec("hevc")
        payload = hevc.encode(r8, residual_qp, chroma=chroma)
        layers.append(fmt.Layer(fmt.ROLE_RESIDUAL, hevc.codec_id, payload))
        decoded = hevc.decode(payload, 3)
        reconstruction = _add_residual(prediction, _residual_decode(decoded, res_min, res_max))
        timings["residual_s"] = time.perf_counter() - t

    sem = fmt.SemFile(method, w, h, multiple, fingerprint, residual_qp, res_min, res_max, tuple(layers))
    data = fmt.pack(sem)
    layer_bits = {"header": 8 * fmt.HEADER_BYTES, **{lay.role_name: lay.bits for lay in layers}}
    assert sum(layer_bits.values()) == 8 * len(data)
    return EncodeResult(data, prediction, reconstruction, layer_bits, timings, matched)


def _check_layers(sem: fmt.SemFile) -> None:
    """dsslic: segmentation + compact (+ residual); EDMS: compact (+ residual), no segmentation."""
    roles = [lay.role_name for lay in sem.layers]
    wants_segmentation = sem.method == "dsslic"
    if sem.layer(fmt.ROLE_COMPACT) is None or (sem.layer(fmt.ROLE_SEGMENTATION) is None) == wants_segmentation:
        needed = ("segmentation and compact layers" if wants_segmentation
                  else "a compact layer and no segmentation layer")
        raise LayerError(f"a {sem.method} file needs {needed}; found {roles}")
    if wants_segmentation and sem.layer(fmt.ROLE_CORRECTION) is not None:
        raise LayerError(f"a dsslic file has no segmentation correction layer; found {roles}")


def decode(data: bytes, model: DSSLIC, *, return_prediction: bool = False, segnet=None,
           smapnet: SMapNet | None = None):
    """Decode a .sem file with the models it was made with; returns (H, W, 3) uint8.

    An EDMS file needs its ``segnet`` (and ``smapnet`` for ``edms``); ``smapnet`` is unused
    for ``edms_noenh``, and both are unused for ``dsslic``.
    """
    sem = fmt.unpack(data)
    if sem.method in edms.EDMS_METHODS:
        edms.check_models(sem.method, model, segnet, smapnet)
    fingerprint = (_method_fingerprint(sem.method, model, segnet, smapnet)
                   if getattr(model, "fingerprint", None) is not None else None)
    if fingerprint != sem.fingerprint:
        what = {"dsslic": "model", "edms": "base model + PSPNet + SMapNet"}.get(sem.method, "base model + PSPNet")
        raise FingerprintMismatchError(
            f"the file was made with {what} {sem.fingerprint.hex()}, the loaded {what} is "
            f"{fingerprint.hex() if fingerprint else 'unfingerprinted'}: load the matching checkpoint(s)")
    if sem.multiple != model.config.multiple:
        raise LayerError(f"file declares input multiple {sem.multiple}, the model needs {model.config.multiple}")
    _check_layers(sem)
    h, w = sem.height, sem.width
    ph, pw = sem.padded_size
    alpha = model.config.alpha
    compact = _decode_layer(sem.layer(fmt.ROLE_COMPACT), 3, (ph // alpha, pw // alpha))
    if sem.method == "dsslic":
        segmentation = _decode_layer(sem.layer(fmt.ROLE_SEGMENTATION), 1, (h, w))
        if int(segmentation.max()) >= model.config.label_nc:
            raise LayerError(f"segmentation label {int(segmentation.max())} >= the model's label_nc "
                             f"{model.config.label_nc}")
        seg_padded = pad_to_multiple(segmentation, sem.multiple)
    else:
        seg_padded = edms.matched_segmentation(compact, model, segnet, smapnet if sem.method == "edms" else None)
        correction = sem.layer(fmt.ROLE_CORRECTION)
        if correction is not None:
            seg_padded = edms.apply_correction(seg_padded, _decode_layer(correction, 1, (ph, pw)))
    prediction = predict(model, compact, seg_padded, (h, w))
    reconstruction = prediction
    res_layer = sem.layer(fmt.ROLE_RESIDUAL)
    if res_layer is not None:
        r8 = _decode_layer(res_layer, 3, (h, w))
        reconstruction = _add_residual(prediction, _residual_decode(r8, sem.res_min, sem.res_max))
    return (reconstruction, prediction) if return_prediction else reconstruction
