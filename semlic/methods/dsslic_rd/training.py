"""Training the rate-aware base layer: one lambda per run, loss = lambda * 255^2 * MSE(x', x) + bits(y) / pixels.

For each lambda, an :class:`~.model.RDNet` (DSSLIC's generator + EntropyBottleneck) is trained on
the prepared train images and their PSPNet maps (DSSLIC's data, :func:`..dsslic.training.load_training_set`),
with DSSLIC's seeded batches, crops and flips (:class:`..dsslic.training.DSSLICTraining.batch`):

* y = 127.5 CompNet(x, s); the rate is -log2 of the prior's likelihood of y plus uniform noise
  (CompressAI's training path), summed and divided by the batch's pixels (bpp of the compact layer);
* RecNet sees y rounded around the prior's medians with a straight-through gradient: the c^ the
  decoder will decode; x' = RecNet(s', c^) with s' the map the decoder will have (the map itself,
  its subsampled copy for ``map: lossy``, PSPNet's map of up(c^) for ``map: derived``);
* distortion: MSE on [0, 1] pixels, weighted lambda * 255^2 (CompressAI's convention, so the
  lambdas read like its zoo's); the map's bits, where sent, do not depend on the networks and are
  left out of the loss;
* Adam on the networks (DSSLIC's learning rate and schedule; the prior's density at ``prior_lr``,
  on the same schedule), Adam lr ``aux_lr`` on the prior's quantiles (CompressAI's auxiliary loss),
  gradient norm clipped at ``clip_max_norm``.

``init``: a DSSLIC model file (``dsslic.safetensors``) whose CompNet and FineNet start the training
(the reference run's networks, so a budget of minutes refines a trained base layer instead of
starting from noise). Resumable and logged as every semlic training (:func:`semlic.train_loop.fit`).
The run writes a bank of its one level; :func:`merge_levels` makes the bank of every lambda.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.nn import functional as F

from ...config_files import dataclass_from_dict, seconds
from ...errors import ConfigError
from ...model_files import load_model, save_model
from ...train_loop import TrainResult, adam, fit
from ..dsslic.training import DSSLICTrainConfig, DSSLICTraining, learning_rate, load_training_set
from .model import MAP_MODES, RDConfig, RDNet, bank_from_nets

RESUME_FREE = ("checkpoint_every", "log_every", "compile", "minutes")


@dataclass
class RDTrainConfig(DSSLICTrainConfig):
    lmbda: float = 0.01                    # weight of 255^2 * MSE against the compact layer's bpp
    map: str = "lossless"                  # model.MAP_MODES
    map_factor: int = 4                    # lossy: subsampling of the map
    init: str | None = None                # a dsslic.safetensors to start CompNet + FineNet from
    segnet: str | None = None              # map: derived: the PSPNet file both ends run
    prior_lr: float = 1e-3                 # the prior's density (new in a run that starts from DSSLIC: learns faster)
    aux_lr: float = 1e-3
    clip_max_norm: float = 1.0
    gan: bool = False                      # the rate-distortion loss alone (DSSLIC's GAN/VGG terms off)
    lambda_vgg: float = 0.0

    @classmethod
    def from_dict(cls, data: dict) -> "RDTrainConfig":
        return dataclass_from_dict(cls, data, "train_dsslic_rd")



def subsampled_map(seg: torch.Tensor, factor: int) -> torch.Tensor:
    """(N, H, W) labels subsampled by ``factor`` (nearest) and repeated back: the lossy map."""
    if factor == 1:
        return seg
    small = seg[:, ::factor, ::factor]
    return small.repeat_interleave(factor, 1).repeat_interleave(factor, 2)[:, : seg.shape[1], : seg.shape[2]]


class RDTraining(DSSLICTraining):
    """One lambda's RDNet (module docstring)."""

    name = "train_dsslic_rd"

    def __init__(self, cfg: RDTrainConfig, images: torch.Tensor, segs: torch.Tensor, device: str):
        if cfg.map not in MAP_MODES:
            raise ConfigError(f"train_dsslic_rd: map must be one of {', '.join(MAP_MODES)}, got {cfg.map!r}")
        if cfg.lmbda <= 0:
            raise ConfigError(f"train_dsslic_rd: lmbda must be positive, got {cfg.lmbda}")
        self.cfg, self.device = cfg, torch.device(device)
        start = load_model(cfg.init, expect="dsslic") if cfg.init else None
        self.model_cfg = start.config if start is not None else cfg.model_config()   # init: its networks' sizes
        if self.model_cfg.label_nc != cfg.label_nc:
            raise ConfigError(f"train_dsslic_rd: init {cfg.init} takes {self.model_cfg.label_nc} classes, the data "
                              f"has {cfg.label_nc}")
        torch.manual_seed(cfg.seed)
        self.net = RDNet(self.model_cfg).to(self.device)
        if start is not None:
            self.net.generator.load_state_dict(start.state_dict())
        self.segnet = None
        if cfg.map == "derived":
            if not cfg.segnet:
                raise ConfigError("train_dsslic_rd: map: derived needs the PSPNet model file (segnet)")
            self.segnet = load_model(cfg.segnet, self.device, expect="pspnet").eval()
            for p in self.segnet.parameters():
                p.requires_grad_(False)
        prior = [p for n, p in self.net.entropy_bottleneck.named_parameters() if not n.endswith("quantiles")]
        aux = [p for n, p in self.net.named_parameters() if n.endswith(".quantiles")]
        self.opt_g = adam([{"params": list(self.net.generator.parameters()), "lr": cfg.lr},
                           {"params": prior, "lr": cfg.prior_lr}], betas=(cfg.beta1, cfg.beta2))
        self.opt_aux = adam(aux, lr=cfg.aux_lr)
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
        return {"net": self.net}

    def optimizers(self):
        return {"net": self.opt_g, "aux": self.opt_aux}

    def resume_key(self) -> dict:
        return {k: v for k, v in asdict(self.cfg).items() if k not in RESUME_FREE}

    def decoder_map(self, seg: torch.Tensor, c_hat: torch.Tensor) -> torch.Tensor:
        if self.cfg.map == "lossy":
            return subsampled_map(seg, self.cfg.map_factor)
        if self.cfg.map == "derived":
            from .codec import derive_map

            with torch.no_grad():
                labels = derive_map(self.net.generator, self.segnet, c_hat.detach())
                return labels.long().clone()   # a normal tensor, not an inference one
        return seg

    def losses(self, x: torch.Tensor, seg: torch.Tensor) -> dict[str, torch.Tensor]:
        """The rate-distortion loss of a batch (images in [-1, 1], maps (N, H, W))."""
        y = self.net.analyse(x, seg)
        _, likelihoods = self.net.entropy_bottleneck(y)
        c_hat = self.net.quantise(y) / 127.5
        recon = self.net.generator.reconstruct(c_hat, self.decoder_map(seg, c_hat))
        mse = F.mse_loss(recon.float(), x) / 4   # on [0, 1] pixels
        bpp = -torch.log2(likelihoods).sum() / (x.shape[0] * x.shape[-2] * x.shape[-1])
        loss = self.cfg.lmbda * 255 ** 2 * mse + bpp
        return {"loss": loss, "mse": mse, "bpp": bpp}

    def step(self, iteration: int) -> dict:
        cfg = self.cfg
        x, seg = self.batch(iteration)
        lr = learning_rate(cfg, iteration, self.total_iterations)
        generator, prior = self.opt_g.param_groups
        generator["lr"], prior["lr"] = lr, cfg.prior_lr * lr / cfg.lr   # the same schedule
        losses = self.losses(x, seg)
        self.opt_g.zero_grad(set_to_none=True)
        self.opt_aux.zero_grad(set_to_none=True)
        losses["loss"].backward()
        if cfg.clip_max_norm > 0:
            torch.nn.utils.clip_grad_norm_([p for g in self.opt_g.param_groups for p in g["params"]], cfg.clip_max_norm)
        self.opt_g.step()
        aux = self.net.entropy_bottleneck.loss()
        aux.backward()
        self.opt_aux.step()
        psnr = -10 * torch.log10(losses["mse"].detach().clamp_min(1e-10))
        return {**{k: v.detach() for k, v in losses.items()}, "aux": aux.detach(), "psnr": psnr,
                "epoch": iteration // self.per_epoch, "lr": lr}

    def save_model(self, out_dir: Path) -> Path:
        config = RDConfig(net=self.model_cfg.to_dict(), lambdas=(self.cfg.lmbda,), map=self.cfg.map,
                          map_factor=self.cfg.map_factor)
        bank = bank_from_nets([self.net.cpu()], config)
        self.net.to(self.device)
        path = Path(out_dir) / f"{type(bank).registry_name}.safetensors"
        save_model(path, bank, extra={"iterations": self.trained_iterations,
                                      "planned_iterations": self.total_iterations, "lambdas": [self.cfg.lmbda]})
        return path


def train_dsslic_rd(config: RDTrainConfig | dict, image_dir: str | Path, seg_dir: str | Path, out_dir: str | Path,
                    device: str = "cpu", resume: bool = True, stop_after: int | None = None,
                    time_limit_s: float | None = None, progress: bool = True) -> TrainResult:
    """Train one lambda into ``out_dir`` (``<model name>.safetensors``, a bank of one level)."""
    cfg = config if isinstance(config, RDTrainConfig) else RDTrainConfig.from_dict(config)
    images, segs = load_training_set(Path(image_dir), Path(seg_dir), cfg.label_nc, cfg.limit)
    task = RDTraining(cfg, images, segs, device)
    return fit(task, out_dir, resume=resume, checkpoint_every=cfg.checkpoint_every, log_every=cfg.log_every,
               stop_after=stop_after, time_limit_s=time_limit_s,
               budget_s=seconds(cfg.minutes), progress=progress)


def merge_levels(paths, out_path: str | Path):
    """One bank (every lambda, ascending) from the one-level banks of several runs of the same map."""
    from .model import RDBank

    banks = [load_model(p) for p in paths]
    if not banks or not all(isinstance(b, RDBank) for b in banks):
        raise ConfigError(f"merge_levels: expected dsslic_rd model files, got {list(map(str, paths))}")
    first = banks[0].config
    if any(b.config.net != first.net or b.config.map != first.map or b.config.map_factor != first.map_factor
           for b in banks):
        raise ConfigError("merge_levels: the banks differ in network, map or map_factor")
    nets = sorted(((lmbda, net) for b in banks for lmbda, net in zip(b.config.lambdas, b.levels)), key=lambda p: p[0])
    lambdas = [lmbda for lmbda, _ in nets]
    if len(set(lambdas)) != len(lambdas):
        raise ConfigError(f"merge_levels: a lambda is in more than one file: {lambdas}")
    bank = bank_from_nets([net for _, net in nets], RDConfig(net=first.net, lambdas=tuple(lambdas), map=first.map,
                                                               map_factor=first.map_factor))
    save_model(out_path, bank, extra={"lambdas": lambdas})
    return bank
