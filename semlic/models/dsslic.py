"""The DSSLIC generator: CompNet + RecNet (RecNet(s, c) = up(c) + FineNet(s, up(c))).

Akbari et al., DSSLIC (ICASSP 2019), Algorithm 1. The paper configuration is the default
(label_nc 151 for ADE20K, alpha 8, ngf 64, 9 residual blocks); tests use tiny widths.

Shapes: image (N, 3, H, W) in [-1, 1], seg (N, H, W) integer labels, H and W multiples of
``alpha``. ``compact`` -> (N, 3, H/alpha, W/alpha) in [-1, 1]; ``reconstruct`` -> (N, 3, H, W)
(not clamped, as in training; the codec clamps when it rounds to 8 bits).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from .blocks import init_weights, one_hot, upsample
from .compnet import CompNet
from .discriminator import MultiscaleDiscriminator
from .finenet import FineNet


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
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown DSSLIC config keys: {sorted(unknown)}")
        return cls(**data)


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


def build_discriminator(config: DSSLICConfig, ndf: int = 64, n_layers: int = 3, num_d: int = 2) -> MultiscaleDiscriminator:
    disc = MultiscaleDiscriminator(config.label_nc + config.image_nc, ndf, n_layers, num_d, config.norm)
    init_weights(disc)
    return disc
