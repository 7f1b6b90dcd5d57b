"""Configuration of PSPNet training (``semlic train-segnet --config CFG.yaml``).

A config is a mapping (YAML or JSON) with a ``model`` section (:class:`PSPNetConfig` keys;
``num_classes`` is required) and the training keys below. Defaults are hszhao/semseg's ADE20K
recipe (docs/REFERENCE.md, "PSPNet") except where noted.

======================  =========  ===============================================================
key                     default    meaning
======================  =========  ===============================================================
model                   (required) PSPNetConfig keys: num_classes, backbone, base_channels, ...
iterations              None       total optimiser steps; exactly one of iterations / epochs
epochs                  None       total epochs (an epoch = floor(images / batch_size) steps, >= 1)
batch_size              8          images per step (>= 2: batch norm on the 1x1 pyramid bin)
crop_size               473        training crop, an int or [height, width]
scale_range             [0.5, 2]   random scale factor range
horizontal_flip         true       random left-right flip
base_lr                 0.01       learning rate of the backbone
head_lr_multiplier      10         the PPM, head and aux head train at base_lr x this
momentum                0.9        SGD momentum
weight_decay            1e-4       SGD weight decay (all parameters, as hszhao/semseg)
poly_power              0.9        lr = lr0 * (1 - step / total) ** poly_power
num_workers             0          DataLoader worker processes
seed                    0          weights init, batch order and augmentation
checkpoint_every        200        steps between resumable checkpoints (also at the end)
log_every               10         steps between rows of the training log
train_split             "train"    prepared split to train on
eval_split              None       prepared split scored at the end (e.g. "val"), none if null
backbone_weights        None       ImageNet weights of the backbone: a torchvision ResNet state dict
                                   (.pth/.safetensors), or weights/efficientnet_lite0.safetensors
                                   (``semlic weights efficientnet_lite0``) for that backbone
minutes                 None       a training budget: when it runs out the model is written as it is
                                   (the log and the summary say how far it got)
amp                     true       bf16 autocast on CUDA and on CPUs with native bf16
class_weights           None       "median_frequency": cross-entropy weights median(f) / f(c), f(c) =
                                   pixels of class c / labelled pixels of the images holding c, on
                                   the train split (Eigen & Fergus 2015, SegNet's CamVid recipe:
                                   small classes such as poles and signs weigh more)
======================  =========  ===============================================================
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import ConfigError
from .pspnet import PSPNetConfig


@dataclass(frozen=True)
class SegnetTrainConfig:
    """Training settings (module docstring); build with :meth:`from_dict` or :func:`load_train_config`."""

    model: PSPNetConfig
    iterations: int | None = None
    epochs: int | None = None
    batch_size: int = 8
    crop_size: tuple[int, int] = (473, 473)
    scale_range: tuple[float, float] = (0.5, 2.0)
    horizontal_flip: bool = True
    base_lr: float = 0.01
    head_lr_multiplier: float = 10.0
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    num_workers: int = 0
    seed: int = 0
    checkpoint_every: int = 200
    log_every: int = 10
    train_split: str = "train"
    eval_split: str | None = None
    backbone_weights: str | None = None
    minutes: float | None = None
    amp: bool = True
    class_weights: str | None = None

    def __post_init__(self) -> None:
        crop = self.crop_size
        crop = (int(crop), int(crop)) if isinstance(crop, (int, float)) else tuple(int(v) for v in crop)
        object.__setattr__(self, "crop_size", crop)
        object.__setattr__(self, "scale_range", tuple(float(v) for v in self.scale_range))
        problems = []
        if (self.iterations is None) == (self.epochs is None):
            problems.append(f"give exactly one of iterations and epochs (found {self.iterations}, {self.epochs})")
        if (self.iterations is not None and self.iterations < 1) or (self.epochs is not None and self.epochs < 1):
            problems.append("iterations / epochs must be >= 1")
        if self.batch_size < 2:
            problems.append(f"batch_size must be >= 2 (batch norm after 1x1 pooling), found {self.batch_size}")
        if len(crop) != 2 or min(crop) < 8:
            problems.append(f"crop_size must be one or two sizes >= 8, found {self.crop_size}")
        if len(self.scale_range) != 2 or not 0 < self.scale_range[0] <= self.scale_range[1]:
            problems.append(f"scale_range must be [min, max] with 0 < min <= max, found {self.scale_range}")
        if self.base_lr <= 0 or self.head_lr_multiplier <= 0:
            problems.append("base_lr and head_lr_multiplier must be > 0")
        if self.minutes is not None and not self.minutes > 0:
            problems.append(f"minutes must be > 0 or null, found {self.minutes}")
        if self.class_weights not in (None, "median_frequency"):
            problems.append(f"class_weights must be null or median_frequency, found {self.class_weights!r}")
        if self.checkpoint_every < 1 or self.log_every < 1 or self.num_workers < 0:
            problems.append("checkpoint_every and log_every must be >= 1, num_workers >= 0")
        if problems:
            raise ConfigError("train-segnet config: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, values: dict) -> "SegnetTrainConfig":
        """Build from a plain mapping; unknown keys are refused by name."""
        if not isinstance(values, dict):
            raise ConfigError(f"train-segnet config: expected a mapping, found {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"train-segnet config: unknown keys {unknown}; known keys are {sorted(known)}")
        if not isinstance(values.get("model"), dict):
            raise ConfigError("train-segnet config: a 'model' section with at least num_classes is required")
        model = PSPNetConfig.from_dict(values["model"])
        try:
            return cls(**{**values, "model": model})
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"train-segnet config: a value has the wrong type ({exc})") from exc

    def to_dict(self) -> dict:
        """Plain dict (lists for tuples) that :meth:`from_dict` reads back."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
        return {**values, "model": self.model.to_dict()}

    def replace(self, **changes) -> "SegnetTrainConfig":
        """A copy with some keys changed (validated again); ``model`` may be a dict of model keys."""
        values = self.to_dict()
        if isinstance(changes.get("model"), dict):
            changes["model"] = {**values["model"], **changes["model"]}
        return SegnetTrainConfig.from_dict({**values, **changes})


def load_train_config(path: str | os.PathLike) -> SegnetTrainConfig:
    """Read a YAML or JSON training config file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config ({exc})") from exc
    try:
        values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'} ({exc})") from exc
    return SegnetTrainConfig.from_dict(values)
