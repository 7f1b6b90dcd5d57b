"""Loading published weights from local files (nothing is downloaded).

Three layouts are understood:

* torchvision ImageNet ResNets (``resnet50-*.pth``): ``conv1``, ``bn1``, ``layer1..4``, ``fc``;
  loaded into the backbone of a PSPNet with torchvision's stem (``fc`` is dropped).
* CSAILVision/semantic-segmentation-pytorch (ADE20K, encoder ``resnet{18,50,101}dilated`` +
  decoder ``ppm_deepsup``; files ``encoder_epoch_*.pth`` / ``decoder_epoch_*.pth``). Encoder keys
  are the backbone's with a deep stem (``conv1``/``bn1``, ``conv2``/``bn2``, ``conv3``/``bn3``,
  ``layer1..4``); decoder keys ``ppm.{i}.{1,2}`` (pyramid branch conv, BN), ``conv_last.{0,1,4}``
  (head conv, BN, classifier), ``cbr_deepsup.{0,1}`` and ``conv_last_deepsup`` (aux head).
  Its PPM branches always have 512 channels and its aux head fc_dim/4 (512 for ResNet-50).
* hszhao/semseg (the PSPNet authors, ``train_epoch_*.pth`` = ``{"state_dict": ...}`` saved from
  DataParallel, keys prefixed ``module.``): ``layer0.{0,1,3,4,6,7}`` (deep stem convs and BNs),
  ``layer1..4``, ``ppm.features.{i}.{1,2}``, ``cls.{0,1,4}``, ``aux.{0,1,4}`` (aux optional).

Each converter renames keys, builds the matching :class:`PSPNetConfig` and loads with a strict
key/shape check, so a wrong file fails with a :class:`~semlic.errors.CheckpointError` that names
the tensor in the source layout and the expected and found shapes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from ..errors import CheckpointError
from ..model_files import assign_state
from .efficientnet import NAME as EFFICIENTNET
from .efficientnet import load_efficientnet_backbone
from .pspnet import PSPNet, PSPNetConfig

# CSAILVision encoder name -> (backbone, fc_dim = channels of layer4)
CSAIL_ENCODERS = {
    "resnet18dilated": ("resnet18", 512),
    "resnet50dilated": ("resnet50", 2048),
    "resnet101dilated": ("resnet101", 2048),
}


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a state dict from ``.pth``/``.pt`` (tensors only, no pickled code) or ``.safetensors``.

    Unwraps ``{"state_dict": ...}`` / ``{"model": ...}`` wrappers and DataParallel's ``module.``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weights file")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch and safetensors raise many unrelated types here
        raise CheckpointError(f"{path}: not a readable weights file ({exc})") from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a dict of tensors (a state dict), found {type(state).__name__}")
    return {key.removeprefix("module."): value for key, value in state.items()}


def load_backbone_weights(model: PSPNet, path: str | os.PathLike) -> None:
    """Load ImageNet weights into ``model.backbone``, in place: the converted EfficientNet-Lite0 file
    (``semlic weights efficientnet_lite0``) for that backbone, a torchvision ResNet state dict otherwise."""
    if model.config.backbone == EFFICIENTNET:
        load_efficientnet_backbone(model.backbone, path)
    else:
        load_torchvision_backbone(model, path)


def load_torchvision_backbone(model: PSPNet, path: str | os.PathLike) -> None:
    """Load a torchvision ResNet state dict (ImageNet weights) into ``model.backbone``, in place."""
    if model.config.backbone == EFFICIENTNET:
        raise CheckpointError(f"{path}: torchvision ResNet weights do not fit the {EFFICIENTNET} backbone")
    if model.config.deep_stem:
        raise CheckpointError(f"{path}: torchvision weights have a 7x7 stem; this model has deep_stem=True")
    state = {k: v for k, v in read_state_dict(path).items() if not k.startswith("fc.")}
    assign_state(model.backbone, state, source=str(path))


# A layout is a list of (prefix in the published file, prefix in PSPNet); the first match wins.
Layout = list[tuple[str, str]]


def _rename(state: dict[str, Tensor], layout: Layout, source: str) -> dict[str, Tensor]:
    """Rename every key by the first matching prefix rule; a key no rule matches is refused."""
    renamed = {}
    for key, value in state.items():
        for theirs, ours in layout:
            if key.startswith(theirs):
                renamed[ours + key[len(theirs):]] = value
                break
        else:
            raise CheckpointError(f"{source}: unexpected tensor '{key}' of shape {tuple(value.shape)}")
    return renamed


def _source_namer(layout: Layout) -> Callable[[str], str]:
    """PSPNet key -> key in the published layout (longest matching PSPNet prefix), for messages."""
    by_length = sorted(layout, key=lambda rule: len(rule[1]), reverse=True)

    def source_name(key: str) -> str:
        for theirs, ours in by_length:
            if key.startswith(ours):
                return theirs + key[len(ours):]
        return key

    return source_name


_STEM_AND_STAGES = ["conv1.", "bn1.", "conv2.", "bn2.", "conv3.", "bn3.", "layer1.", "layer2.", "layer3.", "layer4."]
CSAIL_LAYOUT: Layout = [(name, f"backbone.{name}") for name in _STEM_AND_STAGES] + [
    ("ppm.", "ppm.stages."),
    ("conv_last.", "head."),
    ("cbr_deepsup.", "aux_head."),
    ("conv_last_deepsup.", "aux_head.4."),
]
HSZHAO_LAYOUT: Layout = [
    ("layer0.0.", "backbone.conv1."), ("layer0.1.", "backbone.bn1."),
    ("layer0.3.", "backbone.conv2."), ("layer0.4.", "backbone.bn2."),
    ("layer0.6.", "backbone.conv3."), ("layer0.7.", "backbone.bn3."),
    *[(f"layer{i}.", f"backbone.layer{i}.") for i in range(1, 5)],
    ("ppm.features.", "ppm.stages."),
    ("cls.", "head."),
    ("aux.", "aux_head."),
]


def csail_config(num_classes: int = 150, encoder_arch: str = "resnet50dilated") -> PSPNetConfig:
    """The :class:`PSPNetConfig` equal to CSAILVision's ``<encoder_arch>`` + ``ppm_deepsup``."""
    if encoder_arch not in CSAIL_ENCODERS:
        raise CheckpointError(f"CSAILVision encoder must be one of {sorted(CSAIL_ENCODERS)}, found {encoder_arch!r}")
    backbone, fc_dim = CSAIL_ENCODERS[encoder_arch]
    return PSPNetConfig(
        num_classes=num_classes, backbone=backbone, deep_stem=True, ppm_channels=512, head_channels=512,
        aux_channels=fc_dim // 4, align_corners=False,
    )


def convert_csail_state_dicts(encoder_state: dict[str, Tensor], decoder_state: dict[str, Tensor],
                              source: str = "CSAILVision weights") -> dict[str, Tensor]:
    """Rename CSAILVision encoder + ppm_deepsup decoder keys to :class:`PSPNet` keys.

    The encoder's ``fc`` (present in CSAIL's ImageNet files) is dropped; other unknown keys are refused.
    """
    encoder_state = {k: v for k, v in encoder_state.items() if not k.startswith("fc.")}
    return _rename({**encoder_state, **decoder_state}, CSAIL_LAYOUT, source)


def load_csail_pspnet(
    encoder_path: str | os.PathLike, decoder_path: str | os.PathLike, num_classes: int = 150,
    encoder_arch: str = "resnet50dilated",
) -> PSPNet:
    """Build a PSPNet from CSAILVision ``encoder_epoch_*.pth`` + ``decoder_epoch_*.pth`` (eval mode)."""
    source = f"{encoder_path} + {decoder_path}"
    state = convert_csail_state_dicts(read_state_dict(encoder_path), read_state_dict(decoder_path), source)
    model = PSPNet(csail_config(num_classes, encoder_arch))
    assign_state(model, state, source, _source_namer(CSAIL_LAYOUT))
    return model.eval()


def load_hszhao_pspnet(path: str | os.PathLike, num_classes: int = 150, backbone: str = "resnet50") -> PSPNet:
    """Build a PSPNet from an hszhao/semseg checkpoint (``align_corners=True``, uniform dilation).

    A checkpoint without the ``aux.*`` tensors (saved from an eval-mode model) gives a model
    without aux head (``aux_weight=0``).
    """
    state = _rename(read_state_dict(path), HSZHAO_LAYOUT, str(path))
    has_aux = any(key.startswith("aux_head.") for key in state)
    config = PSPNetConfig(
        num_classes=num_classes, backbone=backbone, deep_stem=True, uniform_dilation=True, align_corners=True,
        ppm_channels=512, head_channels=512, aux_channels=256, aux_weight=0.4 if has_aux else 0.0,
    )
    model = PSPNet(config)
    assign_state(model, state, str(path), _source_namer(HSZHAO_LAYOUT))
    return model.eval()
