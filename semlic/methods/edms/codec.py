"""The EDMS codecs: DSSLIC's layers without the segmentation map, which both ends derive from c^.

Hoang, Zhou & Fan 2020: the file holds the compact image and the residual (and, for
cross-device agreement, a sparse correction layer: the encoder's class at every pixel whose
top-2 score margin is below ``agreement_tau``, :mod:`.matched`). CompNet still sees the
original segmentation s at the encoder; the prediction uses s^ = argmax SMapNet(PSPNet(up(c^)))
(``edms``) or PSPNet's own map (``edms_noenh``), which the decoder computes the same way. The
header's fingerprint names the DSSLIC model, the PSPNet and the SMapNet together.
"""

from __future__ import annotations

import time

import numpy as np

from ... import format as fmt
from ...agreement import AGREEMENT_TAU, corrected, correction_layers
from ...errors import ModelMismatchError
from ...layered_codec import ROLE_COMPACT, ROLE_CORRECTION, ROLE_RESIDUAL, LayeredCodec
from ...lazy import lazy_module
from .. import ModelSet, Option, PaperPoint, register_method

torch = lazy_module("torch")
matched = lazy_module("semlic.methods.edms.matched")   # the networks: torch


def matched_scores(*args, **kwargs):
    """:func:`semlic.methods.edms.matched.matched_scores`, imported when first called (it brings torch)."""
    return matched.matched_scores(*args, **kwargs)


class MatchedMapCodec(LayeredCodec):
    """A layered codec whose map is derived at both ends from c^ (no segmentation layer)."""

    enhanced: bool = True   # SMapNet on PSPNet's probabilities
    network = "dsslic"      # DSSLIC's generator (CompNet + RecNet)
    options = {**LayeredCodec.options,
               "agreement_tau": Option(AGREEMENT_TAU, float,
                                       "send the encoder's class where the top-2 score margin is below this (0: never)")}
    compare_to = "dsslic"
    map_output = "derived"     # the map both ends derive (after the correction layer)

    def check_models(self, models: ModelSet, needed=None) -> None:
        super().check_models(models, needed)
        if needed is not None:
            return
        dsslic, segnet = models["dsslic"], models["pspnet"]
        classes = segnet.config.num_classes
        if classes > dsslic.config.label_nc:
            raise ModelMismatchError(f"PSPNet has {classes} classes, more than the DSSLIC model's label_nc "
                                     f"{dsslic.config.label_nc}")
        if self.enhanced and models["smapnet"].config.num_classes != classes:
            raise ModelMismatchError(f"SMapNet maps {models['smapnet'].config.num_classes} classes, "
                                     f"PSPNet predicts {classes}")

    def matched_scores(self, compact: np.ndarray, models: ModelSet) -> torch.Tensor:
        """(1, K, H, W) class scores both ends compute from c^; their argmax is the map s^."""
        return matched_scores(compact, models["dsslic"], models["pspnet"], models["smapnet"] if self.enhanced else None)

    def map_layers(self, segmentation, seg_padded, compact, models, options, timings):
        start = time.perf_counter()
        scores = self.matched_scores(compact, models)
        matched = scores[0].argmax(0).to(torch.uint8).cpu().numpy()
        after = correction_layers(scores, float(options["agreement_tau"]), ROLE_CORRECTION)
        timings["segmentation_s"] = time.perf_counter() - start
        return matched, [], after, {"matched_segmentation": matched}

    def decoder_map(self, sem: fmt.SemFile, compact: np.ndarray, models: ModelSet) -> np.ndarray:
        matched = self.matched_scores(compact, models)[0].argmax(0).to(torch.uint8).cpu().numpy()
        return corrected(matched, sem.layer(ROLE_CORRECTION))   # at the padded size, as the map

    def map_roles(self):
        return (ROLE_COMPACT, ROLE_CORRECTION)

    def required_roles(self):
        return (ROLE_COMPACT,), (ROLE_COMPACT, ROLE_CORRECTION, ROLE_RESIDUAL)

    def describe(self, sem: fmt.SemFile) -> dict:
        return {**super().describe(sem), "map": "derived at both ends" + (" (SMapNet-enhanced)" if self.enhanced else "")}


@register_method
class EDMSCodec(MatchedMapCodec):
    """EDMS: s^ = argmax SMapNet(softmax(PSPNet(up(c^)))) at both ends."""

    name = "edms"
    format_id = 2
    label = "EDMS"
    paper = ("Hoang, Zhou, Fan: Image Compression with Encoder-Decoder Matched Semantic Segmentation, "
             "CVPR workshops 2020")
    models = ("dsslic", "pspnet", "smapnet")
    enhanced = True
    colour = "tab:orange"
    paper_points = (PaperPoint("EDMS paper, Table 1", 0.642, 31.87, 0.964, quality=32.0),)
    paper_seconds = {"enc_gpu": 0.745, "dec_gpu": 0.305}


@register_method
class EDMSWithoutEnhancement(MatchedMapCodec):
    """EDMS without SMapNet: s^ = argmax PSPNet(up(c^)) at both ends."""

    name = "edms_noenh"
    format_id = 3
    label = "EDMS w/o SMapNet"
    paper = EDMSCodec.paper
    models = ("dsslic", "pspnet")
    enhanced = False
    colour = "tab:green"
    paper_points = (PaperPoint("EDMS paper, Table 1", 0.657, 31.77, 0.959, quality=32.0),)
    paper_seconds = {"enc_gpu": 0.703, "dec_gpu": 0.2635}
