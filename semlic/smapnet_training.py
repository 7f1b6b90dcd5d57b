"""SMapNet training (EDMS, section 2.4, step 2): PSPNet(up(c^)) -> the reference segmentation.

Hoang, Zhou & Fan 2020: minibatch 32, Adam, learning rate 5e-4 with the final layer at a
tenth of it "for stable training", 150 epochs. The paper gives no schedule: the rate is
constant. Loss: cross-entropy of SMapNet's class scores against the reference map (ignore
index 255), in float32.

Input: a pairs directory from :func:`semlic.edms.generate_pairs` (PSPNet's low-resolution
logits per image, the reference map, ``pairs.json``). Each batch upsamples the logits as
PSPNet does, takes the softmax (SMapNet's input, :mod:`semlic.models.smapnet`), then applies
the same random crop and flip to probabilities and targets. All pairs must share one size
(the prepared train split is resized to one size).

Resumable like :func:`semlic.training.train_base`: ``train_state.safetensors`` (network,
optimiser, iteration) every ``checkpoint_every`` iterations; batches, crops and flips are a
function of (seed, iteration), so a resumed run equals an uninterrupted one. On CUDA: bf16
autocast and channels-last. Output: ``smapnet.safetensors`` + ``smapnet.json``, ``train_log.parquet``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file
from torch.nn import functional as F
from tqdm.auto import tqdm

from .checkpoint import (flatten_optimizer, load_into, load_state, load_tensors, restore_optimizer, save_model,
                         save_tensors, state_fingerprint)
from .edms import PAIRS_INFO, upsample_logits
from .errors import CheckpointError, ConfigError
from .imageio import load_label_map
from .models import SMapNet, SMapNetConfig, smapnet_config
from .training import write_log

log = logging.getLogger(__name__)
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
    amp: bool = True                      # bf16 autocast on CUDA
    channels_last: bool = True            # on CUDA
    limit: int | None = None              # use only the first N pairs

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.lr <= 0 or self.final_lr_multiplier <= 0 or self.checkpoint_every < 1:
            raise ConfigError(f"train_smapnet: batch_size and checkpoint_every must be >= 1, lr and "
                              f"final_lr_multiplier > 0; found {self.batch_size}, {self.checkpoint_every}, "
                              f"{self.lr}, {self.final_lr_multiplier}")
        if (self.iterations or self.epochs) < 1:
            raise ConfigError(f"train_smapnet: epochs or iterations must be >= 1, found {self.epochs}, {self.iterations}")

    @classmethod
    def from_dict(cls, data: dict) -> "SMapNetTrainConfig":
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            known = sorted(f.name for f in fields(cls))
            raise ConfigError(f"unknown train_smapnet keys: {sorted(unknown)}; known: {known}")
        return cls(**data)


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
    return torch.optim.Adam([
        {"params": [p for p in net.parameters() if id(p) not in final], "lr": cfg.lr},
        {"params": net.final_layer_parameters(), "lr": cfg.lr * cfg.final_lr_multiplier},
    ])


def _batch(cfg: SMapNetTrainConfig, logits, targets, iteration: int, per_epoch: int, align_corners: bool):
    """Probabilities (B, K, c, c) and int64 targets (B, c, c) of one iteration (seeded by it)."""
    epoch, k = divmod(iteration, per_epoch)
    perm = torch.randperm(len(logits), generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch))
    idx = perm[k * cfg.batch_size:(k + 1) * cfg.batch_size] if len(perm) >= cfg.batch_size \
        else perm[torch.arange(cfg.batch_size) % len(perm)]
    idx = idx.to(logits.device)
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


def _save_state(path: Path, net: SMapNet, opt, iteration: int, cfg: SMapNetTrainConfig) -> None:
    tensors = {f"net.{k}": v for k, v in net.state_dict().items()}
    flat, groups = flatten_optimizer("opt", opt)
    save_tensors(path, {**tensors, **flat}, {"iteration": str(iteration), "opt_groups": groups,
                                             "train_config": json.dumps(asdict(cfg), sort_keys=True)})


def _load_state(path: Path, net: SMapNet, opt, cfg: SMapNetTrainConfig) -> int:
    tensors, meta = load_tensors(path)
    saved = json.loads(meta.get("train_config", "{}"))
    if any(saved.get(k) != asdict(cfg)[k] for k in ("preset", "model", "lr", "final_lr_multiplier")):
        raise CheckpointError(f"{path} was made with another SMapNet configuration; delete it to start afresh")
    load_into(net, {k[4:]: v for k, v in tensors.items() if k.startswith("net.")}, str(path))
    restore_optimizer("opt", opt, tensors, meta["opt_groups"])
    return int(meta["iteration"])


def train_smapnet(config: SMapNetTrainConfig | dict, pairs_dir: str | Path, out_dir: str | Path, device: str = "cpu",
                  resume: bool = True, stop_after: int | None = None) -> Path:
    """Train SMapNet on a pairs directory; return the path of ``smapnet.safetensors``.

    ``stop_after``: stop (with a checkpoint) after this many iterations of this call.
    """
    cfg = config if isinstance(config, SMapNetTrainConfig) else SMapNetTrainConfig.from_dict(config)
    out_dir, device = Path(out_dir), torch.device(device)
    logits, targets, info = load_pairs(Path(pairs_dir), cfg.limit)
    if cfg.crop is not None and not 1 <= cfg.crop <= min(targets.shape[-2:]):
        raise ConfigError(f"crop {cfg.crop} must be in 1..{min(targets.shape[-2:])} (the pairs' side)")
    model_cfg: SMapNetConfig = smapnet_config(cfg.preset, num_classes=info["num_classes"], **cfg.model)
    torch.manual_seed(cfg.seed)
    net = SMapNet(model_cfg).to(device)
    cuda = device.type == "cuda"
    if cuda and cfg.channels_last:
        net.to(memory_format=torch.channels_last)
    opt = build_optimizer(net, cfg)
    per_epoch = max(1, math.ceil(len(logits) / cfg.batch_size))
    total = cfg.iterations or cfg.epochs * per_epoch
    state_path, log_path = out_dir / "train_state.safetensors", out_dir / "train_log.parquet"
    start = _load_state(state_path, net, opt, cfg) if (resume and state_path.is_file()) else 0
    rows = []
    if start:
        log.info("resuming from iteration %d of %d (%s)", start, total, state_path)
        if log_path.is_file():
            rows = pd.read_parquet(log_path).query("iteration <= @start").to_dict("records")
    logits, targets = logits.to(device), targets.to(device)
    end = total if stop_after is None else min(total, start + stop_after)
    bar = tqdm(range(start, end), initial=start, total=total, desc="train_smapnet", dynamic_ncols=True)
    t0 = time.perf_counter()
    for it in bar:
        probs, target = _batch(cfg, logits, targets, it, per_epoch, info["align_corners"])
        if cuda and cfg.channels_last:
            probs = probs.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda and cfg.amp):
            scores = net(probs)
        loss = F.cross_entropy(scores.float(), target, ignore_index=IGNORE_INDEX, reduction="sum") \
            / (target != IGNORE_INDEX).sum().clamp(min=1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ips = (it + 1 - start) * cfg.batch_size / max(1e-9, time.perf_counter() - t0)
        rows.append({"iteration": it + 1, "epoch": it // per_epoch, "loss": float(loss.detach()), "images_per_s": ips})
        bar.set_postfix(loss=f"{rows[-1]['loss']:.4f}", ips=f"{ips:.1f}")
        if (it + 1) % cfg.checkpoint_every == 0 and it + 1 < end:
            _save_state(state_path, net, opt, it + 1, cfg)
            write_log(log_path, rows)
    _save_state(state_path, net, opt, end, cfg)
    write_log(log_path, rows)
    model_path = out_dir / "smapnet.safetensors"
    if end >= total:
        net.to(memory_format=torch.contiguous_format)
        save_model(model_path, net.cpu(), "smapnet", model_cfg.to_dict(),
                   extra={"iterations": total, "pairs_segnet_fingerprint": info.get("segnet_fingerprint")})
    return model_path


def load_smapnet(path: str | Path, device: str = "cpu") -> SMapNet:
    """Load a model saved by :func:`train_smapnet`; ``model.fingerprint`` identifies its weights."""
    state, config, _ = load_state(path, "smapnet")
    try:
        net = SMapNet(SMapNetConfig.from_dict(config))
    except (TypeError, ConfigError) as exc:
        raise CheckpointError(f"{path}: bad SMapNet config ({exc})") from exc
    load_into(net, state, str(path))
    net.fingerprint = state_fingerprint(net.state_dict())
    return net.to(device).eval()
