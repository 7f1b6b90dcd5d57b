"""A guard for maps both ends of a codec derive from decoded data: the correction layer.

A method whose decoder derives a segmentation map from what it decoded (EDMS: SMapNet(PSPNet(up(c^)));
DSSLIC-RD's derived map: PSPNet(up(c^))) adds its residual to a prediction made with that map, so
the decoder's map must equal the encoder's. Both ends compute it with one function in float32, but
another CPU, thread count or device may change the class scores in their last bits, and a pixel
flips where the best and second-best scores are that close (:func:`top2_margin`). The encoder
therefore sends, in a sparse correction layer, its class at every pixel whose top-2 margin is below
``tau`` (:func:`correction_map`); the decoder puts those classes over its own map
(:func:`apply_correction`). With every score within tau / 2 of the encoder's, the maps agree.
reports/edms_agreement.md measured the score differences and the layer's cost (the default tau).
"""

from __future__ import annotations

import numpy as np

from .errors import ConfigError
from .lazy import lazy_module

torch = lazy_module("torch")

#: the default margin below which the encoder sends its class (reports/edms_agreement.md: class
#: scores differed by at most 7.3e-5 between 1 and 2 CPU threads)
AGREEMENT_TAU = 2e-4


def top2_margin(scores: torch.Tensor) -> torch.Tensor:
    """(N, K, H, W) scores -> (N, H, W) best minus second-best score: how far a pixel is from flipping."""
    top2 = scores.float().topk(2, dim=1).values
    return top2[:, 0] - top2[:, 1]


def correction_map(scores: torch.Tensor, tau: float) -> np.ndarray:
    """Encoder side: (1, K, H, W) scores -> (H, W) uint8, 0 where the top-2 margin is >= ``tau``
    (a pixel no score error below tau / 2 can flip), else 1 + the encoder's class (K <= 254).

    Sent losslessly, it makes the decoder's map equal the encoder's whenever every score differs
    by less than tau / 2 between the two machines (:func:`apply_correction`); its cost is the
    coded size of a map that is almost all zeros.
    """
    margin = top2_margin(scores)[0]
    labels = scores[0].argmax(0)
    return torch.where(margin < tau, labels + 1, torch.zeros_like(labels)).to(torch.uint8).cpu().numpy()


def apply_correction(labels: np.ndarray, correction: np.ndarray) -> np.ndarray:
    """Decoder side: the decoder's own map with the encoder's classes at the guarded pixels."""
    if correction.shape != labels.shape:
        raise ConfigError(f"correction map {correction.shape} does not match the label map {labels.shape}")
    return np.where(correction > 0, correction.astype(np.int16) - 1, labels).astype(np.uint8)


def correction_layers(scores: torch.Tensor, tau: float, role: int) -> list:
    """The file's correction layer for the encoder's ``scores`` (none when ``tau`` is 0 or no pixel is
    within ``tau`` of a tie): :func:`correction_map` coded as a sparse label layer of role ``role``."""
    from .format import Layer
    from .image_codecs import get_codec

    if tau < 0:
        raise ConfigError(f"agreement_tau must be >= 0, got {tau}")
    if tau == 0:
        return []
    correction = correction_map(scores, tau)
    if not correction.any():
        return []
    sparse = get_codec("sparse_labels")
    return [Layer(role, sparse.codec_id, sparse.encode(correction))]


def corrected(labels: np.ndarray, layer) -> np.ndarray:
    """The decoder's ``labels`` with the encoder's classes of a correction ``layer`` (None: as they are)."""
    if layer is None:
        return labels
    from .layers import decode_layer

    return apply_correction(labels, decode_layer(layer, 1, labels.shape, "correction"))
