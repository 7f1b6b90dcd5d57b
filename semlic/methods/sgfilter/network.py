"""The enhancement network: a residual CNN on the HEVC-decoded image, conditioned on a class map and the QP.

x~ = x^ + f(x^, E(s), qp / 51): the decoded image x^ in [-1, 1], the class map s through a learned
embedding E (K classes -> ``embed`` channels, the same as a 1x1 convolution of the one-hot map;
``embed`` 0: no map input, the plain post-filter), and the QP as a constant plane. ``layers``
3x3 convolutions of ``channels`` channels with ReLU between them (VRCNN / DnCNN in spirit, sized
for a CPU budget). The output convolution starts at zero: an untrained network is the identity,
so training only moves it away from HEVC's picture where that lowers the error. The class embedding
starts at zero too: the first layer then sees what the plain post-filter sees, and the map adds only
what training finds in it. (With PyTorch's default N(0, 1) embedding, 8 channels of unit noise per
class beside an image in [-1, 1], the network fed PSPNet's maps of HEVC-decoded CamVid trained worse
in 1,250 steps than the same network without a map; reports/sgfilter.md.)

Three registered models, one per way the map reaches the network (the same class and presets):
``sgfilter`` (the decoder derives the map from the decoded image), ``sgfilter_sent`` (the
encoder's map of the original, sent losslessly) and ``sgfilter_nomap`` (no map); ``sgfilter_truth``
(the ground truth, an upper bound, no codec) for the benchmark.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from ...config_files import dataclass_from_dict
from ...errors import ConfigError
from ...layers import image_to_tensor, module_device, tensor_to_uint8
from ...model_files import register_model

QP_SCALE = 51.0   # HEVC's largest QP


@dataclass(frozen=True)
class SGFilterConfig:
    num_classes: int
    channels: int = 48
    layers: int = 8
    embed: int = 8            # class-embedding channels; 0: the network sees no map

    def __post_init__(self) -> None:
        if not 1 <= self.num_classes <= 255 or self.channels < 1 or self.layers < 2 or self.embed < 0:
            raise ConfigError(f"sgfilter config: num_classes must be 1..255, channels >= 1, layers >= 2 and "
                              f"embed >= 0; found {self.num_classes}, {self.channels}, {self.layers}, {self.embed}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SGFilterConfig":
        return dataclass_from_dict(cls, data, "sgfilter config")


PRESETS = {
    "small": dict(channels=48, layers=8, embed=8),   # the CPU budget's network (a few minutes on 2 cores)
    "wide": dict(channels=64, layers=10, embed=8),
    "tiny": dict(channels=8, layers=3, embed=4),     # tests and the offline default
}


def sgfilter_config(preset: str = "small", num_classes: int | None = None, **overrides) -> SGFilterConfig:
    """A preset (``small``, ``wide``, ``tiny``) for ``num_classes`` classes, with any overrides."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown sgfilter preset {preset!r}; known: {', '.join(PRESETS)}")
    if num_classes is not None:
        overrides["num_classes"] = num_classes
    return SGFilterConfig(**{**PRESETS[preset], **overrides})


def _nomap_config(preset: str = "small", num_classes: int | None = None, **overrides) -> SGFilterConfig:
    return sgfilter_config(preset, num_classes, **{**overrides, "embed": 0})


@register_model("sgfilter", SGFilterConfig, preset=sgfilter_config)
class SGFilter(nn.Module):
    """(N, 3, H, W) decoded image in [-1, 1], (N, H, W) int64 classes, (N,) QPs -> the enhanced image."""

    def __init__(self, config: SGFilterConfig):
        super().__init__()
        self.config = config
        c = config.channels
        self.embedding = nn.Embedding(config.num_classes, config.embed) if config.embed else None
        if self.embedding is not None:
            nn.init.zeros_(self.embedding.weight)   # the map starts silent (module docstring)
        body = [nn.Conv2d(3 + 1 + config.embed, c, 3, padding=1), nn.ReLU()]
        for _ in range(config.layers - 2):
            body += [nn.Conv2d(c, c, 3, padding=1), nn.ReLU()]
        self.body = nn.Sequential(*body)
        self.out = nn.Conv2d(c, 3, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @property
    def uses_map(self) -> bool:
        return self.embedding is not None

    def forward(self, image: torch.Tensor, labels: torch.Tensor | None, qp: torch.Tensor) -> torch.Tensor:
        n, _, h, w = image.shape
        planes = [image, (qp.to(image.dtype) / QP_SCALE).view(n, 1, 1, 1).expand(n, 1, h, w)]
        if self.embedding is not None:
            if labels is None:
                raise ValueError("this sgfilter network is conditioned on a class map: give one")
            planes.append(self.embedding(labels).permute(0, 3, 1, 2).to(image.dtype))
        x = torch.cat(planes, 1)
        if image.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        return image + self.out(self.body(x))


@register_model("sgfilter_sent", SGFilterConfig, preset=sgfilter_config)
class SGFilterSent(SGFilter):
    """The same network trained on the encoder's map of the original image (sent in the file)."""


@register_model("sgfilter_nomap", SGFilterConfig, preset=_nomap_config)
class SGFilterNoMap(SGFilter):
    """The same network without a map input: the plain post-filter."""


@register_model("sgfilter_truth", SGFilterConfig, preset=sgfilter_config)
class SGFilterTruth(SGFilter):
    """The same network given the ground-truth classes (void as one more class): an upper bound on what a
    map can tell it. Not a codec (the decoder has no ground truth); the benchmark measures it."""


@torch.inference_mode()
def enhance(net: SGFilter, image: np.ndarray, labels: np.ndarray | None, qp: int) -> np.ndarray:
    """x~ of an (H, W, 3) uint8 decoded image, its (H, W) uint8 class map (or None) and the QP, as uint8."""
    device = module_device(net)
    x = image_to_tensor(image, device)
    s = None
    if net.uses_map:
        if labels is None or labels.shape != image.shape[:2]:
            raise ValueError(f"a class map of {image.shape[:2]} is needed, got "
                             f"{None if labels is None else labels.shape}")
        if labels.size and int(labels.max()) >= net.config.num_classes:
            raise ConfigError(f"class {int(labels.max())} >= the network's {net.config.num_classes} classes")
        s = torch.from_numpy(np.ascontiguousarray(labels)).to(device)[None].long()
    return tensor_to_uint8(net(x, s, torch.tensor([float(qp)], device=device)))
