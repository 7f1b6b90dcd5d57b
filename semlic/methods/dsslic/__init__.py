"""DSSLIC (Akbari et al., ICASSP 2019): segmentation map + compact image + HEVC-coded residual.

* :mod:`.compnet`, :mod:`.finenet`, :mod:`.model`: the networks (CompNet, FineNet, the
  generator registered as model ``dsslic``, its presets and discriminators);
* :mod:`.codec`: the layered codec, registered as method ``dsslic`` (and the base of EDMS);
* :mod:`.training`: joint training of CompNet + FineNet (+ discriminators);
* :mod:`.commands`: ``semlic train-dsslic``.
"""

from .codec import DSSLICCodec, LayeredCodec, compact_image, predict, segment_image
from .model import DSSLIC, PRESETS, DSSLICConfig, build_discriminator, dsslic_config


def register_cli(sub) -> None:
    from .commands import register_cli as register

    register(sub)


__all__ = ["DSSLIC", "DSSLICConfig", "DSSLICCodec", "LayeredCodec", "PRESETS", "build_discriminator",
           "compact_image", "dsslic_config", "predict", "segment_image", "register_cli"]
