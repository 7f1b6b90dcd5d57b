"""The DSSLIC generator: CompNet + RecNet (RecNet(s, c) = up(c) + FineNet(s, up(c))).

Akbari et al., DSSLIC (ICASSP 2019), Algorithm 1. The paper configuration is the default
(label_nc 151 for ADE20K, alpha 8, ngf 64, 9 residual blocks); tests use tiny widths.

Shapes: image (N, 3, H, W) in [-1, 1], seg (N, H, W) integer labels, H and W multiples of
``alpha``. ``compact`` -> (N, 3, H/alpha, W/alpha) in [-1, 1]; ``reconstruct`` -> (N, 3, H, W)
(not clamped, as in training; the codec clamps when it rounds to 8 bits).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ...config_files import dataclass_from_dict
from ...model_files import register_model
from ...nn.blocks import init_weights, one_hot, upsample
from ...nn.discriminator import MultiscaleDiscriminator
from .compnet import CompNet
from .finenet import FineNet

PRESETS = {
    # Akbari et al. 2019: ngf 64, alpha 8, 9 residual blocks at 512 channels (ADE20K: 151 labels).
    "paper": dict(comp_ngf=64, fine_ngf=64, n_down_comp=3, n_down_fine=3, n_blocks=9),
    # A few thousand parameters: CPU tests and the builtin smoke-test pipeline.
    "tiny": dict(comp_ngf=8, fine_ngf=8, n_down_comp=3, n_down_fine=2, n_blocks=2),
    "small": dict(comp_ngf=16, fine_ngf=32, n_down_comp=3, n_down_fine=3, n_blocks=3),
}


@dataclass(frozen=True)
class DSSLICConfig:
    label_nc: int = 151
    image_nc: int = 3
    comp_ngf: int = 64
    fine_ngf: int = 64
    n_down_comp: int = 3      # alpha = 2 ** n_down_comp
    n_down_fine: int = 3
    n_blocks: int = 9
    norm: str = "instance"
    align_corners: bool = False  # bilinear up(c); the same at encoder and decoder

    @property
    def alpha(self) -> int:
        return 2**self.n_down_comp

    @property
    def multiple(self) -> int:
        """Input sides must be multiples of this (CompNet and FineNet both downsample)."""
        return max(2**self.n_down_comp, 2**self.n_down_fine)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "DSSLICConfig":
        return dataclass_from_dict(cls, data, "DSSLIC config")


def dsslic_config(preset: str = "paper", label_nc: int = 151, **overrides) -> "DSSLICConfig":
    """A preset (``paper``, ``small``, ``tiny``) with ``label_nc`` classes and any overrides."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    return DSSLICConfig(**{**PRESETS[preset], "label_nc": label_nc, **overrides})


@register_model("dsslic", DSSLICConfig, preset=dsslic_config)
class DSSLIC(nn.Module):
    """CompNet and FineNet trained jointly; the codec uses :meth:`compact` and :meth:`reconstruct`."""

    def __init__(self, config: DSSLICConfig = DSSLICConfig()):
        super().__init__()
        self.config = config
        self.compnet = CompNet(config.label_nc, config.image_nc, config.comp_ngf, config.n_down_comp, norm=config.norm)
        self.finenet = FineNet(config.label_nc, config.image_nc, config.fine_ngf, config.n_down_fine,
                               config.n_blocks, norm=config.norm)
        init_weights(self)

    def seg_onehot(self, seg: torch.Tensor) -> torch.Tensor:
        return one_hot(seg, self.config.label_nc)

    def compact(self, image: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        return self.compnet(image, seg)

    def upsample(self, compact: torch.Tensor) -> torch.Tensor:
        return upsample(compact, self.config.alpha, self.config.align_corners)

    def reconstruct(self, compact: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        """RecNet: x' = up(c) + FineNet(s, up(c)); seg (N, H, W) integer labels."""
        up = self.upsample(compact)
        return up + self.finenet(seg, up)


@register_model("dsslic_noseg", DSSLICConfig, preset=dsslic_config)
class DSSLICNoSeg(DSSLIC):
    """The paper's noSeg ablation: DSSLIC trained with no segmentation input (label_nc 1, the map
    all zeros at both ends); its own registered name so that it sits beside the DSSLIC model."""


def build_discriminator(config: DSSLICConfig, ndf: int = 64, n_layers: int = 3, num_d: int = 2) -> MultiscaleDiscriminator:
    disc = MultiscaleDiscriminator(config.label_nc + config.image_nc, ndf, n_layers, num_d, config.norm)
    init_weights(disc)
    return disc
