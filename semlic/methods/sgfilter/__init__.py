"""HEVC + SG filter: HEVC intra 4:4:4 and a decoder-side, segmentation-guided enhancement network.

The strongest classical coder keeps every bit; the learned, semantic part only improves its picture
at the decoder, guided by the map the decoder derives from the decoded image (EDMS's principle:
the map costs no bits). Beyond the papers.

* :mod:`.network`: the enhancement network (models ``sgfilter``, ``sgfilter_sent``, ``sgfilter_nomap``);
* :mod:`.codec`: the methods ``sgfilter`` (derived map), ``sgfilter_sent`` (map sent losslessly) and
  ``sgfilter_nomap`` (no map: a plain post-filter);
* :mod:`.training`: the training set coded at the QP grid (cached once), the training;
* :mod:`.commands`: ``semlic train-sgfilter``.
"""

from .codec import SGFilterCodec, SGFilterNoMap, SGFilterSent
from ...lazy import lazy_exports
from ...model_files import declare_models

# the networks (torch) are imported when first used: `semlic methods` and `semlic info` run without them
declare_models(__name__, {"sgfilter": ".network", "sgfilter_sent": ".network", "sgfilter_nomap": ".network", "sgfilter_truth": ".network"})
__getattr__, __dir__ = lazy_exports(__name__, {"PRESETS": ".network", "SGFilter": ".network", "SGFilterConfig": ".network", "enhance": ".network", "sgfilter_config": ".network"})


def register_cli(sub) -> None:
    from .commands import register_cli as register

    register(sub)


__all__ = ["PRESETS", "SGFilter", "SGFilterCodec", "SGFilterConfig", "SGFilterNoMap", "SGFilterSent", "enhance",
           "register_cli", "sgfilter_config"]
