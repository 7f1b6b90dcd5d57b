"""The learned codec: CompressAI's ``bmshj2018-hyperprior`` (Balle et al. 2018), a bank of qualities.

Model ``hyperprior`` (one file): a :class:`HyperpriorBank` holds one CompressAI
``ScaleHyperprior(N, M)`` per trained quality (CompressAI's zoo widths: (128, 192) for
qualities 1-5, (192, 320) for 6-8; any width for tests). The file also holds each codec's
entropy tables (the quantised CDFs CompressAI's ``update()`` computes), so encoder and decoder
use the same tables wherever they run; their shapes are in the config (``tables``), so the
loader builds the bank to fit the file.

Training (:class:`.training.HyperpriorTraining`, on :func:`semlic.train_loop.fit`): CompressAI's
examples/train.py for one quality: loss = lambda * 255^2 * MSE + bpp (lambda from the zoo's
table), Adam lr 1e-4 on the network, Adam lr 1e-3 on the entropy bottleneck's quantiles
(the auxiliary loss), gradient norm clipped at 1.0; random square crops of the train split.

:func:`import_compressai` loads a local CompressAI checkpoint (a state dict, or a dict with
``state_dict``; tensors only, ``torch.load(weights_only=True)``) through CompressAI's own
``from_state_dict`` and puts it in a bank at a quality.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ...config_files import dataclass_from_dict
from ...errors import CheckpointError, ConfigError
from ...entropy import bounded_string, compressai_models
from ...model_files import load_model, register_model, save_model
from .qualities import LAMBDAS, MULTIPLE, check_quality  # noqa: F401  (the hyperprior's names)

#: CompressAI zoo: MSE lambda and (N, M) per quality
HYPERPRIOR_FILE = "hyperprior.safetensors"
_TABLE_DTYPES = {"float32": torch.float32, "int32": torch.int32, "int64": torch.int64}


def zoo_widths(quality: int) -> tuple[int, int]:
    """CompressAI's (N, M) for a quality of bmshj2018-hyperprior."""
    check_quality(quality)
    return (128, 192) if quality <= 5 else (192, 320)




@dataclass
class HyperpriorConfig:
    qualities: tuple = (3,)
    widths: dict = field(default_factory=dict)   # "q" -> [N, M]; default CompressAI's zoo widths
    tables: dict = field(default_factory=dict)   # entropy-table buffer -> [dtype, shape] (set when saved)

    def __post_init__(self) -> None:
        self.qualities = tuple(sorted(check_quality(q) for q in self.qualities))
        if not self.qualities or len(set(self.qualities)) != len(self.qualities):
            raise ConfigError(f"hyperprior: qualities must be distinct and non-empty, got {self.qualities}")
        self.widths = {str(k): [int(v) for v in w] for k, w in self.widths.items()}

    def width(self, quality: int) -> tuple[int, int]:
        given = self.widths.get(str(quality))
        return tuple(given) if given else zoo_widths(quality)

    @classmethod
    def from_dict(cls, data: dict) -> "HyperpriorConfig":
        return dataclass_from_dict(cls, data, "hyperprior")

    def to_dict(self) -> dict:
        return {"qualities": list(self.qualities), "widths": self.widths, "tables": self.tables}


def _table_buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    """The entropy models' table buffers (their shapes change when CompressAI's update() fills them)."""
    names = ("_offset", "_quantized_cdf", "_cdf_length", "scale_table")
    return {k: v for k, v in module.state_dict().items() if k.rsplit(".", 1)[-1] in names}


@register_model("hyperprior", HyperpriorConfig)
class HyperpriorBank(nn.Module):
    """One CompressAI ScaleHyperprior per quality (module docstring)."""

    def __init__(self, config: HyperpriorConfig):
        super().__init__()
        models = compressai_models()
        self.config = config
        self.codecs = nn.ModuleDict({f"q{q}": models.ScaleHyperprior(*config.width(q)) for q in config.qualities})
        for name, (dtype, shape) in config.tables.items():   # sized to fit the file's tables
            owner, attr = name.rsplit(".", 1)
            self.get_submodule(owner)._buffers[attr] = torch.zeros(shape, dtype=_TABLE_DTYPES[dtype])

    def codec(self, quality: int) -> nn.Module:
        key = f"q{check_quality(quality)}"
        if key not in self.codecs:
            raise ConfigError(f"the hyperprior model has qualities {list(self.config.qualities)}, not {quality}: "
                              "train that quality (train_hyperprior) or give a model file that has it")
        return self.codecs[key]

    def update_tables(self) -> None:
        """Compute every codec's entropy tables (CompressAI's update) and record their shapes."""
        for codec in self.codecs.values():
            codec.update(force=True)
        self.config.tables = {k: [str(v.dtype).removeprefix("torch."), list(v.shape)]
                              for k, v in _table_buffers(self).items()}

    def ready(self) -> bool:
        return all(v.numel() > 0 for v in _table_buffers(self).values())


def bank_from_codecs(codecs: dict[int, nn.Module]) -> HyperpriorBank:
    """A bank holding the given trained ScaleHyperprior codecs (by quality), tables computed."""
    config = HyperpriorConfig(qualities=tuple(codecs),
                              widths={str(q): [c.N, c.M] for q, c in codecs.items()})
    bank = HyperpriorBank(config)
    for quality, codec in codecs.items():
        bank.codec(quality).load_state_dict(codec.state_dict())   # CompressAI's: resizes the tables
    bank.update_tables()
    return bank.eval()


def merge_banks(paths, out_path) -> HyperpriorBank:
    """One bank file from several (one quality each, as the training tasks write them)."""
    codecs: dict[int, nn.Module] = {}
    for path in paths:
        bank = load_model(path, expect="hyperprior")
        for quality in bank.config.qualities:
            if quality in codecs:
                raise ConfigError(f"quality {quality} is in more than one of the files {list(map(str, paths))}")
            codecs[quality] = bank.codec(quality)
    bank = bank_from_codecs(dict(sorted(codecs.items())))
    save_model(out_path, bank)
    return bank


def import_compressai(checkpoint, quality: int, into=None, out_path=None) -> HyperpriorBank:
    """A bank with a local CompressAI bmshj2018-hyperprior checkpoint at ``quality`` (plus ``into``'s)."""
    quality = check_quality(quality)
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (pickle, zip and format errors alike)
        raise CheckpointError(f"{checkpoint}: not a readable CompressAI checkpoint (tensors only): {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if isinstance(state, dict):   # saved from a DataParallel model: "module." prefixes
        state = {str(k).removeprefix("module."): v for k, v in state.items()}
    if not isinstance(state, dict) or "g_a.0.weight" not in state or "g_a.6.weight" not in state:
        raise CheckpointError(f"{checkpoint}: not a bmshj2018-hyperprior state dict (no g_a.0.weight / g_a.6.weight)")
    try:
        codec = compressai_models().ScaleHyperprior.from_state_dict(state)
    except (RuntimeError, KeyError, ValueError) as exc:
        raise CheckpointError(f"{checkpoint}: does not fit CompressAI's ScaleHyperprior: {exc}") from exc
    codecs = {}
    if into is not None:
        existing = load_model(into, expect="hyperprior")
        codecs = {q: existing.codec(q) for q in existing.config.qualities if q != quality}
    codecs[quality] = codec
    bank = bank_from_codecs(dict(sorted(codecs.items())))
    if out_path is not None:
        save_model(out_path, bank)
    return bank


# --- padding and the entropy coder ----------------------------------------------------------
def to_unit(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) uint8 -> float in [0, 1], the codec's input range."""
    return images.float() / 255.0


def pad(x: torch.Tensor, multiple: int = MULTIPLE) -> torch.Tensor:
    """Zero-pad (N, C, H, W) on the right and bottom to a multiple (CompressAI's examples pad with 0)."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    return F.pad(x, (0, pw, 0, ph)) if ph or pw else x


@dataclass
class Latents:
    """What the encoder computes from one image: y^ (rounded), the hyperprior's string and scales."""

    y_hat: torch.Tensor            # (1, M, h, w) float, integer-valued
    z_string: bytes
    z_shape: tuple[int, int]
    indexes: torch.Tensor          # (1, M, h, w) int: the Gaussian conditional's table per element
    integer: bool = True           # indexes from the integer hyper-decoder (else CompressAI's float h_s)


@torch.inference_mode()
def analyse(codec: nn.Module, image: torch.Tensor, integer: bool = True) -> Latents:
    """(1, 3, H, W) uint8 -> :class:`Latents` (y = g_a(x padded), z coded, scales decoded as the decoder will).

    ``integer``: the scale indexes from :class:`IntegerHyperDecoder` (every file written today);
    False: from CompressAI's float ``h_s``, as files of format 2 without checks were written.
    """
    x = pad(to_unit(image))
    y = codec.g_a(x)
    z = codec.h_a(torch.abs(y))
    z_string = codec.entropy_bottleneck.compress(z)[0]
    indexes = hyper_decode(codec, z_string, tuple(z.shape[-2:]), integer=integer)
    y_hat = torch.round(y)
    return Latents(y_hat, z_string, tuple(int(s) for s in z.shape[-2:]), indexes, integer)


# --- the integer hyper-decoder ----------------------------------------------------------------
INPUT_FRACTION = 2 ** 8       # z^ = symbol + median enters the integer network as round(z^ * 256)


class IntegerHyperDecoder:
    """The scale indexes of y from z's symbols in exact integer arithmetic (semlic.nn.integer).

    CompressAI picks each element's Gaussian table by comparing ``h_s(z^)``, a float network, with
    the scale table; a decoder whose float results differ in the last bit from the encoder's may
    pick another table and desynchronise. Here ``h_s`` is an integer network built from the same
    weights (post-training quantisation from the weights alone: the same on every machine) and
    the table is chosen by comparing its integer output with integer thresholds, so encoder and
    decoder agree on every CPU, thread count and device. The rate cost against the float ``h_s``
    is measured in reports/determinism.md.
    """

    def __init__(self, codec: nn.Module):
        from ...nn.integer import A_MAX, integer_chain

        bottleneck, conditional = codec.entropy_bottleneck, codec.gaussian_conditional
        if bottleneck._offset.numel() == 0 or conditional.scale_table.numel() == 0:
            raise ConfigError("the hyperprior's entropy tables are not computed (update_tables)")
        medians = bottleneck.quantiles[:, 0, 1].detach().cpu().to(torch.float64)
        offset = bottleneck._offset.cpu().to(torch.int64)
        top = bottleneck._cdf_length.cpu().to(torch.int64) - 3 + offset
        symbol_bound = int(torch.maximum(-offset, top).max()) * 2 + 2   # a margin for escaped (bypass) values
        self.offsets = torch.round(medians * INPUT_FRACTION).to(torch.int64).view(1, -1, 1, 1)
        bound = min(A_MAX, symbol_bound * INPUT_FRACTION + int(self.offsets.abs().max()))
        self.chain = integer_chain(codec.h_s, 1.0 / INPUT_FRACTION, bound)
        self.thresholds = self.chain.thresholds(conditional.scale_table, float(conditional.lower_bound_scale.bound))
        self.medians = bottleneck.quantiles[:, 0, 1].detach().cpu().view(1, -1, 1, 1)

    def scales_accumulator(self, z_hat: torch.Tensor) -> torch.Tensor:
        """(1, M, H, W) int64: the integer network's output (``ACC * unit`` are the scales)."""
        symbols = torch.round(z_hat.detach().cpu().float() - self.medians).to(torch.int64)
        return self.chain(symbols * INPUT_FRACTION + self.offsets)

    def indexes(self, z_hat: torch.Tensor) -> torch.Tensor:
        """(1, M, H, W) int32 table indexes: the number of thresholds below each accumulator."""
        acc = self.scales_accumulator(z_hat)
        n, m, h, w = acc.shape
        flat = acc.permute(1, 0, 2, 3).reshape(m, -1).contiguous()
        index = torch.searchsorted(self.thresholds, flat, side="left")
        return index.reshape(m, n, h, w).permute(1, 0, 2, 3).to(torch.int32).contiguous()


def integer_hyper_decoder(codec: nn.Module) -> IntegerHyperDecoder:
    """The codec's :class:`IntegerHyperDecoder`, built once per state of its weights and tables."""
    state = tuple(int(t._version) for t in (*codec.h_s.parameters(), codec.entropy_bottleneck.quantiles,
                                            codec.entropy_bottleneck._offset, codec.gaussian_conditional.scale_table))
    cached = getattr(codec, "_semlic_integer_hyper", None)
    if cached is None or cached[0] != state:
        cached = (state, IntegerHyperDecoder(codec))
        codec._semlic_integer_hyper = cached
    return cached[1]


@torch.inference_mode()
def hyper_decode(codec: nn.Module, z_string: bytes, z_shape: tuple[int, int], integer: bool = True) -> torch.Tensor:
    """The Gaussian conditional's indexes from the side information alone (``integer``: exact on every
    machine; False: CompressAI's float ``h_s``, for files written before the integer hyper-decoder)."""
    symbols = int(codec.entropy_bottleneck.channels) * int(z_shape[0]) * int(z_shape[1])
    z_hat = codec.entropy_bottleneck.decompress([bounded_string(z_string, symbols)], z_shape)
    if integer:
        return integer_hyper_decoder(codec).indexes(z_hat)
    return codec.gaussian_conditional.build_indexes(codec.h_s(z_hat))


def compress_channels(codec: nn.Module, y_hat: torch.Tensor, indexes: torch.Tensor, channels) -> bytes:
    """The channels ``channels`` of y^ entropy-coded with their own scales (empty list: b"")."""
    channels = list(channels)
    if not channels:
        return b""
    return codec.gaussian_conditional.compress(y_hat[:, channels], indexes[:, channels])[0]


def decompress_channels(codec: nn.Module, string: bytes, indexes: torch.Tensor, channels) -> torch.Tensor:
    """y^ restricted to ``channels`` from their string, (1, len(channels), h, w) float."""
    channels = list(channels)
    if not channels:
        return indexes.new_zeros((1, 0, *indexes.shape[-2:]), dtype=torch.float32)
    selected = indexes[:, channels]
    return codec.gaussian_conditional.decompress([bounded_string(string, selected.numel())], selected, torch.float32)


@torch.inference_mode()
def synthesise(codec: nn.Module, y_hat: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """x^ = g_s(y^) cropped to (H, W), as (H, W, 3) uint8."""
    x_hat = codec.g_s(y_hat).clamp_(0, 1)[..., :size[0], :size[1]]
    return (x_hat[0] * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
