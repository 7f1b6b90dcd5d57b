"""SMapNet training (EDMS, section 2.4, step 2): PSPNet(up(c^)) -> the reference segmentation.

Hoang, Zhou & Fan 2020: minibatch 32, Adam, learning rate 5e-4 with the final layer at a
tenth of it "for stable training", 150 epochs. The paper gives no schedule: the rate is
constant. Loss: cross-entropy of SMapNet's class scores against the reference map (ignore
index 255), in float32.

Input: a pairs directory from :func:`semlic.methods.edms.pairs.generate_pairs` (PSPNet's low-resolution
logits per image, the reference map, ``pairs.json``). Each batch upsamples the logits as
PSPNet does, takes the softmax (SMapNet's input, :mod:`.smapnet`), then applies
the same random crop and flip to probabilities and targets. All pairs must share one size
(the prepared train split is resized to one size).

Runs on :func:`semlic.train_loop.fit` (resumable: batches, crops and flips are a function of
(seed, iteration), so a resumed run equals an uninterrupted one; a Parquet log; a budget in
iterations or seconds). On CUDA: bf16 autocast and channels-last. Output:
``smapnet.safetensors`` (model ``smapnet``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch.nn import functional as F

from ...config_files import dataclass_from_dict, seconds
from ...errors import ConfigError
from ...imageio import load_label_map
from ...model_files import save_model
from ...train_loop import TrainingTask, TrainResult, adam, autocast, channels_last, fit, seeded_permutation_batch
from .matched import upsample_logits
from .pairs import PAIRS_INFO
from .smapnet import SMapNet, smapnet_config

IGNORE_INDEX = 255


@dataclass
class SMapNetTrainConfig:
    preset: str = "paper"                 # models.SMAPNET_PRESETS: paper | tiny
    model: dict = field(default_factory=dict)  # SMapNetConfig overrides (num_classes comes from the pairs)
    epochs: int = 150
    iterations: int | None = None         # overrides epochs when given
    batch_size: int = 32
    lr: float = 5e-4
    final_lr_multiplier: float = 0.1
    crop: int | None = None               # random square crop of the upsampled pair; None: whole images
    flip: bool = True
    seed: int = 0
    checkpoint_every: int = 200
    log_every: int = 1
    amp: bool = True                      # bf16 autocast on CUDA and on CPUs with native bf16
    channels_last: bool = True            # on CUDA
    limit: int | None = None              # use only the first N pairs
    minutes: float | None = None          # a training budget: the model is written when it runs out

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.lr <= 0 or self.final_lr_multiplier <= 0 or self.checkpoint_every < 1:
            raise ConfigError(f"train_smapnet: batch_size and checkpoint_every must be >= 1, lr and "
                              f"final_lr_multiplier > 0; found {self.batch_size}, {self.checkpoint_every}, "
                              f"{self.lr}, {self.final_lr_multiplier}")
        if (self.iterations or self.epochs) < 1:
            raise ConfigError(f"train_smapnet: epochs or iterations must be >= 1, found {self.epochs}, {self.iterations}")

    @classmethod
    def from_dict(cls, data: dict) -> "SMapNetTrainConfig":
        return dataclass_from_dict(cls, data, "train_smapnet")


def load_pairs(pairs_dir: Path, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(N, K, h, w) float16 low-resolution logits, (N, H, W) uint8 targets, and pairs.json."""
    info_path = pairs_dir / PAIRS_INFO
    if not info_path.is_file():
        raise ConfigError(f"{pairs_dir} is not a pairs directory ({PAIRS_INFO} missing): run semlic smap-pairs")
    info = json.loads(info_path.read_text())
    paths = sorted((pairs_dir / "logits").glob("*.safetensors"))[: limit or None]
    if not paths:
        raise ConfigError(f"{pairs_dir}/logits holds no pairs")
    logits, targets = [], []
    for path in paths:
        lowres = load_file(str(path))["logits"]
        target = load_label_map(pairs_dir / "targets" / f"{path.stem}.png")
        if (logits and (lowres.shape != logits[0].shape or target.shape != targets[0].shape)) or \
                lowres.shape[0] != info["num_classes"]:
            raise ConfigError(f"{path.stem}: logits {tuple(lowres.shape)} / target {target.shape} differ from the "
                              "first pair's: SMapNet trains on pairs of one size (the prepared train split)")
        logits.append(lowres)
        targets.append(target)
    return torch.stack(logits), torch.from_numpy(np.stack(targets)), info


def build_optimizer(net: SMapNet, cfg: SMapNetTrainConfig) -> torch.optim.Adam:
    """Adam with two groups: every layer at ``lr``, the output convolution at ``lr * final_lr_multiplier``."""
    final = {id(p) for p in net.final_layer_parameters()}
    return adam([
        {"params": [p for p in net.parameters() if id(p) not in final], "lr": cfg.lr},
        {"params": net.final_layer_parameters(), "lr": cfg.lr * cfg.final_lr_multiplier},
    ])


def _batch(cfg: SMapNetTrainConfig, logits, targets, iteration: int, per_epoch: int, align_corners: bool):
    """Probabilities (B, K, c, c) and int64 targets (B, c, c) of one iteration (seeded by it)."""
    idx = seeded_permutation_batch(cfg.seed, len(logits), cfg.batch_size, iteration, per_epoch).to(logits.device)
    size = targets.shape[-2:]
    probs = torch.softmax(upsample_logits(logits[idx], size, align_corners), 1)
    target = targets[idx].long()
    rng = torch.Generator().manual_seed(cfg.seed * 7_919 + iteration)
    crop = cfg.crop or min(size)
    top = int(torch.randint(0, size[0] - crop + 1, (1,), generator=rng))
    left = int(torch.randint(0, size[1] - crop + 1, (1,), generator=rng))
    probs, target = probs[..., top:top + crop, left:left + crop], target[..., top:top + crop, left:left + crop]
    if cfg.flip:
        flip = (torch.rand(len(idx), generator=rng) < 0.5).to(logits.device)
        probs = torch.where(flip[:, None, None, None], probs.flip(-1), probs)
        target = torch.where(flip[:, None, None], target.flip(-1), target)
    return probs, target


RESUME_FREE = ("checkpoint_every", "log_every", "minutes")
MODEL_FILE = "smapnet.safetensors"


class SMapNetTraining(TrainingTask):
    """SMapNet on a pairs directory, one Adam step at a time."""

    name = "train_smapnet"

    def __init__(self, cfg: SMapNetTrainConfig, logits: torch.Tensor, targets: torch.Tensor, info: dict, device: str):
        self.cfg, self.info, self.device = cfg, info, torch.device(device)
        if cfg.crop is not None and not 1 <= cfg.crop <= min(targets.shape[-2:]):
            raise ConfigError(f"crop {cfg.crop} must be in 1..{min(targets.shape[-2:])} (the pairs' side)")
        self.model_cfg = smapnet_config(cfg.preset, num_classes=info["num_classes"], **cfg.model)
        torch.manual_seed(cfg.seed)
        self.net = SMapNet(self.model_cfg).to(self.device)
        self.memory_format = channels_last(self.device, cfg.channels_last)
        if self.memory_format is torch.channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.opt = build_optimizer(self.net, cfg)
        self.logits, self.targets = logits.to(self.device), targets.to(self.device)
        self.per_epoch = max(1, math.ceil(len(logits) / cfg.batch_size))
        self.total_iterations = cfg.iterations or cfg.epochs * self.per_epoch
        self.images_per_iteration = cfg.batch_size

    def modules(self):
        return {"smapnet": self.net}

    def optimizers(self):
        return {"adam": self.opt}

    def resume_key(self) -> dict:
        return {k: v for k, v in asdict(self.cfg).items() if k not in RESUME_FREE}

    def step(self, iteration: int) -> dict:
        cfg = self.cfg
        probs, target = _batch(cfg, self.logits, self.targets, iteration, self.per_epoch, self.info["align_corners"])
        if self.memory_format is torch.channels_last:
            probs = probs.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, cfg.amp):
            scores = self.net(probs)
        loss = F.cross_entropy(scores.float(), target, ignore_index=IGNORE_INDEX, reduction="sum") \
            / (target != IGNORE_INDEX).sum().clamp(min=1)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"loss": loss.detach(), "epoch": iteration // self.per_epoch}

    def save_model(self, out_dir: Path) -> Path:
        self.net.to(memory_format=torch.contiguous_format)
        path = Path(out_dir) / MODEL_FILE
        save_model(path, self.net, extra={"iterations": self.trained_iterations, "planned_iterations": self.total_iterations,
                                          "pairs_segnet_fingerprint": self.info.get("segnet_fingerprint")})
        return path


def train_smapnet(config: SMapNetTrainConfig | dict, pairs_dir: str | Path, out_dir: str | Path, device: str = "cpu",
                  resume: bool = True, stop_after: int | None = None, time_limit_s: float | None = None,
                  progress: bool = True) -> TrainResult:
    """Train SMapNet on a pairs directory into ``out_dir`` (``smapnet.safetensors`` once complete).

    ``stop_after`` iterations / ``time_limit_s`` seconds: this call's budget (rerun to continue).
    """
    cfg = config if isinstance(config, SMapNetTrainConfig) else SMapNetTrainConfig.from_dict(config)
    logits, targets, info = load_pairs(Path(pairs_dir), cfg.limit)
    task = SMapNetTraining(cfg, logits, targets, info, device)
    return fit(task, out_dir, resume=resume, checkpoint_every=cfg.checkpoint_every, log_every=cfg.log_every,
               stop_after=stop_after, time_limit_s=time_limit_s,
               budget_s=seconds(cfg.minutes), progress=progress)
