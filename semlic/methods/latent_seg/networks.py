"""DeepLabv3 (the pixel-domain model and the teacher) and the compressed-domain student.

* Model ``deeplabv3``: torchvision's DeepLabv3 head (its ``ASPP``, rates 12/24/36 at output
  stride 8, then 3x3 conv + BN + ReLU + 1x1 conv, as ``DeepLabHead``) on a dilated ResNet
  (semlic.segnet.backbone, torchvision's blocks; ``base_channels`` 64 is the paper's width,
  smaller values make CPU-sized models), or on EfficientNet-Lite0 (preset ``lite0``, output
  stride 16, :mod:`semlic.segnet.efficientnet`) whose ImageNet weights the teacher's training
  loads (``backbone_weights``). Its "first two layers" (the paper's knowledge-distillation path)
  are the stem and ``layer1`` (EfficientNet-Lite0: its stem and stages 1-2): features F_gt of C
  channels at 1/4 of the input size (C = 24 for EfficientNet-Lite0). Inputs are normalised by
  :func:`normalise` with the backbone's statistics (:meth:`DeepLabV3.pixel_stats`).
* Model ``latent_seg``: the student. y^ (M channels at 1/16) -> channel selection -> transform
  module -> F (C channels at 1/4) -> the teacher's layers 2-4 and head (initialised from the
  teacher, then trained). Selection: ``none`` (every channel), ``dynamic`` (the gate: global
  average pool, 1x1 conv + BN + ReLU, grouped 1x1 conv to 2M logits, hard Gumbel-softmax with
  the straight-through gradient in training, the argmax at test; as DCTNet's gate, which the
  paper cites; training adds DCTNet's penalty on the share of channels selected, without
  which nothing asks the gate to drop a channel), ``static`` (a fixed list of channels: the most often selected by a trained
  dynamic gate). Transform: ``deconv`` (Module-Deconv: two 5x5 stride-2 transposed convs, as
  g_s's, with BN + ReLU) or ``res`` (Module-Res: residual blocks and two PixelShuffle x2
  sub-pixel convs, as Cheng et al. 2020).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.models.segmentation.deeplabv3 import ASPP

from ...config_files import dataclass_from_dict
from ...errors import ConfigError
from ...model_files import register_model
from ...segnet import efficientnet
from ...segnet.backbone import ResNetBackbone

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SELECTIONS = ("none", "dynamic", "static")
RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")
TRANSFORMS = ("deconv", "res")


@dataclass
class DeepLabConfig:
    num_classes: int = 11
    backbone: str = "resnet18"
    base_channels: int = 32
    output_stride: int = 8
    aspp_channels: int = 128
    atrous_rates: tuple = (12, 24, 36)
    ignore_index: int = 255

    def __post_init__(self) -> None:
        self.atrous_rates = tuple(int(r) for r in self.atrous_rates)
        if not 2 <= self.num_classes <= 255 or self.output_stride not in (8, 16):
            raise ConfigError(f"deeplabv3: num_classes 2..255 and output_stride 8 or 16; got {self.num_classes}, "
                              f"{self.output_stride}")
        if self.backbone not in (*RESNETS, efficientnet.NAME):
            raise ConfigError(f"deeplabv3: backbone resnet18/34/50/101 or {efficientnet.NAME}, got {self.backbone!r}")

    @classmethod
    def from_dict(cls, data: dict) -> "DeepLabConfig":
        return dataclass_from_dict(cls, data, "deeplabv3")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


DEEPLAB_PRESETS = {
    "paper": {"backbone": "resnet50", "base_channels": 64, "aspp_channels": 256},
    "small": {"backbone": "resnet18", "base_channels": 32, "aspp_channels": 128},
    "tiny": {"backbone": "resnet18", "base_channels": 8, "aspp_channels": 16},
    # EfficientNet-Lite0 with its ImageNet weights (the teacher's backbone_weights), output stride 16
    "lite0": {"backbone": efficientnet.NAME, "output_stride": 16, "aspp_channels": 128},
}


def deeplab_config(preset: str = "small", num_classes: int = 11, **overrides) -> DeepLabConfig:
    if preset not in DEEPLAB_PRESETS:
        raise ConfigError(f"deeplabv3 preset {preset!r}: one of {', '.join(DEEPLAB_PRESETS)}")
    return DeepLabConfig(**{**DEEPLAB_PRESETS[preset], "num_classes": num_classes, **overrides})


def normalise(images: Tensor, mean: tuple = MEAN, std: tuple = STD) -> Tensor:
    """(N, 3, H, W) uint8 or [0, 1] float -> normalised float (ImageNet statistics unless given)."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    mean = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def make_backbone(config: DeepLabConfig) -> ResNetBackbone | efficientnet.EfficientNetLite:
    if config.backbone == efficientnet.NAME:
        return efficientnet.EfficientNetLite(config.output_stride)
    return ResNetBackbone(config.backbone, config.base_channels, output_stride=config.output_stride)


def feature_channels(config: DeepLabConfig) -> int:
    """Channels of F (the first two layers' output, 1/4 of the input)."""
    if config.backbone == efficientnet.NAME:
        return efficientnet.LITE0_STAGES[efficientnet.FRONT_STAGES - 1][4]
    return config.base_channels * (4 if config.backbone in ("resnet50", "resnet101") else 1)


def features_rectified(config: DeepLabConfig) -> bool:
    """Whether F_gt is non-negative: a ResNet's ``layer1`` ends in a ReLU, EfficientNet-Lite0's stage 2
    in a linear projection (plus its skip)."""
    return config.backbone != efficientnet.NAME


class LiteStem(nn.Module):
    """EfficientNet-Lite's stem (its published names ``_conv_stem``, ``_bn0``)."""

    def __init__(self, net: efficientnet.EfficientNetLite):
        super().__init__()
        self._conv_stem, self._bn0 = net._conv_stem, net._bn0

    def forward(self, x: Tensor) -> Tensor:
        return F.relu6(self._bn0(self._conv_stem(x)))


class LiteTail(nn.Module):
    """EfficientNet-Lite after its front: stages 3-7 and the 1280-channel head."""

    def __init__(self, net: efficientnet.EfficientNetLite):
        super().__init__()
        self.blocks = nn.ModuleList(net._blocks[efficientnet.FRONT_BLOCKS:])
        self._conv_head, self._bn1 = net._conv_head, net._bn1

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))


class DeepLabBack(nn.Module):
    """DeepLabv3 after its first two layers: ResNet layers 2-4 (or EfficientNet-Lite's tail), torchvision's ASPP head."""

    def __init__(self, config: DeepLabConfig, backbone: ResNetBackbone | efficientnet.EfficientNetLite):
        super().__init__()
        if isinstance(backbone, efficientnet.EfficientNetLite):
            self.tail = LiteTail(backbone)
        else:
            self.layer2, self.layer3, self.layer4 = backbone.layer2, backbone.layer3, backbone.layer4
        c = config.aspp_channels
        self.head = nn.Sequential(ASPP(backbone.out_channels, config.atrous_rates, c),
                                  nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                                  nn.Conv2d(c, config.num_classes, 1))

    def forward(self, features: Tensor, size: tuple[int, int]) -> Tensor:
        if hasattr(self, "tail"):
            features = self.tail(features)
        else:
            features = self.layer4(self.layer3(self.layer2(features)))
        logits = self.head(features)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


@register_model("deeplabv3", DeepLabConfig)
class DeepLabV3(nn.Module):
    """DeepLabv3 (module docstring): ``front`` = the first two layers, ``back`` = the rest."""

    def __init__(self, config: DeepLabConfig):
        super().__init__()
        self.config = config
        backbone = make_backbone(config)
        if isinstance(backbone, efficientnet.EfficientNetLite):
            self.stem = LiteStem(backbone)
            self.layer1 = nn.Sequential(*backbone._blocks[:efficientnet.FRONT_BLOCKS])
        else:
            self.stem = nn.Sequential(backbone.conv1, backbone.bn1, backbone.relu, backbone.maxpool)
            self.layer1 = backbone.layer1
        self.back = DeepLabBack(config, backbone)
        self.feature_channels = feature_channels(config)

    @property
    def pixel_stats(self) -> tuple[tuple, tuple]:
        """(mean, std) on [0, 1] that :func:`normalise` applies for this backbone."""
        if self.config.backbone == efficientnet.NAME:
            return efficientnet.PIXEL_MEAN, efficientnet.PIXEL_STD
        return MEAN, STD

    def load_backbone_weights(self, path) -> None:
        """EfficientNet-Lite0's ImageNet weights (``semlic weights efficientnet_lite0``) into the backbone, in place."""
        if self.config.backbone != efficientnet.NAME:
            raise ConfigError(f"deeplabv3: ImageNet weights are read for the {efficientnet.NAME} backbone only, "
                              f"this one is {self.config.backbone}")
        view = efficientnet.EfficientNetLite(self.config.output_stride)   # the published layout over our modules
        view._conv_stem, view._bn0 = self.stem._conv_stem, self.stem._bn0
        view._blocks = nn.ModuleList([*self.layer1, *self.back.tail.blocks])
        view._conv_head, view._bn1 = self.back.tail._conv_head, self.back.tail._bn1
        efficientnet.load_efficientnet_backbone(view, path)

    def front(self, images: Tensor) -> Tensor:
        """The first two layers (stem, layer1): normalised images -> F_gt at 1/4."""
        return self.layer1(self.stem(images))

    def forward(self, images: Tensor) -> Tensor:
        """Normalised (N, 3, H, W) -> logits (N, K, H, W)."""
        return self.back(self.front(images), tuple(images.shape[-2:]))


# --- the student -------------------------------------------------------------------------------
class Gate(nn.Module):
    """Channel gate: pool -> 1x1 conv + BN + ReLU -> grouped 1x1 conv -> (N, C, 2) -> hard Gumbel-softmax."""

    def __init__(self, channels: int, hidden: int = 16, tau: float = 1.0, bias_on: float = 0.0):
        super().__init__()
        groups = math.gcd(hidden, 2 * channels)
        self.squeeze = nn.Sequential(nn.Conv2d(channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU())
        self.logits = nn.Conv2d(hidden, 2 * channels, 1, groups=groups)
        self.channels, self.tau = channels, tau
        nn.init.normal_(self.logits.weight, std=0.01)
        with torch.no_grad():   # the "on" logit starts ``bias_on`` above the "off" one (0: even odds)
            self.logits.bias.view(channels, 2)[:, 1] = bias_on
            self.logits.bias.view(channels, 2)[:, 0] = 0.0

    def logits_of(self, y: Tensor) -> Tensor:
        """(N, C, 2) logits of (off, on) per channel."""
        return self.logits(self.squeeze(y.mean((2, 3), keepdim=True))).view(len(y), self.channels, 2)

    def probability(self, y: Tensor) -> Tensor:
        """(N, C) probability that each channel is selected."""
        return self.logits_of(y).softmax(-1)[..., 1]

    def forward(self, y: Tensor) -> Tensor:
        """(N, C) mask of 0/1 values: sampled (straight-through) in training, the argmax at test."""
        logits = self.logits_of(y)
        if self.training:
            return F.gumbel_softmax(logits, tau=self.tau, hard=True, dim=-1)[..., 1]
        return (logits[..., 1] > logits[..., 0]).to(y.dtype)


class ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.LeakyReLU(inplace=True),
                                  nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def transform_module(kind: str, in_channels: int, width: int, out_channels: int, rectified: bool = True) -> nn.Module:
    """Latents at 1/16 -> features at 1/4 (x4): Module-Deconv or Module-Res.

    ``rectified``: the output ends in a ReLU, as the ResNet's ``layer1`` does; False for a teacher
    whose F_gt is linear (EfficientNet-Lite0's stage 2 ends in a projection with no activation, so
    its features are signed and a final ReLU could not reach half of them). The layer indices, and so
    a model file's tensor names, are the same either way."""
    out = [nn.ReLU(inplace=True)] if rectified else []
    if kind == "deconv":
        return nn.Sequential(
            nn.ConvTranspose2d(in_channels, width, 5, stride=2, padding=2, output_padding=1),
            nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(width, out_channels, 5, stride=2, padding=2, output_padding=1),
            nn.BatchNorm2d(out_channels), *out)
    if kind == "res":
        return nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), ResBlock(width),
            nn.Conv2d(width, 4 * width, 3, padding=1), nn.PixelShuffle(2), nn.LeakyReLU(inplace=True), ResBlock(width),
            nn.Conv2d(width, 4 * width, 3, padding=1), nn.PixelShuffle(2), nn.LeakyReLU(inplace=True), ResBlock(width),
            nn.Conv2d(width, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), *out)
    raise ConfigError(f"transform module {kind!r}: one of {', '.join(TRANSFORMS)}")


@dataclass
class StudentConfig:
    deeplab: dict = field(default_factory=dict)   # the teacher's DeepLabConfig (the back's layout)
    quality: int = 3                  # the hyperprior quality whose latents it reads
    latent_channels: int = 192        # M
    selection: str = "none"           # none | dynamic | static
    channels: tuple = ()              # static: the selected channels
    transform: str = "deconv"         # deconv (Module-Deconv) | res (Module-Res)
    transform_width: int = 128
    gate_hidden: int = 16
    gate_bias: float = 0.0            # the "on" logit's initial lead (0: every channel at even odds)
    tau: float = 1.0

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        if self.selection not in SELECTIONS or self.transform not in TRANSFORMS:
            raise ConfigError(f"latent_seg: selection one of {SELECTIONS}, transform one of {TRANSFORMS}; got "
                              f"{self.selection!r}, {self.transform!r}")
        if self.selection == "static" and (not self.channels or len(set(self.channels)) != len(self.channels)
                                           or min(self.channels) < 0 or max(self.channels) >= self.latent_channels):
            raise ConfigError(f"latent_seg static selection: distinct channels in 0..{self.latent_channels - 1}, "
                              f"got {self.channels}")

    @classmethod
    def from_dict(cls, data: dict) -> "StudentConfig":
        return dataclass_from_dict(cls, data, "latent_seg")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @property
    def label(self) -> str:
        """no_gate, dynamic or static<N>, with ``_res`` for Module-Res (the ``method`` of result rows)."""
        base = {"none": "no_gate", "dynamic": "dynamic"}.get(self.selection, f"static{len(self.channels)}")
        return base + ("_res" if self.transform == "res" else "")


@register_model("latent_seg", StudentConfig)
class LatentSegNet(nn.Module):
    """y^ -> selection -> transform -> DeepLabv3 without its first two layers (module docstring)."""

    def __init__(self, config: StudentConfig):
        super().__init__()
        self.config = config
        teacher_cfg = DeepLabConfig.from_dict(config.deeplab)
        backbone = make_backbone(teacher_cfg)
        self.gate = Gate(config.latent_channels, config.gate_hidden, config.tau, config.gate_bias) \
            if config.selection == "dynamic" else None
        self.register_buffer("static_channels", torch.tensor(config.channels, dtype=torch.long), persistent=False)
        inputs = len(config.channels) if config.selection == "static" else config.latent_channels
        self.transform = transform_module(config.transform, inputs, config.transform_width,
                                          feature_channels(teacher_cfg), features_rectified(teacher_cfg))
        self.back = DeepLabBack(teacher_cfg, backbone)
        self.num_classes = teacher_cfg.num_classes

    def select(self, y_hat: Tensor) -> tuple[Tensor, Tensor | None]:
        """(the transform's input, the (N, M) mask of a dynamic gate or None)."""
        if self.config.selection == "static":
            return y_hat[:, self.static_channels], None
        if self.gate is None:
            return y_hat, None
        mask = self.gate(y_hat)
        return y_hat * mask[:, :, None, None], mask

    def channels_for(self, y_hat: Tensor) -> list[int]:
        """The channels the encoder sends for one image (1, M, h, w): the gate's choice, the static list, or all."""
        if self.config.selection == "static":
            return list(self.config.channels)
        if self.gate is None:
            return list(range(self.config.latent_channels))
        return torch.nonzero(self.gate(y_hat)[0] > 0.5).flatten().tolist()

    def features(self, y_hat: Tensor) -> tuple[Tensor, Tensor | None]:
        selected, mask = self.select(y_hat)
        return self.transform(selected), mask

    def forward(self, y_hat: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """(N, M, h, w) y^ -> logits at ``size`` (default 16x the latents)."""
        features, _ = self.features(y_hat)
        size = size or (16 * y_hat.shape[-2], 16 * y_hat.shape[-1])
        return self.back(features, size)

    def forward_sent(self, y_sent: Tensor) -> Tensor:
        """Logits from the latents a file carries (unsent channels zero), at 16x their size: a static
        student reads its channels; no gate reads all; a dynamic gate ran at the encoder, so the
        zeros of the unsent channels are its mask."""
        inputs = y_sent[:, self.static_channels] if self.config.selection == "static" else y_sent
        return self.back(self.transform(inputs), (16 * y_sent.shape[-2], 16 * y_sent.shape[-1]))

    def init_back_from(self, teacher: DeepLabV3) -> None:
        """Start the segmentation layers from the teacher's (the paper's pretrained DeepLabv3)."""
        self.back.load_state_dict(teacher.back.state_dict())

    @torch.no_grad()
    def match_features(self, features: Tensor) -> None:
        """Start the transform's last BatchNorm at the per-channel mean and spread of ``features``
        (the teacher's F_gt of the training images, N x C x H x W), so that a signed F_gt of a few units
        (EfficientNet-Lite0's: std about 8) is in reach from the first step instead of after thousands
        of steps of a BatchNorm scale that starts at 1."""
        norm = [m for m in self.transform if isinstance(m, nn.BatchNorm2d)][-1]
        flat = features.detach().float().transpose(0, 1).reshape(features.shape[1], -1)
        norm.weight.copy_(flat.std(1).clamp_min(1e-3))
        norm.bias.copy_(flat.mean(1))
