"""DSSLIC (Akbari et al., ICASSP 2019): segmentation map + compact image + HEVC-coded residual.

* :mod:`.compnet`, :mod:`.finenet`, :mod:`.model`: the networks (CompNet, FineNet, the
  generator registered as model ``dsslic``, its presets and discriminators);
* :mod:`.codec`: the methods ``dsslic``, ``dsslic_noseg`` and ``dsslic_upcomp`` on the core's layered
  codec (:mod:`semlic.layered_codec`);
* :mod:`.training`: joint training of CompNet + FineNet (+ discriminators);
* :mod:`.commands`: ``semlic train-dsslic``.
"""

from .codec import DSSLICCodec
from ...lazy import lazy_exports
from ...model_files import declare_models

# the networks (torch) are imported when first used: `semlic methods` and `semlic info` run without them
declare_models(__name__, {"dsslic": ".model", "dsslic_noseg": ".model"})
__getattr__, __dir__ = lazy_exports(__name__, {"DSSLIC": ".model", "PRESETS": ".model", "DSSLICConfig": ".model", "build_discriminator": ".model", "dsslic_config": ".model"})


def register_cli(sub) -> None:
    from .commands import register_cli as register

    register(sub)


__all__ = ["DSSLIC", "DSSLICConfig", "DSSLICCodec", "PRESETS", "build_discriminator", "dsslic_config",
           "register_cli"]
