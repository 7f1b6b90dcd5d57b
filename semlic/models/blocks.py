"""Building blocks shared by the DSSLIC networks (pix2pixHD conventions).

Wang et al., "High-Resolution Image Synthesis and Semantic Manipulation with Conditional
GANs" (CVPR 2018), as used by the official DSSLIC code (makbari7/DSSLIC): reflection
padding, InstanceNorm2d without affine parameters, ReLU, weights drawn from N(0, 0.02).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def norm_layer(channels: int, kind: str = "instance") -> nn.Module:
    """``instance`` (the reference: InstanceNorm2d(affine=False)), ``batch`` or ``none``."""
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}: expected 'instance', 'batch' or 'none'")


def conv7_block(in_ch: int, out_ch: int, norm: str) -> nn.Sequential:
    """c7s1-k: reflect-pad 3, 7x7 conv, norm, ReLU."""
    return nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(in_ch, out_ch, 7), norm_layer(out_ch, norm), nn.ReLU(True))


def down_block(in_ch: int, out_ch: int, norm: str) -> nn.Sequential:
    """dk: 3x3 conv stride 2 (padding 1), norm, ReLU: halves height and width."""
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, stride=2, padding=1), norm_layer(out_ch, norm), nn.ReLU(True))


def up_block(in_ch: int, out_ch: int, norm: str) -> nn.Sequential:
    """uk: 3x3 transposed conv stride 2 (padding 1, output_padding 1), norm, ReLU: doubles H, W."""
    return nn.Sequential(
        nn.ConvTranspose2d(in_ch, out_ch, 3, stride=2, padding=1, output_padding=1),
        norm_layer(out_ch, norm),
        nn.ReLU(True),
    )


class ResnetBlock(nn.Module):
    """rk: x + [reflect-pad 1, 3x3 conv, norm, ReLU, reflect-pad 1, 3x3 conv, norm](x)."""

    def __init__(self, channels: int, norm: str = "instance"):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), norm_layer(channels, norm), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), norm_layer(channels, norm),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


def init_weights(module: nn.Module) -> None:
    """pix2pixHD initialisation: conv weights N(0, 0.02), norm weights N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Label map (N, H, W) integer -> one-hot (N, num_classes, H, W) float32.

    DSSLIC feeds the segmentation as one channel per class. A label outside
    ``0..num_classes-1`` is an error (it would silently become an all-zero pixel).
    """
    if labels.dim() != 3:
        raise ValueError(f"labels must be (N, H, W), got shape {tuple(labels.shape)}")
    labels = labels.long()
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"label values must be in 0..{num_classes - 1}, found {int(labels.min())}..{int(labels.max())}"
        )
    out = torch.zeros(labels.shape[0], num_classes, *labels.shape[1:], device=labels.device)
    return out.scatter_(1, labels.unsqueeze(1), 1.0)


def upsample(x: torch.Tensor, factor: int, align_corners: bool = False) -> torch.Tensor:
    """Bilinear upsampling by ``factor``; encoder and decoder use this one function."""
    return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=align_corners)
