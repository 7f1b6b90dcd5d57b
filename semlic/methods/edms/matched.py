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
1 CPU threads). The guard against it, semlic.agreement's correction layer, sends the encoder's
class of every pixel whose margin is below tau.

Fingerprints. An EDMS decoder needs three sets of weights; the header's 8-byte fingerprint
is SHA-256 over the method name and the three weight fingerprints
(:meth:`semlic.methods.base.Method.fingerprint`), so a wrong PSPNet or SMapNet is refused
like a wrong DSSLIC model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from torch.nn import functional as F

from ...agreement import apply_correction, correction_map, top2_margin  # noqa: F401  (EDMS's guard, shared)
from ...errors import ConfigError
from ...layers import image_to_tensor, module_device
from ..dsslic.model import DSSLIC
from .smapnet import SMapNet


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


def upsampled_for_segnet(compact: np.ndarray, model: DSSLIC, device: torch.device) -> torch.Tensor:
    """up(c^) as PSPNet takes it: (1, 3, alpha h, alpha w) float32 in [0, 1]."""
    up = model.upsample(image_to_tensor(compact, module_device(model)))
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
        logits = segnet(upsampled_for_segnet(compact, model, module_device(segnet))).float()
        if smapnet is None:
            return logits
        smapnet.eval()
        return smapnet(torch.softmax(logits, 1).to(module_device(smapnet))).float()


def matched_segmentation(compact: np.ndarray, model: DSSLIC, segnet, smapnet: SMapNet | None = None) -> np.ndarray:
    """s^ (alpha h, alpha w) uint8 at the padded image size: the argmax of :func:`matched_scores`."""
    return matched_scores(compact, model, segnet, smapnet)[0].argmax(0).to(torch.uint8).cpu().numpy()


def segnet_lowres_logits(segnet, images: torch.Tensor) -> torch.Tensor:
    """PSPNet's logits before its final bilinear upsampling: (N, K, H/s, W/s), s its output stride (4 with
    its skip decoder).

    ``upsample_logits(segnet_lowres_logits(net, x), x.shape[-2:], net.config.align_corners)``
    equals ``net(x)`` in eval mode (tests/test_edms_pairs.py checks it): storing these is 64x
    smaller than the full-size logits at output stride 8.
    """
    return segnet.lowres_logits(images)[0]


def upsample_logits(logits: torch.Tensor, size: tuple[int, int], align_corners: bool) -> torch.Tensor:
    """Bilinear upsampling of low-resolution logits to ``size`` = (H, W), as PSPNet does."""
    return F.interpolate(logits.float(), size=tuple(size), mode="bilinear", align_corners=align_corners)
