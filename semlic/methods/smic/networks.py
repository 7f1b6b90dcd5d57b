"""SMIC's networks (Wei, Liao, Bai & Zhao, "Semantic Map Based Image Compression via Conditional
Generative Adversarial Network", PRCV 2020): SS-Net, Rec-Net and their discriminators.

* **SS-Net** (Fig. 2), model ``smic_ssnet``: image (N, 3, H, W) in [-1, 1] -> the semantic map
  drawn as an image, (N, 3, H, W) in [-1, 1]: 7x7 conv to ``ngf`` (60) channels, two 3x3
  stride-2 convs, ``n_blocks`` (6) residual blocks (Fig. 2b), two 3x3 transposed convs back to
  the input size, 7x7 conv to 3 channels, tanh. Instance norm and ReLU as in the pix2pix /
  pix2pixHD generators it follows. The class palette (K classes and, last, the void colour)
  is a buffer of the network, so the model file carries it and its fingerprint covers it;
  :meth:`SSNet.snap` turns a drawn map into the nearest palette colour per pixel, :meth:`labels`
  into class indices. ``encoder: efficientnet_lite0`` (not the paper's) replaces the first three
  convolutions with EfficientNet-Lite0's stem and stages 1-2 (24 channels at 1/4, the same
  resolution, ImageNet weights loadable: :meth:`SSNet.load_encoder_weights`) and a 1x1 convolution
  to the residual blocks' 4 x ``ngf`` channels; the rest is the paper's generator.
* **Rec-Net** (Fig. 3), model ``smic_recnet``: U-Net on cat(up(small image), decoded map,
  factor plane) (N, 7, H, W) -> image (N, 3, H, W). 3x3 convs, a residual block at every level,
  BatchNorm + LeakyReLU 0.2 except on the first and the last convolution, skips concatenated,
  ``depth`` stride-2 levels (H and W multiples of 2 ** depth). Its output is added to up(small
  image): Rec-Net learns the difference between the reconstruction and the upsampled image
  (section 2.2). The factor plane (log2(factor) / 4 everywhere) lets one network serve every
  downsampling factor.
* **D1, D2** (Table 1): 4x4 convolutions with LeakyReLU 0.2, the last giving one logit per
  patch (the table's sigmoid is folded into the loss: binary cross-entropy on logits). D1 sees
  cat(image, map) (6 channels), D2 cat(Rec-Net input, image) (10 channels).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ...config_files import dataclass_from_dict
from ...errors import ConfigError
from ...model_files import register_model
from ...nn.blocks import init_weights, norm_layer
from ...segnet import efficientnet

VOID_COLOUR = (0, 0, 0)
ENCODERS = ("paper", efficientnet.NAME)
# Table 1: (output channels, stride) of each 4x4 convolution before the last (1 channel, stride 1).
D1_LAYERS = ((64, 2), (128, 2), (256, 2), (256, 1))
D2_LAYERS = ((64, 2), (128, 2), (256, 2), (512, 2), (512, 2), (512, 1))


def default_palette(num_classes: int) -> list[list[int]]:
    """``num_classes`` distinct colours spread over the RGB cube (none is the void colour, black)."""
    steps = max(2, math.ceil((num_classes + 1) ** (1 / 3)))
    levels = [round(255 * i / (steps - 1)) for i in range(steps)]
    colours = [[r, g, b] for r in levels for g in levels for b in levels if [r, g, b] != list(VOID_COLOUR)]
    colours.sort(key=lambda c: (-(max(c) - min(c)), c))  # saturated colours first: far apart
    return colours[:num_classes]


@dataclass(frozen=True)
class SSNetConfig:
    num_classes: int
    palette: tuple = ()            # K RGB triplets; empty: default_palette(K)
    ngf: int = 60                  # the paper's 60-channel first layer
    n_blocks: int = 6
    encoder: str = "paper"         # paper | efficientnet_lite0 (module docstring)

    def __post_init__(self) -> None:
        palette = tuple(tuple(int(v) for v in c) for c in (self.palette or default_palette(self.num_classes)))
        object.__setattr__(self, "palette", palette)
        if not 2 <= self.num_classes <= 254 or len(palette) != self.num_classes or self.ngf < 1 or self.n_blocks < 0:
            raise ConfigError(f"SS-Net config: num_classes 2..254 with one palette colour each, ngf >= 1, "
                              f"n_blocks >= 0; found {self.num_classes}, {len(palette)} colours, {self.ngf}, "
                              f"{self.n_blocks}")
        if self.encoder not in ENCODERS:
            raise ConfigError(f"SS-Net config: encoder must be one of {', '.join(ENCODERS)}, found {self.encoder!r}")
        if len(set(palette) | {VOID_COLOUR}) != self.num_classes + 1 or any(not 0 <= v <= 255 for c in palette for v in c):
            raise ConfigError("SS-Net config: palette colours must be distinct RGB triplets in 0..255, none black "
                              "(black is the void colour)")

    def to_dict(self) -> dict:
        return {**asdict(self), "palette": [list(c) for c in self.palette]}

    @classmethod
    def from_dict(cls, data: dict) -> "SSNetConfig":
        data = dict(data)
        data["palette"] = tuple(tuple(c) for c in data.get("palette", ()))
        return dataclass_from_dict(cls, data, "SS-Net config")


@dataclass(frozen=True)
class RecNetConfig:
    ngf: int = 64
    depth: int = 4                 # stride-2 levels: sides must be multiples of 2 ** depth
    max_channels: int = 512

    def __post_init__(self) -> None:
        if self.ngf < 1 or not 1 <= self.depth <= 6 or self.max_channels < self.ngf:
            raise ConfigError(f"Rec-Net config: ngf >= 1, depth 1..6, max_channels >= ngf; found {self.ngf}, "
                              f"{self.depth}, {self.max_channels}")

    @property
    def multiple(self) -> int:
        return 2 ** self.depth

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "RecNetConfig":
        return dataclass_from_dict(cls, data, "Rec-Net config")


PRESETS = {
    "paper": {"ssnet": dict(ngf=60, n_blocks=6), "recnet": dict(ngf=64, depth=4)},
    "small": {"ssnet": dict(ngf=32, n_blocks=6), "recnet": dict(ngf=32, depth=4, max_channels=256)},
    "tiny": {"ssnet": dict(ngf=8, n_blocks=2), "recnet": dict(ngf=8, depth=2, max_channels=16)},
}


def _preset(preset: str, part: str) -> dict:
    if preset not in PRESETS:
        raise ConfigError(f"unknown SMIC preset {preset!r}; known: {', '.join(PRESETS)}")
    return dict(PRESETS[preset][part])


def ssnet_config(preset: str = "paper", num_classes: int = 11, **overrides) -> SSNetConfig:
    return SSNetConfig(**{**_preset(preset, "ssnet"), "num_classes": num_classes, **overrides})


def recnet_config(preset: str = "paper", num_classes: int | None = None, **overrides) -> RecNetConfig:
    """Rec-Net does not depend on the classes (it sees the map as an image); ``num_classes`` is ignored."""
    return RecNetConfig(**{**_preset(preset, "recnet"), **overrides})


class ResidualBlock(nn.Module):
    """Fig. 2(b): x + conv3x3-norm-act-conv3x3-norm (x)."""

    def __init__(self, channels: int, norm: str, act: nn.Module):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect"),
                                  norm_layer(channels, norm), act,
                                  nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect"),
                                  norm_layer(channels, norm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


@register_model("smic_ssnet", SSNetConfig, preset=ssnet_config)
class SSNet(nn.Module):
    """Image (N, 3, H, W) in [-1, 1] -> drawn semantic map (N, 3, H, W) in [-1, 1]; H, W multiples of 4."""

    multiple = 4

    def __init__(self, config: SSNetConfig):
        super().__init__()
        self.config = config
        c = config.ngf
        act = nn.ReLU(True)
        layers: list[nn.Module] = []
        self.encoder = None
        if config.encoder == "paper":
            layers += [nn.Conv2d(3, c, 7, padding=3, padding_mode="reflect"), norm_layer(c, "instance"), act,
                       nn.Conv2d(c, 2 * c, 3, 2, 1), norm_layer(2 * c, "instance"), act,
                       nn.Conv2d(2 * c, 4 * c, 3, 2, 1), norm_layer(4 * c, "instance"), act]
        else:
            self.encoder = efficientnet.LiteFront()
            layers += [nn.Conv2d(self.encoder.out_channels, 4 * c, 1), norm_layer(4 * c, "instance"), act]
        layers += [ResidualBlock(4 * c, "instance", act) for _ in range(config.n_blocks)]
        layers += [nn.ConvTranspose2d(4 * c, 2 * c, 3, 2, 1, output_padding=1), norm_layer(2 * c, "instance"), act,
                   nn.ConvTranspose2d(2 * c, c, 3, 2, 1, output_padding=1), norm_layer(c, "instance"), act,
                   nn.Conv2d(c, 3, 7, padding=3, padding_mode="reflect"), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        palette = torch.tensor(list(config.palette) + [list(VOID_COLOUR)], dtype=torch.uint8)
        self.register_buffer("palette", palette)      # (K + 1, 3): the classes, then void
        init_weights(self.net)   # pix2pixHD's; the encoder keeps EfficientNet's (or loads ImageNet's)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.encoder is not None:   # [-1, 1] -> EfficientNet's (x - 127) / 128 on 0..255
            image = self.encoder((image + 1) * (127.5 / 128) - 127 / 128)
        return self.net(image)

    def load_encoder_weights(self, path=None) -> None:
        """EfficientNet-Lite0's ImageNet weights (``semlic weights efficientnet_lite0``) into the encoder, in place."""
        if self.encoder is None:
            raise ConfigError(f"SS-Net: ImageNet weights are read for encoder {efficientnet.NAME} only, this one is "
                              f"{self.config.encoder!r}")
        self.encoder.load_weights(path)

    def _distances(self, drawn: torch.Tensor) -> torch.Tensor:
        """(N, K + 1, H, W) squared distances of each pixel's colour (0..255) to each palette colour."""
        colours = (drawn.float() + 1) * 127.5
        palette = self.palette.float().to(colours.device)
        return ((colours[:, None] - palette[None, :, :, None, None]) ** 2).sum(2)

    def labels(self, drawn: torch.Tensor) -> torch.Tensor:
        """(N, H, W) int64: the nearest palette entry (K: void) of each pixel of a drawn map."""
        return self._distances(drawn).argmin(1)

    def snap(self, drawn: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) uint8: every pixel replaced by its nearest palette colour."""
        return self.palette.to(drawn.device)[self.labels(drawn)].permute(0, 3, 1, 2).contiguous()

    def draw(self, labels: torch.Tensor) -> torch.Tensor:
        """(N, H, W) class indices (ignore index 255: void) -> (N, 3, H, W) uint8 palette colours."""
        k = self.config.num_classes
        index = torch.where(labels.long() < k, labels.long(), torch.full_like(labels.long(), k))
        return self.palette.to(labels.device)[index].permute(0, 3, 1, 2).contiguous()


@register_model("smic_recnet", RecNetConfig, preset=recnet_config)
class RecNet(nn.Module):
    """cat(up(small), decoded map, factor plane) (N, 7, H, W) in [-1, 1] -> image (N, 3, H, W)."""

    in_channels = 7

    def __init__(self, config: RecNetConfig):
        super().__init__()
        self.config = config
        act = nn.LeakyReLU(0.2, True)
        widths = [min(config.ngf * 2 ** i, config.max_channels) for i in range(config.depth + 1)]
        self.stem = nn.Sequential(nn.Conv2d(self.in_channels, widths[0], 3, padding=1, padding_mode="reflect"), act)
        self.stem_block = ResidualBlock(widths[0], "batch", act)
        self.down = nn.ModuleList()
        for i in range(config.depth):
            self.down.append(nn.Sequential(
                nn.Conv2d(widths[i], widths[i + 1], 3, 2, 1), nn.BatchNorm2d(widths[i + 1]), act,
                ResidualBlock(widths[i + 1], "batch", act)))
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for i in reversed(range(config.depth)):
            self.up.append(nn.Sequential(nn.ConvTranspose2d(widths[i + 1], widths[i], 3, 2, 1, output_padding=1),
                                         nn.BatchNorm2d(widths[i]), act))
            self.merge.append(nn.Sequential(
                nn.Conv2d(2 * widths[i], widths[i], 3, padding=1, padding_mode="reflect"), nn.BatchNorm2d(widths[i]),
                act, ResidualBlock(widths[i], "batch", act)))
        self.head = nn.Conv2d(widths[0], 3, 3, padding=1, padding_mode="reflect")
        init_weights(self)
        nn.init.zeros_(self.head.weight)   # starts as the identity on up(small): x' = up(small)
        nn.init.zeros_(self.head.bias)

    @staticmethod
    def factor_plane(like: torch.Tensor, factor: int | torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W): log2(factor) / 4, the downsampling factor as an input plane."""
        factor = torch.as_tensor(factor, dtype=like.dtype, device=like.device).reshape(-1, 1, 1, 1)
        return (torch.log2(factor) / 4).expand(like.shape[0], 1, *like.shape[-2:])

    def forward(self, upsampled: torch.Tensor, drawn_map: torch.Tensor, factor: int | torch.Tensor) -> torch.Tensor:
        x = torch.cat([upsampled, drawn_map, self.factor_plane(upsampled, factor)], 1)
        skips = [self.stem_block(self.stem(x))]
        for down in self.down:
            skips.append(down(skips[-1]))
        h = skips.pop()
        for up, merge in zip(self.up, self.merge):
            h = merge(torch.cat([up(h), skips.pop()], 1))
        return upsampled + self.head(h)


class PatchDiscriminator(nn.Module):
    """Table 1: 4x4 convs with LeakyReLU 0.2 (``layers``: (channels, stride)), then a 4x4 conv to one
    logit per patch, stride 1."""

    def __init__(self, in_channels: int, layers: tuple[tuple[int, int], ...]):
        super().__init__()
        modules: list[nn.Module] = []
        channels = in_channels
        for out, stride in layers:
            modules += [nn.Conv2d(channels, out, 4, stride, 1), nn.LeakyReLU(0.2, True)]
            channels = out
        modules.append(nn.Conv2d(channels, 1, 4, 1, 1))
        self.net = nn.Sequential(*modules)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def d1(width: float = 1.0) -> PatchDiscriminator:
    """SS-Net's discriminator: cat(image, map) (6 channels); ``width`` scales the channels (CPU presets)."""
    return PatchDiscriminator(6, tuple((max(1, int(c * width)), s) for c, s in D1_LAYERS))


def d2(width: float = 1.0) -> PatchDiscriminator:
    """Rec-Net's discriminator: cat(Rec-Net input, image) (10 channels)."""
    return PatchDiscriminator(RecNet.in_channels + 3, tuple((max(1, int(c * width)), s) for c, s in D2_LAYERS))


def gan_loss(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """Binary cross-entropy on patch logits: -log D for the real target (the non-saturating
    generator loss of section 2.3 when applied to fakes with ``real=True``)."""
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits.float(), target.float())
