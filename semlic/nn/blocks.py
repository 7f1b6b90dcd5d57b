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


def label_image_conv(block: nn.Sequential, labels: torch.Tensor, image: torch.Tensor, label_nc: int) -> torch.Tensor:
    """Run a c7s1 block (reflect pad, conv, norm, ReLU) on cat(one-hot(labels), image).

    Only the classes present in the batch can contribute: the convolution runs on a one-hot
    over those K classes with the matching weight columns, K + 3 input channels instead of
    label_nc + 3 (a 768x512 ADE20K image has 10-30 of the 151 classes, and FineNet's first
    layer is 380 of its 1250 GFLOP). The result equals the full one-hot convolution, and so
    do the gradients (absent classes receive none either way).

    labels (N, H, W) integer, image (N, C, H, W) -> (N, out, H, W).
    """
    present = torch.unique(labels).long()
    if present.numel() and (int(present[0]) < 0 or int(present[-1]) >= label_nc):
        raise ValueError(f"label values must be in 0..{label_nc - 1}, found {int(present[0])}..{int(present[-1])}")
    pad_layer, conv = block[0], block[1]
    remap = torch.zeros(label_nc, dtype=torch.long, device=labels.device)
    remap[present] = torch.arange(present.numel(), device=labels.device)
    onehot = one_hot(remap[labels.long()], present.numel()).to(image.dtype)
    weight = torch.cat([conv.weight[:, present], conv.weight[:, label_nc:]], 1)
    x = pad_layer(torch.cat([onehot, image], 1))
    return block[2:](F.conv2d(x, weight, conv.bias))


def upsample(x: torch.Tensor, factor: int, align_corners: bool = False) -> torch.Tensor:
    """Bilinear upsampling by ``factor``; encoder and decoder use this one function."""
    return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=align_corners)
