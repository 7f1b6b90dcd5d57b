"""CompNet: the image + segmentation -> compact image network of DSSLIC.

Akbari, Liang, Han, "DSSLIC: Deep Semantic Segmentation-based Layered Image Compression"
(ICASSP 2019), section 3.2, as implemented in makbari7/DSSLIC: c7s1-64, then ``n_down``
3x3 stride-2 convolutions doubling the width (64 -> 128 -> 256 -> 512), then c7s1-3, tanh.

Shapes: x (N, 3, H, W) in [-1, 1] and s (N, H, W) labels (fed as one-hot), H and W multiples of
2**n_down -> c (N, 3, H / alpha, W / alpha) in [-1, 1], alpha = 2**n_down (8 in the paper).
"""

from __future__ import annotations

import torch
from torch import nn

from ...nn.blocks import conv7_block, down_block, label_image_conv


class CompNet(nn.Module):
    def __init__(self, label_nc: int, image_nc: int = 3, ngf: int = 64, n_down: int = 3,
                 max_channels: int = 512, norm: str = "instance"):
        super().__init__()
        layers: list[nn.Module] = [conv7_block(label_nc + image_nc, ngf, norm)]
        ch = ngf
        for _ in range(n_down):
            nxt = min(ch * 2, max_channels)
            layers.append(down_block(ch, nxt, norm))
            ch = nxt
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ch, image_nc, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        self.factor = 2**n_down
        self.label_nc = label_nc

    def forward(self, image: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = label_image_conv(self.model[0], labels, image, self.label_nc)
        return self.model[1:](x)
