"""Two-scale PatchGAN discriminators (pix2pixHD, as used by DSSLIC), LSGAN outputs.

Per scale (n_layers = 3): C64 s2 (no norm, LeakyReLU 0.2), C128 s2, C256 s2, C512 **s1**,
then a 4x4 conv to 1 channel s1; kernel 4, padding 2 (makbari7/DSSLIC, pix2pixHD). The
second scale sees the input average-pooled by 2 (3x3, stride 2, padding 1, no pad counting).
No sigmoid: the losses are least squares (LSGAN).

Input: cat(one-hot s, image) (N, label_nc + 3, H, W). Output: per scale, the list of
intermediate feature maps followed by the final patch map (used for feature matching).
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import norm_layer


class NLayerDiscriminator(nn.Module):
    def __init__(self, in_ch: int, ndf: int = 64, n_layers: int = 3, norm: str = "instance"):
        super().__init__()
        kw, pad = 4, 2
        stages: list[nn.Module] = [nn.Sequential(nn.Conv2d(in_ch, ndf, kw, 2, pad), nn.LeakyReLU(0.2, True))]
        ch = ndf
        for n in range(1, n_layers):
            nxt = min(ch * 2, 512)
            stages.append(nn.Sequential(nn.Conv2d(ch, nxt, kw, 2, pad), norm_layer(nxt, norm), nn.LeakyReLU(0.2, True)))
            ch = nxt
        nxt = min(ch * 2, 512)
        stages.append(nn.Sequential(nn.Conv2d(ch, nxt, kw, 1, pad), norm_layer(nxt, norm), nn.LeakyReLU(0.2, True)))
        stages.append(nn.Sequential(nn.Conv2d(nxt, 1, kw, 1, pad)))
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class MultiscaleDiscriminator(nn.Module):
    def __init__(self, in_ch: int, ndf: int = 64, n_layers: int = 3, num_d: int = 2, norm: str = "instance"):
        super().__init__()
        self.scales = nn.ModuleList(NLayerDiscriminator(in_ch, ndf, n_layers, norm) for _ in range(num_d))
        self.downsample = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        outputs = []
        for i, disc in enumerate(self.scales):
            if i > 0:
                x = self.downsample(x)
            outputs.append(disc(x))
        return outputs
