"""Dilated ResNet backbone for PSPNet, in torchvision's parameter layout.

He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, with the dilated
("atrous") last stages of Chen et al. (DeepLab) and Zhao et al. (PSPNet, CVPR 2017): the
strides of layer3 and layer4 are replaced by dilation 2 and 4, so the feature maps keep
1/8 of the input size (output stride 8) instead of 1/32.

The blocks are torchvision's ``BasicBlock`` / ``Bottleneck`` and the parameter names are
torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer1.0.downsample.0``, ...), so a
torchvision ImageNet state dict loads as is. Differences from a stock torchvision ResNet:

* ``base_channels`` scales every stage (64 in the paper); small values make CPU-sized models.
* ``deep_stem=True`` replaces the 7x7 stem by the three 3x3 convolutions of hszhao/semseg and
  CSAILVision (``conv1`` 3->C stride 2, ``conv2`` C->C, ``conv3`` C->2C, each with BN, ReLU),
  which feeds layer1 with 2C channels. Published PSPNet weights need it; torchvision's do not
  fit it.
* Dilation is applied after construction to every 3x3 convolution of the dilated stages, which
  also works for ``BasicBlock`` (torchvision refuses to dilate it). With the default
  ``uniform_dilation=False`` the first block of a dilated stage keeps the previous stage's
  dilation, exactly as torchvision's ``replace_stride_with_dilation`` and CSAILVision do;
  ``uniform_dilation=True`` gives every 3x3 conv of the stage its full dilation, as
  hszhao/semseg does.

Shapes: input N x 3 x H x W (normalised); ``layer3`` N x 4C*e x H/s x W/s and ``layer4``
N x 8C*e x H/s x W/s where C = base_channels, e = block expansion (1 or 4), s = output stride
(ceil division: a 65 x 65 input gives 9 x 9 at stride 8).
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

# name -> (block class, blocks per stage)
RESNET_LAYOUTS: dict[str, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
}

# output stride -> dilation of (layer3, layer4); 1 keeps the stage's stride 2
STAGE_DILATIONS = {8: (2, 4), 16: (1, 2), 32: (1, 1)}


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


def _make_stage(block: type[nn.Module], in_channels: int, planes: int, blocks: int,
                stride: int) -> tuple[nn.Sequential, int]:
    """torchvision's ``ResNet._make_layer`` (same module names), without dilation.

    Returns the stage and its output channels (planes x block expansion).
    """
    out_channels = planes * block.expansion
    shortcut = None
    if stride != 1 or in_channels != out_channels:
        shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
            nn.BatchNorm2d(out_channels),
        )
    layers = [block(in_channels, planes, stride, shortcut)]
    layers += [block(out_channels, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers), out_channels


def dilate_stage(stage: nn.Sequential, dilation: int, uniform: bool = False) -> None:
    """Turn a stride-2 stage into a stride-1 stage with dilated 3x3 convolutions, in place.

    The strided convolution (the first block's 3x3 conv and its 1x1 shortcut) gets stride 1
    and, if 3x3, dilation ``dilation // 2`` (``dilation`` when ``uniform``); every other 3x3
    convolution gets ``dilation``. Padding equals dilation, so spatial sizes are kept.
    """
    for module in stage.modules():
        if not isinstance(module, nn.Conv2d):
            continue
        if module.stride == (2, 2):
            module.stride = (1, 1)
            rate = dilation if uniform else dilation // 2
        else:
            rate = dilation
        if module.kernel_size == (3, 3):
            module.dilation = (rate, rate)
            module.padding = (rate, rate)


class ResNetBackbone(nn.Module):
    """ResNet-18/34/50/101 trunk returning the layer3 and layer4 feature maps (module docstring)."""

    def __init__(
        self,
        name: str = "resnet50",
        base_channels: int = 64,
        deep_stem: bool = False,
        output_stride: int = 8,
        uniform_dilation: bool = False,
    ) -> None:
        super().__init__()
        block, blocks_per_stage = RESNET_LAYOUTS[name]
        self.deep_stem = deep_stem
        if deep_stem:
            self.conv1, self.bn1, _ = _conv_bn_relu(3, base_channels, stride=2)
            self.conv2, self.bn2, _ = _conv_bn_relu(base_channels, base_channels, stride=1)
            self.conv3, self.bn3, _ = _conv_bn_relu(base_channels, 2 * base_channels, stride=1)
            channels = 2 * base_channels
        else:
            self.conv1 = nn.Conv2d(3, base_channels, 7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(base_channels)
            channels = base_channels
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1, channels = _make_stage(block, channels, base_channels, blocks_per_stage[0], stride=1)
        self.layer2, channels = _make_stage(block, channels, 2 * base_channels, blocks_per_stage[1], stride=2)
        self.layer3, channels = _make_stage(block, channels, 4 * base_channels, blocks_per_stage[2], stride=2)
        self.layer4, channels = _make_stage(block, channels, 8 * base_channels, blocks_per_stage[3], stride=2)
        dilation3, dilation4 = STAGE_DILATIONS[output_stride]
        for stage, dilation in ((self.layer3, dilation3), (self.layer4, dilation4)):
            if dilation > 1:
                dilate_stage(stage, dilation, uniform_dilation)
        self.layer3_channels = 4 * base_channels * block.expansion
        self.low_channels = base_channels * block.expansion
        self.out_channels = channels
        self.output_stride = output_stride
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def stem(self, images: Tensor) -> Tensor:
        """N x 3 x H x W -> N x C' x H/4 x W/4 (C' = C, or 2C with the deep stem)."""
        x = self.relu(self.bn1(self.conv1(images)))
        if self.deep_stem:
            x = self.relu(self.bn2(self.conv2(x)))
            x = self.relu(self.bn3(self.conv3(x)))
        return self.maxpool(x)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(layer3, layer4)`` feature maps (shapes: module docstring)."""
        return self.forward_with_low(images)[1:]

    def forward_with_low(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(layer1, layer3, layer4)``: the 1/4 features (``low_channels``) too, for a decoder's skip."""
        low = self.layer1(self.stem(images))
        layer3 = self.layer3(self.layer2(low))
        return low, layer3, self.layer4(layer3)
