"""DSSLIC (Akbari et al., ICASSP 2019) and the paper's ablations as codecs of their own.

The layered-codec machinery is the core's (:mod:`semlic.layered_codec`); DSSLIC sends the map
losslessly (the machinery's default hooks); noSeg and upComp change the map and the prediction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ... import format as fmt
from ...layered_codec import ROLE_COMPACT, ROLE_RESIDUAL, LayeredCodec
from ...layers import image_to_tensor, module_device, tensor_to_uint8
from ...lazy import inference_mode
from .. import ModelSet, PaperPoint, register_method

if TYPE_CHECKING:
    from .model import DSSLIC


@register_method
class DSSLICCodec(LayeredCodec):
    """DSSLIC: segmentation map (lossless) + compact image (lossless) + HEVC residual."""

    network = "dsslic"
    models = ("dsslic",)
    name = "dsslic"
    format_id = 1
    label = "DSSLIC"
    paper = "Akbari, Liang, Han, Tu: DSSLIC: Deep Semantic Segmentation-based Layered Image Compression, ICASSP 2019"
    colour = "tab:blue"
    paper_points = (
        PaperPoint("EDMS paper, Table 1", 0.671, 31.86, 0.964, quality=32.0),
        PaperPoint("DSSLIC paper, Table 1 (no residual)", 0.087, 21.91, 0.891, quality=-1.0, setting="withSeg"),
        PaperPoint("DSSLIC paper, Table 1 (no residual, ADE20K)", 0.095, 23.11, 0.914, quality=-1.0, dataset="ADE20K",
                   setting="withSeg"),
    )
    # EDMS Table 1 (Kodak, V100, BPG QP 32) and the DSSLIC paper's RecNet decode on a CPU.
    paper_seconds = {"enc_gpu": 1.08, "dec_gpu": 0.342, "dec_cpu": 44.0}


# --- the paper's ablation (DSSLIC Table 1) as codecs of their own: every bit in a real file -------
class NoSegCodec(LayeredCodec):
    """noSeg: CompNet and RecNet trained without the segmentation map (model ``dsslic_noseg``,
    label_nc 1: one constant class); the file holds the compact image and the residual only."""

    name = "dsslic_noseg"
    format_id = 6
    label = "DSSLIC noSeg"
    paper = "DSSLIC ablation (Table 1): a model trained with no segmentation input"
    colour = "darkcyan"
    network = "dsslic_noseg"
    models = ("dsslic_noseg",)
    encoder_models = ()
    uses_segmentation = False
    map_output = None
    compare_to = "dsslic"
    paper_points = (PaperPoint("DSSLIC paper, Table 1 (noSeg, no residual, Kodak)", 0.080, 21.46, 0.887, quality=-1.0,
                               setting="noSeg"),
                    PaperPoint("DSSLIC paper, Table 1 (noSeg, no residual, ADE20K)", 0.080, 22.24, 0.905, quality=-1.0,
                               dataset="ADE20K", setting="noSeg"))

    def _segmentation(self, image, segmentation, models, timings) -> np.ndarray:
        return np.zeros(image.shape[:2], np.uint8)

    def map_layers(self, segmentation, seg_padded, compact, models, options, timings):
        return seg_padded, [], [], {}

    def decoder_map(self, sem: fmt.SemFile, compact: np.ndarray, models: ModelSet) -> np.ndarray:
        alpha = models[self.network].config.alpha
        return np.zeros((compact.shape[0] * alpha, compact.shape[1] * alpha), np.uint8)

    def required_roles(self):
        return (ROLE_COMPACT,), (ROLE_COMPACT, ROLE_RESIDUAL)


class UpCompCodec(LayeredCodec):
    """upComp: x' = up(c^), DSSLIC's compact image upsampled with no RecNet and no map in the file
    (the encoder's CompNet still sees the map). The fingerprint names the DSSLIC model that made c^."""

    name = "dsslic_upcomp"
    format_id = 7
    label = "DSSLIC upComp"
    paper = "DSSLIC ablation (Table 1): x' = up(c), no RecNet"
    colour = "goldenrod"
    network = "dsslic"
    models = ("dsslic",)
    map_output = None
    compare_to = "dsslic"
    paper_points = (PaperPoint("DSSLIC paper, Table 1 (upComp, no residual, Kodak)", 0.087, 17.77, 0.738, quality=-1.0,
                               setting="upComp"),
                    PaperPoint("DSSLIC paper, Table 1 (upComp, no residual, ADE20K)", 0.095, 17.50, 0.759, quality=-1.0,
                               dataset="ADE20K", setting="upComp"))

    def map_layers(self, segmentation, seg_padded, compact, models, options, timings):
        return None, [], [], {}

    def decoder_map(self, sem: fmt.SemFile, compact: np.ndarray, models: ModelSet) -> None:
        return None

    def required_roles(self):
        return (ROLE_COMPACT,), (ROLE_COMPACT, ROLE_RESIDUAL)

    @inference_mode
    def predict(self, model: DSSLIC, compact: np.ndarray, used_map, size: tuple[int, int]) -> np.ndarray:
        device = module_device(model)
        up = model.upsample(image_to_tensor(compact, device))
        return tensor_to_uint8(up[..., : size[0], : size[1]])


register_method(NoSegCodec)
register_method(UpCompCodec)
