"""DSSLIC-RD: DSSLIC's layered codec with a rate-aware base layer (beyond the papers).

* :mod:`.model`: the networks (DSSLIC's generator + a CompressAI EntropyBottleneck per lambda, in
  a bank registered as ``dsslic_rd``, ``dsslic_rd_lossy`` or ``dsslic_rd_derived`` by the map);
* :mod:`.codec`: the methods ``dsslic_rd`` (map sent losslessly), ``dsslic_rd_lossy`` (map
  subsampled) and ``dsslic_rd_derived`` (map derived at both ends);
* :mod:`.training`: rate-distortion training of one lambda, and merging the lambdas into a bank;
* :mod:`.commands`: ``semlic train-dsslic-rd``.
"""

from .codec import DerivedMapCodec, LossyMapCodec, RDCodec, parse_quality
from ...lazy import lazy_exports
from ...model_files import declare_models

# the networks (torch) are imported when first used: `semlic methods` and `semlic info` run without them
declare_models(__name__, {"dsslic_rd": ".model", "dsslic_rd_lossy": ".model", "dsslic_rd_derived": ".model"})
__getattr__, __dir__ = lazy_exports(__name__, {"SCALE": ".model", "RDBank": ".model", "RDConfig": ".model", "RDNet": ".model", "bank_from_nets": ".model", "rd_config": ".model"})


def register_cli(sub) -> None:
    from .commands import register_cli as register

    register(sub)


__all__ = ["DerivedMapCodec", "LossyMapCodec", "RDBank", "RDCodec", "RDConfig", "RDNet", "SCALE", "bank_from_nets",
           "parse_quality", "rd_config", "register_cli"]
