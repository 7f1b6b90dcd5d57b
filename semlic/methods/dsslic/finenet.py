"""FineNet: the pix2pixHD global generator that adds the missing detail to up(c).

Wang et al. 2018 (pix2pixHD) global generator with ngf 64, as modified by DSSLIC (section
3.2): c7s1-64, d128, d256, d512, 9 x r512, u256, u128, u64, c7s1-3, tanh. Its input is
cat(one-hot s, up(c)) (computed as
look-ups on the CPU: blocks.label_image_conv); its output f is *added* to up(c): x' = up(c) + f (no clamp).

Shapes: (N, label_nc + 3, H, W), H and W multiples of 2**n_down -> f (N, 3, H, W) in [-1, 1].
"""

from __future__ import annotations

import torch
from torch import nn

from ...nn.blocks import ResnetBlock, conv7_block, down_block, label_image_conv, up_block


class FineNet(nn.Module):
    def __init__(self, label_nc: int, image_nc: int = 3, ngf: int = 64, n_down: int = 3, n_blocks: int = 9,
                 max_channels: int = 1024, norm: str = "instance"):
        super().__init__()
        layers: list[nn.Module] = [conv7_block(label_nc + image_nc, ngf, norm)]
        widths = [ngf]
        for _ in range(n_down):
            widths.append(min(widths[-1] * 2, max_channels))
            layers.append(down_block(widths[-2], widths[-1], norm))
        layers += [ResnetBlock(widths[-1], norm) for _ in range(n_blocks)]
        for i in range(n_down, 0, -1):
            layers.append(up_block(widths[i], widths[i - 1], norm))
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, image_nc, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        self.label_nc = label_nc

    def forward(self, labels: torch.Tensor, upsampled_compact: torch.Tensor) -> torch.Tensor:
        """labels (N, H, W) integer (fed as one-hot), up(c) (N, 3, H, W) -> f (N, 3, H, W)."""
        x = label_image_conv(self.model[0], labels, upsampled_compact, self.label_nc)
        return self.model[1:](x)
