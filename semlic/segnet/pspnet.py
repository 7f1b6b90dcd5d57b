"""PSPNet: Zhao, Shi, Qi, Wang & Jia, "Pyramid Scene Parsing Network", CVPR 2017.

The segmentation network of DSSLIC and EDMS, following the authors' code (hszhao/semseg):

* dilated ResNet backbone (:mod:`semlic.segnet.backbone`), output stride 8; or EfficientNet-Lite0
  with its ImageNet weights (:mod:`semlic.segnet.efficientnet`, preset ``lite0``: the pyramid on its
  1280-channel head, the aux head on the end of its stage 5);
* pyramid pooling module: for each bin b in (1, 2, 3, 6), adaptive average pooling to b x b,
  1x1 conv C -> C/4 (2048 -> 512 in the paper), BN, ReLU, bilinear upsampling back to the
  feature size; the four maps are concatenated with the input (C + 4 * C/4 = 2C channels);
* head: 3x3 conv 2C -> 512, BN, ReLU, Dropout2d(0.1), 1x1 conv -> classes;
* auxiliary head on layer3 (3x3 conv -> 256, BN, ReLU, Dropout2d(0.1), 1x1 conv), used only
  in training, with loss weight 0.4 ("deep supervision");
* logits upsampled bilinearly to the input size.

With ``skip_channels`` > 0 (not in the paper; DeepLabv3+'s decoder, Chen et al. 2018) the head's
features are upsampled to 1/4 of the input, concatenated with the backbone's 1/4 features (1x1
conv -> ``skip_channels``, BN, ReLU), fused by a 3x3 conv (-> head_channels, BN, ReLU) and only
then classified: thin classes (poles, signs, people) survive an output stride of 16.

Inputs are N x 3 x H x W float RGB in [0, 1]; the model normalises them with the ImageNet mean
and standard deviation itself (what both torchvision's and CSAILVision's weights expect, and
the same as hszhao's mean/std on 0..255). ``forward`` returns N x K x H x W logits in eval mode
and ``(logits, aux_logits)``, both N x K x H x W, in training mode when the aux head exists.

Differences from hszhao/semseg, each a configuration key: the stem is torchvision's 7x7 conv
unless ``deep_stem`` (hszhao and CSAILVision use three 3x3 convs); bilinear interpolation uses
``align_corners=False`` unless set (hszhao: True, CSAILVision: False); hszhao dilates the first
block of layer3/layer4 too (``uniform_dilation``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..model_files import register_model
from .backbone import RESNET_LAYOUTS, STAGE_DILATIONS, ResNetBackbone
from .efficientnet import NAME as EFFICIENTNET
from .efficientnet import PIXEL_MEAN as LITE_MEAN
from .efficientnet import PIXEL_STD as LITE_STD
from .efficientnet import EfficientNetLite

BACKBONES = (*RESNET_LAYOUTS, EFFICIENTNET)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PSPNetConfig:
    """Architecture of a PSPNet; the defaults are the paper's ResNet-50 model (with torchvision's stem).

    ``ppm_channels`` None means in_channels // len(ppm_bins) (2048 / 4 = 512 in the paper).
    ``aux_weight`` 0 builds no auxiliary head.
    """

    num_classes: int
    backbone: str = "resnet50"
    base_channels: int = 64
    deep_stem: bool = False
    output_stride: int = 8
    uniform_dilation: bool = False
    ppm_bins: tuple[int, ...] = (1, 2, 3, 6)
    ppm_channels: int | None = None
    head_channels: int = 512
    aux_channels: int = 256
    aux_weight: float = 0.4
    dropout: float = 0.1
    skip_channels: int = 0
    ignore_index: int = 255
    align_corners: bool = False
    pixel_mean: tuple[float, float, float] | None = None   # None: the backbone's (ImageNet's; EfficientNet's
    pixel_std: tuple[float, float, float] | None = None    # (x - 127) / 128 on 0..255)

    def __post_init__(self) -> None:
        lite = self.backbone == EFFICIENTNET
        if self.pixel_mean is None:
            object.__setattr__(self, "pixel_mean", LITE_MEAN if lite else IMAGENET_MEAN)
        if self.pixel_std is None:
            object.__setattr__(self, "pixel_std", LITE_STD if lite else IMAGENET_STD)
        for name in ("ppm_bins", "pixel_mean", "pixel_std"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        problems = []
        if self.num_classes < 2 or self.num_classes > 255:
            problems.append(f"num_classes must be 2..255 (label maps are 8-bit), found {self.num_classes}")
        if self.backbone not in BACKBONES:
            problems.append(f"backbone must be one of {sorted(BACKBONES)}, found {self.backbone!r}")
        if self.backbone == EFFICIENTNET and (self.deep_stem or self.output_stride not in (8, 16, 32)):
            problems.append(f"{EFFICIENTNET} has its own stem (deep_stem false) and output stride 8, 16 or 32")
        if self.output_stride not in STAGE_DILATIONS:
            problems.append(f"output_stride must be one of {sorted(STAGE_DILATIONS)}, found {self.output_stride}")
        if 0 <= self.ignore_index < self.num_classes:
            problems.append(f"ignore_index {self.ignore_index} collides with a class index 0..{self.num_classes - 1}")
        if not self.ppm_bins or min(self.ppm_bins) < 1:
            problems.append(f"ppm_bins must be positive bin sizes, found {self.ppm_bins}")
        if self.skip_channels < 0:
            problems.append(f"skip_channels must be >= 0, found {self.skip_channels}")
        if min(self.base_channels, self.head_channels, self.aux_channels, self.ppm_channels or 1) < 1:
            problems.append("channel counts must be positive")
        if len(self.pixel_mean) != 3 or len(self.pixel_std) != 3:
            problems.append("pixel_mean and pixel_std need three values (R, G, B)")
        if problems:
            raise ConfigError("PSPNet config: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, values: dict) -> "PSPNetConfig":
        """Build from a plain dict (YAML/JSON); unknown keys are refused by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"PSPNet config: unknown keys {unknown}; known keys are {sorted(known)}")
        if "num_classes" not in values:
            raise ConfigError("PSPNet config: num_classes is required")
        try:
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"PSPNet config: a value has the wrong type ({exc})") from exc

    def to_dict(self) -> dict:
        """Plain dict (lists for tuples) that :meth:`from_dict` reads back."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def _conv_bn_relu_dropout_classifier(in_channels: int, mid_channels: int, classes: int,
                                     dropout: float) -> nn.Sequential:
    """3x3 conv -> BN -> ReLU -> Dropout2d -> 1x1 conv (indices 0, 1, 4 hold weights)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, mid_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(mid_channels),
        nn.ReLU(inplace=True),
        nn.Dropout2d(dropout),
        nn.Conv2d(mid_channels, classes, 1),
    )


class PyramidPooling(nn.Module):
    """Pyramid pooling module: N x C x h x w -> N x (C + len(bins) * branch_channels) x h x w."""

    def __init__(self, in_channels: int, branch_channels: int, bins: tuple[int, ...], align_corners: bool) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(bin_size),
                nn.Conv2d(in_channels, branch_channels, 1, bias=False),
                nn.BatchNorm2d(branch_channels),
                nn.ReLU(inplace=True),
            )
            for bin_size in bins
        )
        self.align_corners = align_corners
        self.out_channels = in_channels + len(bins) * branch_channels

    def forward(self, features: Tensor) -> Tensor:
        size = features.shape[-2:]
        pooled = [
            F.interpolate(stage(features), size=size, mode="bilinear", align_corners=self.align_corners)
            for stage in self.stages
        ]
        return torch.cat([features, *pooled], dim=1)


PRESETS = {
    "paper": dict(backbone="resnet50", base_channels=64),                       # Zhao et al. 2017
    "small": dict(backbone="resnet18", base_channels=32, head_channels=256, aux_channels=128),  # ResNet-18, half width
    "tiny": dict(backbone="resnet18", base_channels=8, head_channels=32, aux_channels=16, ppm_channels=8),
    # EfficientNet-Lite0 (ImageNet weights: train with backbone_weights = weights/efficientnet_lite0.safetensors)
    # output stride 16 as DeepLabv3's MobileNet variants: at 8 its dilated depthwise stages cost 3-5x more on a CPU
    "lite0": dict(backbone=EFFICIENTNET, output_stride=16, head_channels=128, aux_channels=64, ppm_channels=64),
}


def pspnet_config(preset: str = "paper", num_classes: int = 150, **overrides) -> PSPNetConfig:
    """A preset (``paper``, ``small``, ``tiny``, ``lite0``) for ``num_classes`` classes, with any overrides."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown PSPNet preset {preset!r}; known: {', '.join(PRESETS)}")
    return PSPNetConfig(**{**PRESETS[preset], "num_classes": num_classes, **overrides})


def make_backbone(config: PSPNetConfig) -> nn.Module:
    """The configured backbone: ``forward(normalised images) -> (mid, out)``, ``layer3_channels``, ``out_channels``."""
    if config.backbone == EFFICIENTNET:
        return EfficientNetLite(config.output_stride)
    return ResNetBackbone(config.backbone, config.base_channels, config.deep_stem, config.output_stride,
                          config.uniform_dilation)


@register_model("pspnet", PSPNetConfig, preset=pspnet_config)
class PSPNet(nn.Module):
    """Pyramid Scene Parsing Network (module docstring); build it from a :class:`PSPNetConfig`."""

    def __init__(self, config: PSPNetConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = make_backbone(config)
        channels = self.backbone.out_channels
        branch_channels = config.ppm_channels or channels // len(config.ppm_bins)
        self.ppm = PyramidPooling(channels, branch_channels, config.ppm_bins, config.align_corners)
        self.head = _conv_bn_relu_dropout_classifier(
            self.ppm.out_channels, config.head_channels, config.num_classes, config.dropout
        )
        self.aux_head = None
        if config.aux_weight > 0:
            self.aux_head = _conv_bn_relu_dropout_classifier(
                self.backbone.layer3_channels, config.aux_channels, config.num_classes, config.dropout
            )
        self.skip = self.fuse = None
        if config.skip_channels:
            c = config.skip_channels
            self.skip = nn.Sequential(nn.Conv2d(self.backbone.low_channels, c, 1, bias=False), nn.BatchNorm2d(c),
                                      nn.ReLU(inplace=True))
            h = config.head_channels
            self.fuse = nn.Sequential(nn.Conv2d(h + c, h, 3, padding=1, bias=False), nn.BatchNorm2d(h),
                                      nn.ReLU(inplace=True))
        self.register_buffer("pixel_mean", torch.tensor(config.pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(config.pixel_std).view(1, 3, 1, 1), persistent=False)
        for module in self._new_modules():
            for layer in module.modules():
                if isinstance(layer, nn.Conv2d):
                    nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")

    def head_parameters(self) -> list[nn.Parameter]:
        """Parameters of the newly added layers (PPM, head, aux head): trained at 10x the base lr."""
        return [p for module in self._new_modules() for p in module.parameters()]

    def _new_modules(self) -> list[nn.Module]:
        return [m for m in (self.ppm, self.head, self.aux_head, self.skip, self.fuse) if m is not None]

    def features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Normalise N x 3 x H x W images in [0, 1]; return the backbone's (layer3, layer4) maps."""
        return self.backbone((images - self.pixel_mean) / self.pixel_std)

    def lowres_logits(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``(logits before the final upsampling, layer3)``: logits at 1/output_stride of the input, or at
        1/4 with the skip decoder; ``forward`` upsamples them bilinearly to the input size."""
        if self.skip is None:
            layer3, layer4 = self.features(images)
            return self.head(self.ppm(layer4)), layer3
        low, layer3, layer4 = self.backbone.forward_with_low((images - self.pixel_mean) / self.pixel_std)
        x = self._upsample(self.head[:4](self.ppm(layer4)), low.shape[-2:])
        return self.head[4](self.fuse(torch.cat([x, self.skip(low)], dim=1))), layer3

    def forward(self, images: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        size = images.shape[-2:]
        logits, layer3 = self.lowres_logits(images)
        logits = self._upsample(logits, size)
        if self.training and self.aux_head is not None:
            return logits, self._upsample(self.aux_head(layer3), size)
        return logits

    def _upsample(self, logits: Tensor, size: torch.Size) -> Tensor:
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=self.config.align_corners)


def _cross_entropy(logits: Tensor, labels: Tensor, ignore_index: int, weight: Tensor | None = None) -> Tensor:
    """Mean (class-weighted) cross-entropy over the labelled pixels; 0 (not NaN) for a batch with none."""
    total = F.cross_entropy(logits.float(), labels, weight=weight, ignore_index=ignore_index, reduction="sum")
    valid = labels != ignore_index
    if weight is None:
        return total / valid.sum().clamp(min=1)
    return total / weight[labels[valid]].sum().clamp(min=1e-12)


def pspnet_loss(outputs: Tensor | tuple[Tensor, Tensor], labels: Tensor, config: PSPNetConfig,
                class_weights: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
    """Cross-entropy with ignore index on the main logits, plus ``aux_weight`` x the aux loss.

    ``outputs``: what :class:`PSPNet` returns in training mode; ``labels``: N x H x W int64;
    ``class_weights``: K per-class weights (the weighted mean over the labelled pixels) or None.
    Returns ``(total, main, aux or None)``, computed in float32.
    """
    logits, aux_logits = outputs if isinstance(outputs, tuple) else (outputs, None)
    main = _cross_entropy(logits, labels, config.ignore_index, class_weights)
    if aux_logits is None:
        return main, main, None
    aux = _cross_entropy(aux_logits, labels, config.ignore_index, class_weights)
    return main + config.aux_weight * aux, main, aux
