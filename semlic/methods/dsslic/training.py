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

Runs on :func:`semlic.train_loop.fit`: resumable (``train_state.safetensors``; the data
order, crops and flips are a function of (seed, epoch, iteration), so a resumed run is the
uninterrupted one), a Parquet log, a budget in iterations or seconds. Output:
``dsslic.safetensors`` (the generator: CompNet + FineNet), loaded by
:func:`semlic.model_files.load_model`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from ...config_files import dataclass_from_dict, seconds
from ...errors import ConfigError
from ...imageio import load_image, load_label_map
from ...model_files import save_model
from ...nn.losses import feature_matching_loss, load_vgg_loss, lsgan_loss, ssim
from ...train_loop import TrainingTask, TrainResult, adam, autocast, channels_last, fit, seeded_permutation_batch
from .model import DSSLIC, DSSLICNoSeg, build_discriminator, dsslic_config

MODEL_FILE = "dsslic.safetensors"
NOSEG_MODEL_FILE = "dsslic_noseg.safetensors"
#: Settings that do not change the result: they may differ between a run and its resumption.
RESUME_FREE = ("checkpoint_every", "log_every", "compile", "minutes")


@dataclass
class DSSLICTrainConfig:
    preset: str = "paper"                 # model.PRESETS: paper | small | tiny
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
    vgg_weights: str | None = "auto"      # auto (weights/lpips_vgg.safetensors if present), a path, "download",
                                          # or None (VGG term off, with a warning)
    crop: int | None = None               # random square crop (multiple of the model's input multiple)
    flip: bool = True
    quantize_compact: bool = True
    seed: int = 0
    checkpoint_every: int = 200
    log_every: int = 1
    amp: bool = True                      # bf16 autocast on CUDA and on CPUs with native bf16
    channels_last: bool = True            # on CUDA
    compile: bool = False                 # torch.compile the generator (CUDA)
    limit: int | None = None              # use only the first N training images
    minutes: float | None = None          # a training budget: the model is written when it runs out
    segmentation: bool = True             # false: the paper's noSeg ablation (no map in, label_nc 1)

    @classmethod
    def from_dict(cls, data: dict) -> "DSSLICTrainConfig":
        return dataclass_from_dict(cls, data, "train_dsslic")

    def model_config(self):
        return dsslic_config(self.preset, label_nc=self.label_nc if self.segmentation else 1, **self.model)


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


def learning_rate(cfg: DSSLICTrainConfig, iteration: int, total: int) -> float:
    """Constant, then linear decay to 0 over the final ``decay_fraction`` of ``total``."""
    decay_start = int(round(total * (1 - cfg.decay_fraction)))
    if iteration < decay_start:
        return cfg.lr
    return cfg.lr * max(0.0, 1 - (iteration - decay_start) / max(1, total - decay_start))


class DSSLICTraining(TrainingTask):
    """CompNet + FineNet (the generator) and the two-scale discriminators, one step at a time."""

    name = "train_dsslic"

    def __init__(self, cfg: DSSLICTrainConfig, images: torch.Tensor, segs: torch.Tensor, device: str):
        self.cfg, self.device = cfg, torch.device(device)
        self.model_cfg = cfg.model_config()
        torch.manual_seed(cfg.seed)
        self.generator = (DSSLIC if cfg.segmentation else DSSLICNoSeg)(self.model_cfg).to(self.device)
        self.disc = build_discriminator(self.model_cfg, cfg.ndf, cfg.n_layers_d, cfg.num_d).to(self.device) if cfg.gan else None
        self.opt_g = adam(self.generator.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
        self.opt_d = (adam(self.disc.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
                      if self.disc is not None else None)
        self.vgg = load_vgg_loss(cfg.vgg_weights) if cfg.lambda_vgg > 0 else None
        if self.vgg is not None:
            self.vgg.to(self.device)
        self.memory_format = channels_last(self.device, cfg.channels_last)
        if self.memory_format is torch.channels_last:
            self.generator.to(memory_format=torch.channels_last)
            if self.disc is not None:
                self.disc.to(memory_format=torch.channels_last)
        cuda = self.device.type == "cuda"
        self.forward_g = torch.compile(self._forward_g) if (cuda and cfg.compile) else self._forward_g
        multiple = self.model_cfg.multiple
        self.crop = cfg.crop or min(images.shape[-2:])
        if self.crop % multiple or self.crop > min(images.shape[-2:]):
            raise ConfigError(f"crop {self.crop} must be a multiple of {multiple} and at most the image side "
                              f"{min(images.shape[-2:])}")
        self.images, self.segs = images.to(self.device), segs.to(self.device)
        self.per_epoch = max(1, math.ceil(len(images) / cfg.batch_size))
        self.total_iterations = cfg.iterations or cfg.epochs * self.per_epoch
        self.images_per_iteration = cfg.batch_size

    def modules(self):
        return {"generator": self.generator, **({"discriminator": self.disc} if self.disc is not None else {})}

    def optimizers(self):
        return {"generator": self.opt_g, **({"discriminator": self.opt_d} if self.opt_d is not None else {})}

    def resume_key(self) -> dict:
        return {k: v for k, v in asdict(self.cfg).items() if k not in RESUME_FREE}

    def _forward_g(self, x, seg):
        compact = self.generator.compact(x, seg)
        if self.cfg.quantize_compact:  # straight-through 8-bit rounding, as the codec sees it
            q = torch.round((compact.float() + 1) * 127.5).clamp(0, 255) / 127.5 - 1
            compact = compact + (q - compact).detach()
        return self.generator.reconstruct(compact, seg)

    def batch(self, iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Images in [-1, 1] and maps of one iteration: order, crop and flips seeded by it."""
        cfg = self.cfg
        idx = seeded_permutation_batch(cfg.seed, len(self.images), cfg.batch_size, iteration,
                                       self.per_epoch).to(self.device)
        rng = torch.Generator().manual_seed(cfg.seed * 7_919 + iteration)
        x, s = self.images[idx], self.segs[idx]
        h, w = x.shape[-2:]
        crop = self.crop
        if crop < h or crop < w:
            top = int(torch.randint(0, h - crop + 1, (1,), generator=rng))
            left = int(torch.randint(0, w - crop + 1, (1,), generator=rng))
            x, s = x[..., top:top + crop, left:left + crop], s[..., top:top + crop, left:left + crop]
        if cfg.flip:
            flip = (torch.rand(len(idx), generator=rng) < 0.5).to(self.device)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            s = torch.where(flip[:, None, None], s.flip(-1), s)
        return x.float() / 127.5 - 1, s

    def step(self, iteration: int) -> dict:
        cfg = self.cfg
        x, seg = self.batch(iteration)
        lr = learning_rate(cfg, iteration, self.total_iterations)
        perceptual = iteration < int(round(self.total_iterations * (1 - cfg.perceptual_off_fraction)))
        for opt in (self.opt_g, self.opt_d):
            if opt is not None:
                for group in opt.param_groups:
                    group["lr"] = lr
        onehot = self.generator.seg_onehot(seg)
        if self.memory_format is torch.channels_last:
            x, onehot = x.contiguous(memory_format=torch.channels_last), onehot.contiguous(memory_format=torch.channels_last)
        losses: dict[str, torch.Tensor] = {}
        amp = autocast(self.device, cfg.amp)
        with amp:
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
        out: dict = {k: v.detach() for k, v in losses.items()}
        out["g_total"] = loss_g.detach()
        if self.disc is not None:
            with amp:
                pred_fake = self.disc(torch.cat([onehot, recon.detach()], 1))
                pred_real = self.disc(torch.cat([onehot, x], 1))
                loss_d = 0.5 * (lsgan_loss(pred_fake, False) + lsgan_loss(pred_real, True))
            self.opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            self.opt_d.step()
            out["d"] = loss_d.detach()
        out.update(epoch=iteration // self.per_epoch, lr=lr, perceptual=float(perceptual))
        return out

    def save_model(self, out_dir: Path) -> Path:
        self.generator.to(memory_format=torch.contiguous_format)
        path = Path(out_dir) / (MODEL_FILE if self.cfg.segmentation else NOSEG_MODEL_FILE)
        save_model(path, self.generator,
                   extra={"iterations": self.trained_iterations, "planned_iterations": self.total_iterations})
        self.generator.to(memory_format=self.memory_format)
        return path


def train_dsslic(config: DSSLICTrainConfig | dict, image_dir: str | Path, seg_dir: str | Path, out_dir: str | Path,
                 device: str = "cpu", resume: bool = True, stop_after: int | None = None,
                 time_limit_s: float | None = None, progress: bool = True) -> TrainResult:
    """Train the DSSLIC generator into ``out_dir`` (``dsslic.safetensors`` once complete).

    ``image_dir``: training images ``<id>.png`` (one size); ``seg_dir``: maps ``<id>.png``.
    ``stop_after`` iterations / ``time_limit_s`` seconds: this call's budget (state saved; rerun
    to continue).
    """
    cfg = config if isinstance(config, DSSLICTrainConfig) else DSSLICTrainConfig.from_dict(config)
    images, segs = load_training_set(Path(image_dir), Path(seg_dir), cfg.label_nc, cfg.limit)
    if not cfg.segmentation:   # noSeg: the networks see one constant class (no segmentation information)
        segs = torch.zeros_like(segs)
    task = DSSLICTraining(cfg, images, segs, device)
    return fit(task, out_dir, resume=resume, checkpoint_every=cfg.checkpoint_every, log_every=cfg.log_every,
               stop_after=stop_after, time_limit_s=time_limit_s,
               budget_s=seconds(cfg.minutes), progress=progress)
