"""DSSLIC base training: CompNet + FineNet + two-scale discriminators, jointly.

Akbari et al. 2019, section 4, and makbari7/DSSLIC: Adam (lr 2e-4, beta1 0.5) for the
generator and the discriminators; the learning rate is constant, then decays linearly to 0
over the final ``decay_fraction`` of training (paper: the last 50 of 150 epochs); the
perceptual terms (discriminator feature matching, VGG) are dropped for the final
``perceptual_off_fraction`` (paper: the last 50 epochs) to favour PSNR. Generator loss =
LSGAN + lambda_feat * FM + lambda_vgg * VGG + lambda_l1 * L1 + lambda_ssim * (-SSIM);
discriminator loss = 0.5 (real + fake).

One departure, on by default (``quantize_compact``): the compact image is rounded to 8 bits
with a straight-through gradient before FineNet, because the codec runs FineNet on the
decoded 8-bit compact image (REFERENCE: the official code trained and tested on floats).

Data: a prepared directory (``<split>/images/<id>.png``, 256x256 in the paper setting) and
a directory of segmentation maps ``<id>.png`` (PSPNet predictions, as in the paper; or
ground-truth labels). The training set is held in memory as uint8 tensors: batches are
gathered by index on the device, flips are applied on the batch (no per-image Python work).

Resumable: ``train_state.safetensors`` (both networks, both optimisers, the iteration) is
written atomically every ``checkpoint_every`` iterations; a rerun continues from it and,
because the data order and flips are a function of (seed, epoch, iteration), reproduces
the uninterrupted run. Output: ``base.safetensors`` (the generator) + ``base.json``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from .checkpoint import (flatten_optimizer, load_into, load_tensors, restore_optimizer, save_model,
                         save_tensors)
from .errors import CheckpointError, ConfigError
from .imageio import atomic_write_bytes, load_image, load_label_map
from .losses import feature_matching_loss, load_vgg_loss, lsgan_loss, ssim
from .models import DSSLIC, build_discriminator, dsslic_config

log = logging.getLogger(__name__)


@dataclass
class BaseTrainConfig:
    preset: str = "paper"                 # models.PRESETS: paper | small | tiny
    model: dict = field(default_factory=dict)  # DSSLICConfig overrides (label_nc is set from data)
    label_nc: int = 151
    epochs: int = 150
    iterations: int | None = None         # overrides epochs when given
    batch_size: int = 8
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    decay_fraction: float = 1 / 3
    perceptual_off_fraction: float = 1 / 3
    lambda_l1: float = 20.0               # the paper's 2 * lambda, lambda = 10
    lambda_ssim: float = 1.0
    lambda_feat: float = 10.0
    lambda_vgg: float = 10.0
    gan: bool = True
    ndf: int = 64
    n_layers_d: int = 3
    num_d: int = 2
    vgg_weights: str | None = None        # path, "download", or None (VGG term off, with a warning)
    crop: int | None = None               # random square crop (multiple of the model's input multiple)
    flip: bool = True
    quantize_compact: bool = True
    seed: int = 0
    checkpoint_every: int = 200
    amp: bool = True                      # bf16 autocast on CUDA
    channels_last: bool = True            # on CUDA
    compile: bool = False                 # torch.compile the generator (CUDA)
    limit: int | None = None              # use only the first N training images

    @classmethod
    def from_dict(cls, data: dict) -> "BaseTrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown train_base keys: {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)

    def model_config(self):
        return dsslic_config(self.preset, label_nc=self.label_nc, **self.model)


def load_training_set(image_dir: Path, seg_dir: Path, label_nc: int, limit: int | None = None):
    """(N, 3, H, W) uint8 images and (N, H, W) uint8 maps; all images must share one size."""
    paths = sorted(Path(image_dir).glob("*.png"))[: limit or None]
    if not paths:
        raise ConfigError(f"no training images (*.png) in {image_dir}")
    images, segs = [], []
    for p in tqdm(paths, desc="load training set", leave=False):
        seg_path = Path(seg_dir) / p.name
        if not seg_path.is_file():
            raise ConfigError(f"segmentation map {seg_path} missing for training image {p.name}")
        img, seg = load_image(p), load_label_map(seg_path)
        if img.shape[:2] != seg.shape or (images and img.shape != images[0].shape):
            raise ConfigError(f"{p.name}: image {img.shape[:2]} / map {seg.shape}: training images must share one size "
                              "(run the prepare stage, which resizes the training split)")
        if seg.max() >= label_nc:
            raise ConfigError(f"{seg_path}: label {seg.max()} >= label_nc {label_nc}")
        images.append(img)
        segs.append(seg)
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(np.stack(segs))


class _Trainer:
    def __init__(self, cfg: BaseTrainConfig, device: str):
        self.cfg, self.device = cfg, torch.device(device)
        self.model_cfg = cfg.model_config()
        torch.manual_seed(cfg.seed)
        self.generator = DSSLIC(self.model_cfg).to(self.device)
        self.disc = build_discriminator(self.model_cfg, cfg.ndf, cfg.n_layers_d, cfg.num_d).to(self.device) if cfg.gan else None
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
        self.opt_d = (torch.optim.Adam(self.disc.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
                      if self.disc is not None else None)
        self.vgg = load_vgg_loss(cfg.vgg_weights) if cfg.lambda_vgg > 0 else None
        if self.vgg is not None:
            self.vgg.to(self.device)
        cuda = self.device.type == "cuda"
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda and cfg.amp)
        if cuda and cfg.channels_last:
            self.generator.to(memory_format=torch.channels_last)
            if self.disc is not None:
                self.disc.to(memory_format=torch.channels_last)
        self.forward_g = torch.compile(self._forward_g) if (cuda and cfg.compile) else self._forward_g

    def _forward_g(self, x, seg):
        compact = self.generator.compact(x, seg)
        if self.cfg.quantize_compact:  # straight-through 8-bit rounding, as the codec sees it
            q = torch.round((compact.float() + 1) * 127.5).clamp(0, 255) / 127.5 - 1
            compact = compact + (q - compact).detach()
        return self.generator.reconstruct(compact, seg)

    def step(self, x: torch.Tensor, seg: torch.Tensor, lr: float, perceptual: bool) -> dict[str, float]:
        cfg = self.cfg
        for opt in (self.opt_g, self.opt_d):
            if opt is not None:
                for group in opt.param_groups:
                    group["lr"] = lr
        onehot = self.generator.seg_onehot(seg)
        if self.device.type == "cuda" and cfg.channels_last:
            x, onehot = x.contiguous(memory_format=torch.channels_last), onehot.contiguous(memory_format=torch.channels_last)
        losses: dict[str, torch.Tensor] = {}
        with self.autocast:
            recon = self.forward_g(x, seg)
            losses["l1"] = cfg.lambda_l1 * F.l1_loss(recon.float(), x)
            losses["ssim"] = -cfg.lambda_ssim * ssim(recon.float(), x)
            if self.disc is not None:
                pred_fake = self.disc(torch.cat([onehot, recon], 1))
                pred_real = self.disc(torch.cat([onehot, x], 1))
                losses["g_gan"] = lsgan_loss(pred_fake, True)
                if perceptual and cfg.lambda_feat > 0:
                    losses["feat"] = cfg.lambda_feat * feature_matching_loss(pred_fake, pred_real, cfg.n_layers_d)
            if perceptual and self.vgg is not None:
                losses["vgg"] = cfg.lambda_vgg * self.vgg(recon.float(), x)
        loss_g = sum(losses.values())
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        out = {k: float(v.detach()) for k, v in losses.items()}
        out["g_total"] = float(loss_g.detach())
        if self.disc is not None:
            with self.autocast:
                pred_fake = self.disc(torch.cat([onehot, recon.detach()], 1))
                pred_real = self.disc(torch.cat([onehot, x], 1))
                loss_d = 0.5 * (lsgan_loss(pred_fake, False) + lsgan_loss(pred_real, True))
            self.opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            self.opt_d.step()
            out["d"] = float(loss_d.detach())
        return out

    # --- checkpoints ---------------------------------------------------------------------
    def save_state(self, path: Path, iteration: int) -> None:
        tensors = {f"g.{k}": v for k, v in self.generator.state_dict().items()}
        opt_g, groups_g = flatten_optimizer("opt_g", self.opt_g)
        tensors.update(opt_g)
        meta = {"iteration": str(iteration), "opt_g_groups": groups_g,
                "train_config": json.dumps(asdict(self.cfg), sort_keys=True)}
        if self.disc is not None:
            tensors.update({f"d.{k}": v for k, v in self.disc.state_dict().items()})
            opt_d, groups_d = flatten_optimizer("opt_d", self.opt_d)
            tensors.update(opt_d)
            meta["opt_d_groups"] = groups_d
        save_tensors(path, tensors, meta)

    def load_state(self, path: Path) -> int:
        tensors, meta = load_tensors(path)
        saved = json.loads(meta.get("train_config", "{}"))
        mine = asdict(self.cfg)
        keys = ("preset", "model", "label_nc", "gan", "ndf", "n_layers_d", "num_d")
        if any(saved.get(k) != mine[k] for k in keys):
            raise CheckpointError(f"{path} was made with another model configuration; "
                                  "delete it to start afresh or restore the configuration")
        load_into(self.generator, {k[2:]: v for k, v in tensors.items() if k.startswith("g.")}, str(path))
        restore_optimizer("opt_g", self.opt_g, tensors, meta["opt_g_groups"])
        if self.disc is not None:
            load_into(self.disc, {k[2:]: v for k, v in tensors.items() if k.startswith("d.")}, str(path))
            restore_optimizer("opt_d", self.opt_d, tensors, meta["opt_d_groups"])
        return int(meta["iteration"])


def learning_rate(cfg: BaseTrainConfig, iteration: int, total: int) -> float:
    """Constant, then linear decay to 0 over the final ``decay_fraction`` of ``total``."""
    decay_start = int(round(total * (1 - cfg.decay_fraction)))
    if iteration < decay_start:
        return cfg.lr
    return cfg.lr * max(0.0, 1 - (iteration - decay_start) / max(1, total - decay_start))


def _batch_indices(cfg: BaseTrainConfig, n: int, iteration: int, per_epoch: int) -> torch.Tensor:
    """Indices of one batch: a seeded permutation per epoch (a function of the iteration only)."""
    epoch, k = divmod(iteration, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch))
    b = cfg.batch_size
    return perm[k * b: (k + 1) * b] if n >= b else perm[torch.arange(b) % n]


def train_base(config: BaseTrainConfig | dict, image_dir: str | Path, seg_dir: str | Path, out_dir: str | Path,
               device: str = "cpu", resume: bool = True, stop_after: int | None = None) -> Path:
    """Train the DSSLIC generator; return the path of ``base.safetensors``.

    ``image_dir``: training images ``<id>.png`` (one size); ``seg_dir``: maps ``<id>.png``.
    ``stop_after``: stop (with a checkpoint) after this many iterations of this call.
    """
    cfg = config if isinstance(config, BaseTrainConfig) else BaseTrainConfig.from_dict(config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images, segs = load_training_set(Path(image_dir), Path(seg_dir), cfg.label_nc, cfg.limit)
    trainer = _Trainer(cfg, device)
    multiple = trainer.model_cfg.multiple
    crop = cfg.crop or min(images.shape[-2:])
    if crop % multiple or crop > min(images.shape[-2:]):
        raise ConfigError(f"crop {crop} must be a multiple of {multiple} and at most the image side {min(images.shape[-2:])}")
    per_epoch = max(1, math.ceil(len(images) / cfg.batch_size))
    total = cfg.iterations or cfg.epochs * per_epoch
    state_path = out_dir / "train_state.safetensors"
    start = trainer.load_state(state_path) if (resume and state_path.is_file()) else 0
    if start:
        log.info("resuming from iteration %d of %d (%s)", start, total, state_path)
    images, segs = images.to(trainer.device), segs.to(trainer.device)
    log_path, log_rows = out_dir / "train_log.parquet", _read_log(out_dir / "train_log.parquet", start)
    end = total if stop_after is None else min(total, start + stop_after)
    bar = tqdm(range(start, end), initial=start, total=total, desc="train_base", dynamic_ncols=True)
    t0, seen = time.perf_counter(), 0
    for it in bar:
        idx = _batch_indices(cfg, len(images), it, per_epoch).to(trainer.device)
        rng = torch.Generator().manual_seed(cfg.seed * 7_919 + it)
        x, s = images[idx], segs[idx]
        h, w = x.shape[-2:]
        if crop < h or crop < w:
            top = int(torch.randint(0, h - crop + 1, (1,), generator=rng))
            left = int(torch.randint(0, w - crop + 1, (1,), generator=rng))
            x, s = x[..., top:top + crop, left:left + crop], s[..., top:top + crop, left:left + crop]
        if cfg.flip:
            flip = (torch.rand(len(idx), generator=rng) < 0.5).to(trainer.device)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            s = torch.where(flip[:, None, None], s.flip(-1), s)
        x = x.float() / 127.5 - 1
        lr = learning_rate(cfg, it, total)
        perceptual = it < int(round(total * (1 - cfg.perceptual_off_fraction)))
        losses = trainer.step(x, s, lr, perceptual)
        seen += len(idx)
        ips = seen / max(1e-9, time.perf_counter() - t0)
        log_rows.append({"iteration": it + 1, "epoch": it // per_epoch, "lr": lr, "perceptual": perceptual,
                         "images_per_s": ips, **losses})
        bar.set_postfix(g=f"{losses['g_total']:.3f}", l1=f"{losses['l1']:.3f}", ips=f"{ips:.1f}")
        if (it + 1) % cfg.checkpoint_every == 0 and it + 1 < end:
            trainer.save_state(state_path, it + 1)
            write_log(log_path, log_rows)
    trainer.save_state(state_path, end)
    write_log(log_path, log_rows)
    model_path = out_dir / "base.safetensors"
    if end >= total:
        trainer.generator.to(memory_format=torch.contiguous_format)
        save_model(model_path, trainer.generator.cpu(), "dsslic", trainer.model_cfg.to_dict(),
                   extra={"iterations": total})
    return model_path


def _read_log(path: Path, upto: int) -> list[dict]:
    if not path.is_file() or upto == 0:
        return []
    import pandas as pd

    df = pd.read_parquet(path)
    return df[df["iteration"] <= upto].to_dict("records")


def write_log(path: Path, rows: list[dict]) -> None:
    """A training log (one row per iteration) as Parquet, written atomically."""
    import io

    import pandas as pd

    buf = io.BytesIO()
    pd.DataFrame(rows).to_parquet(buf, index=False)
    atomic_write_bytes(path, buf.getvalue())


def load_dsslic(path: str | Path, device: str = "cpu") -> DSSLIC:
    """Load a generator saved by :func:`train_base`; ``model.fingerprint`` identifies its weights."""
    from .checkpoint import load_state, state_fingerprint
    from .models import DSSLICConfig

    state, config, _ = load_state(path, "dsslic")
    try:
        model = DSSLIC(DSSLICConfig.from_dict(config))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: bad DSSLIC config ({exc})") from exc
    load_into(model, state, str(path))
    model.fingerprint = state_fingerprint(model.state_dict())
    return model.to(device).eval()
