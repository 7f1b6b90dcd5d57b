"""SMapNet: the segmentation enhancer of EDMS, a recursive residual network.

Hoang, Zhou & Fan, "Image Compression with Encoder-Decoder Matched Semantic Segmentation"
(CVPR workshops 2020), section 2.3: ``3c64, 9 x 3v64, 3c3`` with no final ReLU, where ``v`` is
a recursive residual unit of DRRN (Tai, Yang & Liu, "Image Super-Resolution via Deep
Recursive Residual Network", CVPR 2017): one pair of 3x3 convolutions whose weights are
shared by all ``recursions`` units, each unit adding the block's input (multi-path local
residual learning)::

    h_0 = ReLU(conv_in(p))
    h_u = h_0 + conv_b(ReLU(conv_a(ReLU(h_{u-1}))))      u = 1..U, conv_a/conv_b shared
    scores = conv_out(ReLU(h_U)) + log(max(p, prior_floor))   (global residual, no final ReLU)

Representation (the paper leaves it open; its ``3c3`` output suggests a colour-coded map):

* **input: PSPNet's class probabilities** p = softmax(logits), (N, K, H, W). Unlike a one-hot
  map they keep PSPNet's confidence, which is exactly what tells a wrong pixel (a low margin
  near a blurred boundary) from a sure one; unlike raw logits they are bounded in [0, 1]
  whatever PSPNet's logit scale, which keeps the recursion (9 applications of one pair of
  weights) stable.
* **output: class scores (logits)** (N, K, H, W), trained with cross-entropy against the
  reference segmentation; the enhanced map is their argmax. Regressing a 3-channel colour
  map would need a nearest-colour decision with no loss that matches it.
* The global residual adds log p (floored at ``prior_floor``), so the network learns a
  correction of PSPNet's log-probabilities (DRRN's global residual learning); the output
  convolution starts small (std ``output_init_std``), so an untrained SMapNet returns
  PSPNet's own map except at near-ties.
* No normalisation layer (the paper's ``c`` has instance norm; DRRN's units use none in
  their final form): every output pixel depends only on its receptive field (2 + 2 U
  convolutions, 41 x 41 pixels for U = 9), not on image-wide statistics.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ...config_files import dataclass_from_dict
from ...errors import ConfigError
from ...model_files import register_model


@dataclass(frozen=True)
class SMapNetConfig:
    num_classes: int
    channels: int = 64        # the paper's 64 filters
    recursions: int = 9       # the paper's 9 x 3v64
    prior_floor: float = 1e-4
    output_init_std: float = 1e-3

    def __post_init__(self) -> None:
        if not 2 <= self.num_classes <= 255 or self.channels < 1 or self.recursions < 1:
            raise ConfigError(f"SMapNet config: num_classes must be 2..255, channels and recursions >= 1; found "
                              f"{self.num_classes}, {self.channels}, {self.recursions}")
        if not 0 < self.prior_floor < 1:
            raise ConfigError(f"SMapNet config: prior_floor must be in (0, 1), found {self.prior_floor}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SMapNetConfig":
        return dataclass_from_dict(cls, data, "SMapNet config")


SMAPNET_PRESETS = {
    "paper": dict(channels=64, recursions=9),
    "tiny": dict(channels=16, recursions=9),   # CPU tests and the synthetic smoke-test pipeline
}


def smapnet_config(preset: str = "paper", num_classes: int | None = None, **overrides) -> SMapNetConfig:
    """A preset (``paper``, ``tiny``) for ``num_classes`` classes, with any overrides."""
    if num_classes is not None:
        overrides["num_classes"] = num_classes
    if preset not in SMAPNET_PRESETS:
        raise ConfigError(f"unknown SMapNet preset {preset!r}; known: {', '.join(SMAPNET_PRESETS)}")
    return SMapNetConfig(**{**SMAPNET_PRESETS[preset], **overrides})


@register_model("smapnet", SMapNetConfig, preset=smapnet_config)
class SMapNet(nn.Module):
    """Class probabilities (N, K, H, W) in [0, 1] -> enhanced class scores (N, K, H, W)."""

    def __init__(self, config: SMapNetConfig):
        super().__init__()
        self.config = config
        k, c = config.num_classes, config.channels
        self.conv_in = nn.Conv2d(k, c, 3, padding=1)
        self.conv_a = nn.Conv2d(c, c, 3, padding=1)   # shared by every recursion
        self.conv_b = nn.Conv2d(c, c, 3, padding=1)
        self.conv_out = nn.Conv2d(c, k, 3, padding=1)
        self.relu = nn.ReLU()
        for conv in (self.conv_in, self.conv_a, self.conv_b):
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        nn.init.normal_(self.conv_out.weight, 0.0, config.output_init_std)
        nn.init.zeros_(self.conv_out.bias)

    def final_layer_parameters(self) -> list[nn.Parameter]:
        """The output convolution: trained at a tenth of the learning rate (EDMS, section 2.4)."""
        return list(self.conv_out.parameters())

    def forward(self, probabilities: torch.Tensor) -> torch.Tensor:
        if probabilities.dim() != 4 or probabilities.shape[1] != self.config.num_classes:
            raise ValueError(f"SMapNet expects (N, {self.config.num_classes}, H, W) probabilities, "
                             f"got {tuple(probabilities.shape)}")
        h0 = self.relu(self.conv_in(probabilities))
        h = h0
        for _ in range(self.config.recursions):
            h = h0 + self.conv_b(self.relu(self.conv_a(self.relu(h))))
        prior = torch.log(probabilities.float().clamp_min(self.config.prior_floor))
        return self.conv_out(self.relu(h)) + prior.to(h.dtype)
