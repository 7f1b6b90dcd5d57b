"""Encoder-decoder matched segmentation (EDMS): the map both ends derive from the compact image.

Hoang, Zhou & Fan, "Image Compression with Encoder-Decoder Matched Semantic Segmentation"
(CVPR workshops 2020), sections 2.2-2.4: the file carries no segmentation; encoder and decoder
both compute

    s^ = argmax SMapNet(softmax(PSPNet(up(c^))))      (method ``edms``)
    s^ = argmax PSPNet(up(c^))                         (method ``edms_noenh``, no enhancement)

from the *decoded* 8-bit compact image c^ (h, w, 3), at the padded image size
(H, W) = (alpha h, alpha w), and FineNet reconstructs with s^ in place of the sent map.

Agreement. A decoder that derives another s^ adds the residual to another prediction, so
both ends run this one function, in float32 (no autocast), batch size 1, eval mode, and on
CUDA with deterministic cuDNN kernels, no autotuning and no TF32 (:func:`deterministic_float32`).
That makes s^ bit-identical on one device and thread setting; across devices the logits may
differ in their last bits, and a pixel flips only where the top-2 margin is that small
(:func:`top2_margin`; measured in reports/edms_agreement.md: 2 of 524,288 pixels between 2 and
1 CPU threads). The guard against it, :func:`correction_map` / :func:`apply_correction`, sends
the encoder's class of every pixel whose margin is below tau; it is not in the file format yet.

Fingerprints. An EDMS decoder needs three sets of weights; the header's 8-byte fingerprint
is SHA-256 over the method name and the three weight fingerprints (:func:`decoder_fingerprint`),
so a wrong PSPNet or SMapNet is refused like a wrong base model.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

import numpy as np
import torch
from torch.nn import functional as F

from .checkpoint import state_fingerprint
from .errors import ConfigError, MissingModelError, ModelMismatchError
from .models import DSSLIC, SMapNet

EDMS_METHODS = ("edms", "edms_noenh")


@contextlib.contextmanager
def deterministic_float32() -> Iterator[None]:
    """cuDNN deterministic, no benchmark autotuning, IEEE float32 (no TF32); restored on exit."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.deterministic, cudnn.benchmark, cudnn.conv.fp32_precision, matmul.fp32_precision)
    cudnn.deterministic, cudnn.benchmark = True, False
    cudnn.conv.fp32_precision = matmul.fp32_precision = "ieee"
    try:
        yield
    finally:
        cudnn.deterministic, cudnn.benchmark, cudnn.conv.fp32_precision, matmul.fp32_precision = saved


def module_fingerprint(module: torch.nn.Module) -> bytes:
    """``module.fingerprint`` (set by the loaders), else the 8-byte SHA-256 of its state dict (cached)."""
    fingerprint = getattr(module, "fingerprint", None)
    if fingerprint is None:
        fingerprint = state_fingerprint(module.state_dict())
        module.fingerprint = fingerprint
    return fingerprint


def check_models(method: str, model: DSSLIC, segnet, smapnet: SMapNet | None) -> None:
    """Refuse a missing PSPNet / SMapNet, or class counts that do not chain PSPNet -> SMapNet -> FineNet."""
    if method not in EDMS_METHODS:
        raise ConfigError(f"{method!r} is not an EDMS method ({', '.join(EDMS_METHODS)})")
    if segnet is None:
        raise MissingModelError(f"method {method} derives the segmentation with PSPNet: give the segnet "
                                "(--segnet) the file was made with")
    if method == "edms" and smapnet is None:
        raise MissingModelError("method edms enhances the segmentation with SMapNet: give the smapnet (--smapnet)")
    classes = segnet.config.num_classes
    if classes > model.config.label_nc:
        raise ModelMismatchError(f"PSPNet has {classes} classes, more than the base model's label_nc "
                                 f"{model.config.label_nc}")
    if method == "edms" and smapnet.config.num_classes != classes:
        raise ModelMismatchError(f"SMapNet maps {smapnet.config.num_classes} classes, PSPNet predicts {classes}")


def decoder_fingerprint(method: str, model: DSSLIC, segnet=None, smapnet: SMapNet | None = None) -> bytes:
    """The 8 header bytes naming every weight the decoder needs (base; + PSPNet, + SMapNet)."""
    base = getattr(model, "fingerprint", None)
    if base is None:
        raise ConfigError("model has no fingerprint: load it with semlic.training.load_dsslic")
    if method not in EDMS_METHODS:
        return base
    check_models(method, model, segnet, smapnet)
    parts = [method.encode(), base, module_fingerprint(segnet)]
    if method == "edms":
        parts.append(module_fingerprint(smapnet))
    return hashlib.sha256(b"\0".join(parts)).digest()[:8]


def compact_to_tensor(compact: np.ndarray, device: torch.device) -> torch.Tensor:
    """(h, w, 3) uint8 -> (1, 3, h, w) float32 in [-1, 1] (the codec's convention)."""
    return torch.from_numpy(np.ascontiguousarray(compact)).to(device).permute(2, 0, 1)[None].float() / 127.5 - 1


def _device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def upsampled_for_segnet(compact: np.ndarray, model: DSSLIC, device: torch.device) -> torch.Tensor:
    """up(c^) as PSPNet takes it: (1, 3, alpha h, alpha w) float32 in [0, 1]."""
    up = model.upsample(compact_to_tensor(compact, _device(model)))
    return ((up + 1) / 2).to(device)


@torch.inference_mode()
def matched_scores(compact: np.ndarray, model: DSSLIC, segnet, smapnet: SMapNet | None = None) -> torch.Tensor:
    """(1, K, alpha h, alpha w) float32 class scores whose argmax is s^ (module docstring).

    ``compact``: the decoded 8-bit compact image (h, w, 3) uint8 of a padded image. Without
    ``smapnet`` these are PSPNet's logits (``edms_noenh``); with it, SMapNet's scores.
    Puts ``segnet`` and ``smapnet`` in eval mode.
    """
    if compact.ndim != 3 or compact.shape[2] != 3 or compact.dtype != np.uint8:
        raise ConfigError(f"compact image must be (h, w, 3) uint8, got {compact.shape} {compact.dtype}")
    segnet.eval()
    with deterministic_float32():
        logits = segnet(upsampled_for_segnet(compact, model, _device(segnet))).float()
        if smapnet is None:
            return logits
        smapnet.eval()
        return smapnet(torch.softmax(logits, 1).to(_device(smapnet))).float()


def matched_segmentation(compact: np.ndarray, model: DSSLIC, segnet, smapnet: SMapNet | None = None) -> np.ndarray:
    """s^ (alpha h, alpha w) uint8 at the padded image size: the argmax of :func:`matched_scores`."""
    return matched_scores(compact, model, segnet, smapnet)[0].argmax(0).to(torch.uint8).cpu().numpy()


def top2_margin(scores: torch.Tensor) -> torch.Tensor:
    """(N, K, H, W) scores -> (N, H, W) best minus second-best score: how far a pixel is from flipping."""
    top2 = scores.float().topk(2, dim=1).values
    return top2[:, 0] - top2[:, 1]


def segnet_lowres_logits(segnet, images: torch.Tensor) -> torch.Tensor:
    """PSPNet's logits before its final bilinear upsampling: (N, K, H/s, W/s), s its output stride.

    ``upsample_logits(segnet_lowres_logits(net, x), x.shape[-2:], net.config.align_corners)``
    equals ``net(x)`` in eval mode (tests/test_edms_pairs.py checks it): storing these is 64x
    smaller than the full-size logits at output stride 8.
    """
    _, layer4 = segnet.features(images)
    return segnet.head(segnet.ppm(layer4))


def upsample_logits(logits: torch.Tensor, size: tuple[int, int], align_corners: bool) -> torch.Tensor:
    """Bilinear upsampling of low-resolution logits to ``size`` = (H, W), as PSPNet does."""
    return F.interpolate(logits.float(), size=tuple(size), mode="bilinear", align_corners=align_corners)


# --- training pairs for SMapNet (EDMS, section 2.4, step 2) -------------------------------------
PAIRS_INFO = "pairs.json"


def _pair_row(sample_id: str, size: tuple[int, int], raw: torch.Tensor, reference: np.ndarray, classes: int) -> dict:
    from .segnet.metrics import confusion_matrix, scores_from_confusion

    h, w = size
    scores = scores_from_confusion(confusion_matrix(raw[:h, :w].cpu(), torch.from_numpy(reference[:h, :w]), classes))
    return {"id": sample_id, "height": h, "width": w, "miou": scores.miou, "pixel_accuracy": scores.pixel_accuracy}


@torch.inference_mode()
def generate_pairs(base_model: DSSLIC, segnet, prepared_dir, split: str, seg_dir, out_dir,
                   ids: list[str] | None = None, progress: bool = True):
    """SMapNet's training pairs: (PSPNet(up(c^)), reference segmentation) for every image of a split.

    For each image x of ``<prepared_dir>/<split>/images`` with reference map s (``<seg_dir>/<id>.png``:
    PSPNet on the original image, what train-base used), padded as the codec pads:
    c^ = round8(CompNet(x, s)), then PSPNet's low-resolution logits of up(c^) (float16,
    :func:`segnet_lowres_logits`). Writes ``<out_dir>/logits/<id>.safetensors`` (``logits``
    (K, H/8, W/8), metadata ``height``/``width`` = the padded size), ``<out_dir>/targets/<id>.png``
    (s, padded) and ``<out_dir>/pairs.json`` (classes, PSPNet interpolation, fingerprints).
    ``ids`` restricts the work to a shard. Returns one row per image: id, height, width, and the
    mIoU / pixel accuracy of PSPNet(up(c^)) (full float32 logits) against s on the unpadded image.
    """
    import json
    from pathlib import Path

    import pandas as pd
    from safetensors.torch import save as safetensors_save
    from tqdm.auto import tqdm

    from .codec import compact_image, pad_to_multiple
    from .errors import DatasetError, LabelMapError
    from .imageio import atomic_write_bytes, load_image, load_label_map, save_png
    from .segnet.prepared import list_prepared

    classes = segnet.config.num_classes
    if classes > base_model.config.label_nc:
        raise ModelMismatchError(f"PSPNet has {classes} classes, more than the base model's label_nc "
                                 f"{base_model.config.label_nc}")
    out_dir, seg_dir = Path(out_dir), Path(seg_dir)
    samples = list_prepared(prepared_dir, split)
    if ids is not None:
        unknown = sorted(set(ids) - {s.id for s in samples})
        if unknown:
            raise DatasetError(f"{prepared_dir}: split {split!r} has no images {unknown[:5]}")
        samples = [s for s in samples if s.id in set(ids)]
    segnet.eval()
    multiple, rows = base_model.config.multiple, []
    for sample in tqdm(samples, desc=f"smap pairs {split}", disable=not progress, dynamic_ncols=True):
        image, reference = load_image(sample.image_path), load_label_map(seg_dir / f"{sample.id}.png")
        if reference.shape != image.shape[:2] or int(reference.max()) >= classes:
            raise LabelMapError(f"{seg_dir / sample.id}.png: reference map {reference.shape} with labels up to "
                                f"{int(reference.max())}; expected {image.shape[:2]} and labels < {classes}")
        reference = pad_to_multiple(reference, multiple)
        compact = compact_image(base_model, pad_to_multiple(image, multiple), reference)
        with deterministic_float32():
            images = upsampled_for_segnet(compact, base_model, _device(segnet))
            lowres = segnet_lowres_logits(segnet, images).float()
        size = tuple(images.shape[-2:])
        raw = upsample_logits(lowres, size, segnet.config.align_corners)[0].argmax(0)
        metadata = {"height": str(size[0]), "width": str(size[1])}
        payload = safetensors_save({"logits": lowres[0].half().cpu().contiguous()}, metadata=metadata)
        atomic_write_bytes(out_dir / "logits" / f"{sample.id}.safetensors", payload)
        save_png(out_dir / "targets" / f"{sample.id}.png", reference)
        rows.append(_pair_row(sample.id, image.shape[:2], raw, reference, classes))
    info = {"num_classes": classes, "align_corners": bool(segnet.config.align_corners), "split": split,
            "base_fingerprint": module_fingerprint(base_model).hex(),
            "segnet_fingerprint": module_fingerprint(segnet).hex()}
    atomic_write_bytes(out_dir / PAIRS_INFO, (json.dumps(info, indent=2, sort_keys=True) + "\n").encode())
    return pd.DataFrame(rows, columns=["id", "height", "width", "miou", "pixel_accuracy"])


# --- a guard against cross-device disagreement (reports/edms_agreement.md) ------------------------
def correction_map(scores: torch.Tensor, tau: float) -> np.ndarray:
    """Encoder side: (1, K, H, W) scores -> (H, W) uint8, 0 where the top-2 margin is >= ``tau``
    (a pixel no score error below tau / 2 can flip), else 1 + the encoder's class (K <= 254).

    Sent losslessly, it makes the decoder's s^ equal the encoder's whenever every score differs
    by less than tau / 2 between the two machines (:func:`apply_correction`); its cost is the
    coded size of a map that is almost all zeros (measured in reports/edms_agreement.md).
    """
    margin = top2_margin(scores)[0]
    labels = scores[0].argmax(0)
    return torch.where(margin < tau, labels + 1, torch.zeros_like(labels)).to(torch.uint8).cpu().numpy()


def apply_correction(labels: np.ndarray, correction: np.ndarray) -> np.ndarray:
    """Decoder side: the decoder's own s^ with the encoder's classes at the guarded pixels."""
    if correction.shape != labels.shape:
        raise ConfigError(f"correction map {correction.shape} does not match the label map {labels.shape}")
    return np.where(correction > 0, correction.astype(np.int16) - 1, labels).astype(np.uint8)
