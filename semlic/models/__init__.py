"""Networks, registered by the name of their paper (CompressAI style).

``MODELS["dsslic"]`` builds the DSSLIC generator (CompNet + FineNet), ``MODELS["smapnet"]``
EDMS's segmentation enhancer. Presets give the
paper configuration and the tiny one used by tests and the offline default.
"""

from __future__ import annotations

from .blocks import one_hot, upsample
from .compnet import CompNet
from .discriminator import MultiscaleDiscriminator, NLayerDiscriminator
from .dsslic import DSSLIC, DSSLICConfig, build_discriminator
from .finenet import FineNet
from .smapnet import SMAPNET_PRESETS, SMapNet, SMapNetConfig, smapnet_config

MODELS = {"dsslic": DSSLIC, "smapnet": SMapNet}

PRESETS = {
    # Akbari et al. 2019: ngf 64, alpha 8, 9 residual blocks at 512 channels (ADE20K: 151 labels).
    "paper": dict(comp_ngf=64, fine_ngf=64, n_down_comp=3, n_down_fine=3, n_blocks=9),
    # A few thousand parameters: CPU tests and the builtin smoke-test pipeline.
    "tiny": dict(comp_ngf=8, fine_ngf=8, n_down_comp=3, n_down_fine=2, n_blocks=2),
    "small": dict(comp_ngf=16, fine_ngf=32, n_down_comp=3, n_down_fine=3, n_blocks=3),
}


def dsslic_config(preset: str = "paper", **overrides) -> DSSLICConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    return DSSLICConfig(**{**PRESETS[preset], **overrides})


__all__ = [
    "CompNet", "FineNet", "DSSLIC", "DSSLICConfig", "MultiscaleDiscriminator", "NLayerDiscriminator",
    "build_discriminator", "dsslic_config", "one_hot", "upsample", "MODELS", "PRESETS",
    "SMapNet", "SMapNetConfig", "SMAPNET_PRESETS", "smapnet_config",
]
