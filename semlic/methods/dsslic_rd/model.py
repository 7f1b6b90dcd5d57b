"""The rate-aware base layer: DSSLIC's CompNet + RecNet with a learned entropy model on the compact image.

One network per rate point (:class:`RDNet`): DSSLIC's generator (its CompNet and FineNet, any
preset) and a CompressAI EntropyBottleneck (a factorised prior, one density per channel) over
``y = SCALE * CompNet(x, s)``. The codec rounds ``y`` around the prior's medians and range-codes
it; RecNet sees ``c^ = y^ / SCALE``. In training the rate is the prior's likelihood of ``y`` plus
uniform noise, and RecNet sees ``y`` rounded with a straight-through gradient (what the decoder
will see). SCALE = 127.5 makes the step of the rounding the 8-bit step of DSSLIC's compact image:
the network lowers the rate by what it puts in ``y``, not by a coarser grid.

A model file holds a bank (:class:`RDBank`): one RDNet per trained lambda, sorted by lambda (a
file's ``level`` is its index), with the entropy tables CompressAI's ``update()`` computes, so
both ends code with the same tables. The map a bank was trained with is part of its registered
name: ``dsslic_rd`` (the map sent losslessly), ``dsslic_rd_lossy`` (the map subsampled by
``map_factor`` and sent losslessly), ``dsslic_rd_derived`` (PSPNet's map of up(c^), derived at
both ends: no map bits).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ...config_files import dataclass_from_dict
from ...errors import ConfigError
from ...model_files import register_model
from ..dsslic.model import DSSLIC, DSSLICConfig, dsslic_config
from ...entropy import compressai_models

SCALE = 127.5          # y = SCALE * CompNet(x, s): integer steps of y are 8-bit steps of the compact image
MAP_MODES = ("lossless", "lossy", "derived")
_TABLE_DTYPES = {"float32": torch.float32, "int32": torch.int32, "int64": torch.int64}


def table_buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    """The entropy bottlenecks' table buffers (CompressAI's update() resizes them)."""
    names = ("_offset", "_quantized_cdf", "_cdf_length")
    return {k: v for k, v in module.state_dict().items() if k.rsplit(".", 1)[-1] in names}


@dataclass
class RDConfig:
    net: dict = field(default_factory=dict)        # DSSLICConfig fields of every level's generator
    lambdas: tuple = (0.01,)                       # one level per lambda, ascending
    map: str = "lossless"                          # MAP_MODES
    map_factor: int = 4                            # lossy: the map is subsampled by this factor
    tables: dict = field(default_factory=dict)     # entropy-table buffer -> [dtype, shape] (set when saved)

    def __post_init__(self) -> None:
        self.lambdas = tuple(float(v) for v in self.lambdas)
        if not self.lambdas or list(self.lambdas) != sorted(set(self.lambdas)) or min(self.lambdas) <= 0:
            raise ConfigError(f"dsslic_rd: lambdas must be positive, distinct and ascending, got {self.lambdas}")
        if self.map not in MAP_MODES:
            raise ConfigError(f"dsslic_rd: map must be one of {', '.join(MAP_MODES)}, got {self.map!r}")
        if self.map_factor < 1 or self.map_factor > 64:
            raise ConfigError(f"dsslic_rd: map_factor must be in 1..64, got {self.map_factor}")

    @property
    def generator(self) -> DSSLICConfig:
        return DSSLICConfig.from_dict(self.net) if self.net else DSSLICConfig()

    # the codec reads these like a DSSLIC model's config
    @property
    def multiple(self) -> int:
        return self.generator.multiple

    @property
    def alpha(self) -> int:
        return self.generator.alpha

    @property
    def label_nc(self) -> int:
        return self.generator.label_nc

    def to_dict(self) -> dict:
        return {"net": dict(self.net), "lambdas": list(self.lambdas), "map": self.map, "map_factor": self.map_factor,
                "tables": self.tables}

    @classmethod
    def from_dict(cls, data: dict) -> "RDConfig":
        return dataclass_from_dict(cls, data, "dsslic_rd")


def rd_config(preset: str = "tiny", label_nc: int = 8, *, lambdas=(0.01,), map: str = "lossless",
              map_factor: int = 4, **overrides) -> RDConfig:
    """A bank config whose generators are DSSLIC's ``preset``."""
    return RDConfig(net=dsslic_config(preset, label_nc, **overrides).to_dict(), lambdas=tuple(lambdas), map=map,
                    map_factor=map_factor)


class RDNet(nn.Module):
    """One rate point: DSSLIC's generator + an EntropyBottleneck over its compact image."""

    def __init__(self, config: DSSLICConfig):
        super().__init__()
        self.generator = DSSLIC(config)
        self.entropy_bottleneck = _entropy_bottleneck(config.image_nc)

    def analyse(self, image: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        """y = SCALE * CompNet(x, s), (N, 3, H / alpha, W / alpha)."""
        return SCALE * self.generator.compact(image, seg)

    def medians(self) -> torch.Tensor:
        """(1, C, 1, 1): the prior's medians, around which y is rounded."""
        return self.entropy_bottleneck._get_medians().detach()

    def quantise(self, y: torch.Tensor) -> torch.Tensor:
        """y^ = round(y - median) + median, with a straight-through gradient (the decoder's y^)."""
        medians = self.medians()
        return y + (torch.round(y - medians) + medians - y).detach()


def _entropy_bottleneck(channels: int) -> nn.Module:
    compressai_models()   # the clear error when CompressAI is missing
    from compressai.entropy_models import EntropyBottleneck

    return EntropyBottleneck(channels, init_scale=SCALE)   # its first density spans y's range, not +-10


class RDBank(nn.Module):
    """One :class:`RDNet` per lambda (module docstring); the codec reads ``config`` like DSSLIC's."""

    def __init__(self, config: RDConfig):
        super().__init__()
        self.config = config
        generator = config.generator
        self.levels = nn.ModuleList([RDNet(generator) for _ in config.lambdas])
        for name, (dtype, shape) in config.tables.items():   # sized to fit the file's tables
            owner, attr = name.rsplit(".", 1)
            self.get_submodule(owner)._buffers[attr] = torch.zeros(shape, dtype=_TABLE_DTYPES[dtype])

    def level(self, index: int) -> RDNet:
        if not 0 <= int(index) < len(self.levels):
            raise ConfigError(f"this {type(self).registry_name} model has levels 0..{len(self.levels) - 1} "
                              f"(lambdas {list(self.config.lambdas)}), not {index}")
        return self.levels[int(index)]

    def update_tables(self) -> None:
        """Compute every level's entropy tables (CompressAI's update) and record their shapes."""
        for net in self.levels:   # the quantiles from the learned density: the tables cover what it covers
            net.entropy_bottleneck.update(force=True, update_quantiles=True)
        self.config.tables = {k: [str(v.dtype).removeprefix("torch."), list(v.shape)]
                              for k, v in table_buffers(self).items()}

    def ready(self) -> bool:
        return all(v.numel() > 0 for v in table_buffers(self).values())


@register_model("dsslic_rd", RDConfig, preset=rd_config)
class RDBankLossless(RDBank):
    """Banks trained with the map sent losslessly (method ``dsslic_rd``)."""

    map_mode = "lossless"


@register_model("dsslic_rd_lossy", RDConfig, preset=lambda *a, **k: rd_config(*a, **{"map": "lossy", **k}))
class RDBankLossy(RDBank):
    """Banks trained with the map subsampled by ``map_factor`` (method ``dsslic_rd_lossy``)."""

    map_mode = "lossy"


@register_model("dsslic_rd_derived", RDConfig, preset=lambda *a, **k: rd_config(*a, **{"map": "derived", **k}))
class RDBankDerived(RDBank):
    """Banks trained with PSPNet's map of up(c^) (method ``dsslic_rd_derived``)."""

    map_mode = "derived"


BANKS = {cls.map_mode: cls for cls in (RDBankLossless, RDBankLossy, RDBankDerived)}


def bank_class(map_mode: str) -> type[RDBank]:
    if map_mode not in BANKS:
        raise ConfigError(f"dsslic_rd: map must be one of {', '.join(MAP_MODES)}, got {map_mode!r}")
    return BANKS[map_mode]


def bank_from_nets(nets: list[RDNet], config: RDConfig) -> RDBank:
    """A bank holding trained nets (one per lambda of ``config``, in order), tables computed."""
    if len(nets) != len(config.lambdas):
        raise ConfigError(f"{len(nets)} networks for {len(config.lambdas)} lambdas")
    bank = bank_class(config.map)(RDConfig(net=config.net, lambdas=config.lambdas, map=config.map,
                                           map_factor=config.map_factor))
    for target, net in zip(bank.levels, nets):   # the weights; the tables are recomputed from the quantiles
        tables = {k for k in table_buffers(net)}
        target.load_state_dict({k: v for k, v in net.state_dict().items() if k not in tables}, strict=False)
    bank.update_tables()
    return bank.eval()
