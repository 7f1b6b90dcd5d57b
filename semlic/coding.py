"""The code stage's work for the semantic codecs (dsslic, edms, edms_noenh): files in, rows out.

For every image and residual QP, :func:`code_semantic` writes one .sem file, decodes it
*from its bytes* as a user would, checks that the decoder rebuilt exactly what the encoder
predicted, and returns one DESIGN.md section-6 row (bpp over the whole file, layer bits,
PSNR-RGB, per-channel PSNR, MS-SSIM, encode and decode seconds).

Timing is honest: when a segmentation network is given, ``enc_s`` includes running it on
the image (DSSLIC's encoder segments the image; the paper's timings do too). When only a
precomputed map is given (``seg_path``), ``enc_s`` excludes segmentation and the row's
``device`` says ``+precomputed-seg``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from . import codec, metrics, results
from .errors import ConfigError, LayerError
from .imageio import atomic_write_bytes, load_image, load_label_map

# The residual QPs of the DSSLIC paper's evaluation script (REFERENCE.md).
PAPER_RESIDUAL_QPS = (32, 27, 23, 19, 16, 14, 12, 10)
SEMANTIC_METHODS = ("dsslic", "edms", "edms_noenh")


@dataclass(frozen=True)
class CodingSample:
    image_id: str
    image_path: Path
    seg_path: Path | None = None   # a precomputed segmentation map (used when no segnet is given)


@dataclass
class SemanticModels:
    base: torch.nn.Module                 # DSSLIC generator (semlic.training.load_dsslic)
    segnet: torch.nn.Module | None = None  # PSPNet (semlic.segnet.checkpoint.load_segnet)
    smapnet: torch.nn.Module | None = None  # SMapNet (semlic.smapnet_training.load_smapnet), for edms


def segment_image(segnet: torch.nn.Module, image: np.ndarray) -> np.ndarray:
    """PSPNet label map (H, W) uint8 of an (H, W, 3) uint8 image, on the network's device."""
    from .segnet.inference import predict_labels
    from .segnet.prepared import image_to_tensor

    device = next(segnet.parameters()).device
    return predict_labels(segnet, image_to_tensor(image)[None].to(device))[0].cpu().numpy()


def _segmentation(sample: CodingSample, image: np.ndarray, models: SemanticModels) -> tuple[np.ndarray, float]:
    if models.segnet is not None:
        start = time.perf_counter()
        seg = segment_image(models.segnet, image)
        return seg, time.perf_counter() - start
    if sample.seg_path is None:
        raise ConfigError(f"{sample.image_id}: no segmentation network and no precomputed map")
    seg = load_label_map(sample.seg_path)
    if seg.shape != image.shape[:2]:
        raise ConfigError(f"{sample.seg_path}: map {seg.shape} does not match image {image.shape[:2]}")
    return seg, 0.0


def code_semantic(samples: Sequence[CodingSample], models: SemanticModels, *, dataset: str, method: str = "dsslic",
                  residual_qps: Sequence[int] = PAPER_RESIDUAL_QPS, chroma: str = "420", lossless: str = codec.LOSSLESS_DEFAULT,
                  out_dir: str | Path | None = None, params_hash: str = "", git_rev: str | None = None,
                  progress: bool = True) -> list[dict]:
    """Code every sample at every residual QP with ``method``; return rows sorted by the schema key."""
    if method not in SEMANTIC_METHODS:
        raise ConfigError(f"unknown semantic method {method!r}; known: {', '.join(SEMANTIC_METHODS)}")
    if method != "dsslic" and (models.segnet is None or (method == "edms" and models.smapnet is None)):
        raise ConfigError(f"method {method} derives the map at both ends: it needs a segnet"
                          + (" and a smapnet" if method == "edms" else ""))
    edms_models = {} if method == "dsslic" else {"method": method, "segnet": models.segnet,
                                                 "smapnet": models.smapnet if method == "edms" else None}
    if not residual_qps:
        raise ConfigError("no residual QPs given")
    git_rev = git_rev or results.git_revision()
    device = str(next(models.base.parameters()).device)
    device_label = device if models.segnet is not None else f"{device}+precomputed-seg"
    rows = []
    bar = tqdm(total=len(samples) * len(residual_qps), desc=f"code {method}", unit="file", disable=not progress)
    for sample in samples:
        image = load_image(sample.image_path)
        h, w = image.shape[:2]
        seg, seg_s = _segmentation(sample, image, models)
        for qp in residual_qps:
            start = time.perf_counter()
            encoded = codec.encode(image, seg, models.base, int(qp), chroma=chroma, lossless=lossless, **edms_models)
            enc_s = time.perf_counter() - start + seg_s
            if out_dir is not None:
                atomic_write_bytes(Path(out_dir) / method / f"{sample.image_id}_{int(qp)}.sem", encoded.data)
            start = time.perf_counter()
            decoded = codec.decode(encoded.data, models.base,
                                   **{k: v for k, v in edms_models.items() if k != "method"})
            dec_s = time.perf_counter() - start
            if not np.array_equal(decoded, encoded.reconstruction):
                raise LayerError(f"{sample.image_id} QP {qp}: the decoder did not rebuild the encoder's reconstruction")
            rows.append(results.make_row(
                dataset=dataset, image_id=sample.image_id, method=method, quality=float(qp), quality_name="qp",
                height=h, width=w, bytes_total=len(encoded.data), layer_bits=encoded.layer_bits,
                psnr_rgb=metrics.psnr_rgb(image, decoded), psnr_channel_mean=metrics.psnr_channel_mean(image, decoded),
                ms_ssim=metrics.ms_ssim_rgb(image, decoded), enc_s=enc_s, dec_s=dec_s, device=device_label,
                git_rev=git_rev, params_hash=params_hash))
            bar.update()
    bar.close()
    return sorted(rows, key=lambda r: tuple(r[k] for k in results.SORT_KEY))
