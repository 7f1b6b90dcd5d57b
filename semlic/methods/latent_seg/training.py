"""Training of the compressed-domain system, each part on :func:`semlic.train_loop.fit`.

1. The hyperprior, one quality per run (:class:`HyperpriorTraining`: CompressAI's examples/train.py); the runs'
   files merge into one bank (:func:`.hyperprior.merge_banks`).
2. The teacher: DeepLabv3 on raw images (random square crops, flips), cross-entropy, Adam lr
   1e-3 dropping to 1e-4 for the last quarter of the iterations (the paper's 400 epochs with a
   drop after 300).
3. The students, per quality, with the codec and the teacher frozen: loss = CE(student(y^),
   labels) + ``lambda_kd`` (1.0) * MSE(F, F_gt), F_gt the teacher's first two layers on the
   image; Adam 1e-3 -> 1e-4 for the last quarter. Their segmentation layers start from the
   teacher's. y^ and F_gt are computed once per image (the whole image, padded to a multiple
   of 64, as the encoder sees it) and crops are cut from them at positions on the latent grid
   (multiples of 16 pixels), so a student trains on exactly the latents the codec sends. No
   flips: a flipped image's latents are not the flipped latents.
4. Static selection (:func:`selection_counts`, :func:`most_selected`): the dynamic student's
   gate runs over every training image; the N channels it selects most often (ties: the higher
   summed selection probability) are the static student's channels. The dynamic student's
   loss adds ``lambda_gate`` x the share of channels selected (DCTNet's penalty: without it
   nothing asks the gate to drop a channel) and its gate learns at ``gate_lr_scale`` x lr.

Batches and crops are functions of (seed, iteration): a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from ...config_files import dataclass_from_dict, seconds
from ...entropy import compressai_models
from ...errors import ConfigError
from ...model_files import save_model
from ...segnet.prepared import load_labelled
from ...train_loop import TrainingTask, adam, channels_last, fit, seeded_permutation_batch
from .hyperprior import HYPERPRIOR_FILE, LAMBDAS, MULTIPLE, bank_from_codecs, check_quality, pad, to_unit, zoo_widths
from .networks import DeepLabV3, LatentSegNet, StudentConfig, deeplab_config, features_rectified, normalise

TEACHER_FILE = "deeplabv3.safetensors"
RESUME_FREE = ("checkpoint_every", "log_every", "minutes")
LATENT_STRIDE = 16


def step_lr(lr: float, iteration: int, total: int, final_fraction: float = 0.25, factor: float = 0.1) -> float:
    """``lr``, then ``lr * factor`` for the last ``final_fraction`` of the iterations."""
    return lr * factor if iteration >= math.ceil(total * (1 - final_fraction)) else lr


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("scale", 1.0)


# --- 1. the hyperprior (CompressAI's examples/train.py) -----------------
@dataclass
class HyperpriorTrainConfig:
    quality: int = 3
    widths: list | None = None       # [N, M]; None: CompressAI's zoo widths for the quality
    lmbda: float | None = None       # None: the zoo's lambda for the quality
    iterations: int = 1000
    minutes: float | None = None     # a training budget: the model is written when it runs out
    batch_size: int = 8
    crop: int = 256                  # random square crops (CompressAI trains on 256x256 patches)
    lr: float = 1e-4
    aux_lr: float = 1e-3
    clip_max_norm: float = 1.0
    flip: bool = True
    seed: int = 0
    checkpoint_every: int = 200
    log_every: int = 10

    def __post_init__(self) -> None:
        self.quality = check_quality(self.quality)
        if self.crop % MULTIPLE and self.crop % 16:
            raise ConfigError(f"hyperprior training: crop {self.crop} must be a multiple of 16")

    @property
    def lambda_(self) -> float:
        return LAMBDAS[self.quality] if self.lmbda is None else float(self.lmbda)

    @classmethod
    def from_dict(cls, data: dict) -> "HyperpriorTrainConfig":
        return dataclass_from_dict(cls, data, "hyperprior training")


def rate_distortion(out: dict, target: torch.Tensor, lmbda: float) -> dict[str, torch.Tensor]:
    """CompressAI's RateDistortionLoss (MSE): bpp, mse and lambda * 255^2 * mse + bpp."""
    n, _, h, w = target.shape
    bpp = sum(torch.log(lk).sum() for lk in out["likelihoods"].values()) / (-math.log(2) * n * h * w)
    mse = F.mse_loss(out["x_hat"], target)
    return {"bpp": bpp, "mse": mse, "loss": lmbda * 255 ** 2 * mse + bpp}


def random_crops(images: torch.Tensor, seed: int, iteration: int, crop: int, flip: bool) -> torch.Tensor:
    """A square crop per image (uint8, padded when the image is smaller), seeded by the iteration."""
    rng = torch.Generator().manual_seed(seed * 7_919 + iteration)
    if min(images.shape[-2:]) < crop:
        images = pad(images, crop)
    h, w = images.shape[-2:]
    out = []
    for image in images:
        top = int(torch.randint(0, h - crop + 1, (1,), generator=rng))
        left = int(torch.randint(0, w - crop + 1, (1,), generator=rng))
        patch = image[:, top:top + crop, left:left + crop]
        if flip and bool(torch.rand(1, generator=rng) < 0.5):
            patch = patch.flip(-1)
        out.append(patch)
    return torch.stack(out)


class HyperpriorTraining(TrainingTask):
    """One quality of the hyperprior, CompressAI's examples/train.py recipe."""

    name = "train_hyperprior"

    def __init__(self, cfg: HyperpriorTrainConfig, images: torch.Tensor, device: str = "cpu"):
        torch.manual_seed(cfg.seed)
        self.cfg, self.device = cfg, torch.device(device)
        widths = cfg.widths or zoo_widths(cfg.quality)
        self.codec = compressai_models().ScaleHyperprior(*widths).to(self.device)
        main = [p for n, p in self.codec.named_parameters() if not n.endswith(".quantiles")]
        aux = [p for n, p in self.codec.named_parameters() if n.endswith(".quantiles")]
        self.optimizer = adam(main, lr=cfg.lr)
        self.aux_optimizer = adam(aux, lr=cfg.aux_lr)
        self.images = images
        self.per_epoch = max(1, math.ceil(len(images) / cfg.batch_size))
        self.total_iterations, self.images_per_iteration = cfg.iterations, cfg.batch_size

    def modules(self):
        return {"codec": self.codec}

    def optimizers(self):
        return {"main": self.optimizer, "aux": self.aux_optimizer}

    def resume_key(self) -> dict:
        return {k: v for k, v in asdict(self.cfg).items() if k not in RESUME_FREE}

    def step(self, iteration: int) -> dict:
        cfg = self.cfg
        idx = seeded_permutation_batch(cfg.seed, len(self.images), cfg.batch_size, iteration, self.per_epoch)
        x = to_unit(random_crops(self.images[idx], cfg.seed, iteration, cfg.crop, cfg.flip)).to(self.device)
        self.codec.train()
        self.optimizer.zero_grad(set_to_none=True)
        self.aux_optimizer.zero_grad(set_to_none=True)
        losses = rate_distortion(self.codec(x), x, cfg.lambda_)
        losses["loss"].backward()
        if cfg.clip_max_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.codec.parameters(), cfg.clip_max_norm)
        self.optimizer.step()
        aux_loss = self.codec.aux_loss()
        aux_loss.backward()
        self.aux_optimizer.step()
        psnr = -10 * torch.log10(losses["mse"].detach().clamp_min(1e-10))
        return {**{k: v.detach() for k, v in losses.items()}, "aux": aux_loss.detach(), "psnr": psnr,
                "epoch": iteration // self.per_epoch}

    def save_model(self, out_dir: Path) -> Path:
        path = Path(out_dir) / HYPERPRIOR_FILE
        bank = bank_from_codecs({self.cfg.quality: self.codec.cpu()})
        save_model(path, bank, extra={"iterations": self.trained_iterations, "planned_iterations": self.total_iterations})
        self.codec.to(self.device)
        return path


def train_hyperprior(config: dict, prepared_dir, out_dir, device: str = "cpu", resume: bool = True,
                     progress: bool = True) -> dict:
    """One quality (config: HyperpriorTrainConfig keys) -> ``out_dir/hyperprior.safetensors``."""
    cfg = HyperpriorTrainConfig.from_dict(config)
    images, _ = load_labelled(prepared_dir, progress=progress)
    task = HyperpriorTraining(cfg, images, device)
    result = fit(task, out_dir, resume=resume, checkpoint_every=cfg.checkpoint_every, log_every=cfg.log_every,
                 budget_s=seconds(cfg.minutes), progress=progress)
    return {**result.to_dict(), "quality": cfg.quality}


# --- 2. the teacher -------------------------------------------------------------------------------
@dataclass
class TeacherTrainConfig:
    preset: str = "small"
    model: dict = field(default_factory=dict)   # DeepLabConfig overrides
    num_classes: int = 11
    iterations: int = 1000
    minutes: float | None = None
    batch_size: int = 8
    crop: int = 256
    lr: float = 1e-3
    flip: bool = True
    seed: int = 0
    checkpoint_every: int = 200
    log_every: int = 10
    backbone_weights: str | None = None         # preset lite0: weights/efficientnet_lite0.safetensors (ImageNet)

    @classmethod
    def from_dict(cls, data: dict) -> "TeacherTrainConfig":
        return dataclass_from_dict(cls, data, "DeepLabv3 teacher training")


def _crop_pairs(images: torch.Tensor, labels: torch.Tensor, seed: int, iteration: int, crop: int,
                flip: bool) -> tuple[torch.Tensor, torch.Tensor]:
    rng = torch.Generator().manual_seed(seed * 7_919 + iteration)
    if min(images.shape[-2:]) < crop:
        images = pad(images, crop)
        labels = F.pad(labels, (0, images.shape[-1] - labels.shape[-1], 0, images.shape[-2] - labels.shape[-2]),
                       value=255)
    h, w = images.shape[-2:]
    xs, ys = [], []
    for image, label in zip(images, labels):
        top = int(torch.randint(0, h - crop + 1, (1,), generator=rng))
        left = int(torch.randint(0, w - crop + 1, (1,), generator=rng))
        x, y = image[:, top:top + crop, left:left + crop], label[top:top + crop, left:left + crop]
        if flip and bool(torch.rand(1, generator=rng) < 0.5):
            x, y = x.flip(-1), y.flip(-1)
        xs.append(x)
        ys.append(y)
    return torch.stack(xs), torch.stack(ys)


class TeacherTraining(TrainingTask):
    name = "train_deeplabv3"

    def __init__(self, cfg: TeacherTrainConfig, images: torch.Tensor, labels: torch.Tensor, device: str = "cpu"):
        torch.manual_seed(cfg.seed)
        self.cfg, self.device = cfg, torch.device(device)
        self.memory_format = channels_last(self.device)
        model = DeepLabV3(deeplab_config(cfg.preset, cfg.num_classes, **cfg.model))
        if cfg.backbone_weights:
            model.load_backbone_weights(cfg.backbone_weights)
        self.model = model.to(self.device, memory_format=self.memory_format)
        self.optimizer = adam(self.model.parameters(), lr=cfg.lr)
        self.images, self.labels = images, labels.long()
        self.per_epoch = max(1, math.ceil(len(images) / cfg.batch_size))
        self.total_iterations, self.images_per_iteration = cfg.iterations, cfg.batch_size

    def modules(self):
        return {"deeplabv3": self.model}

    def optimizers(self):
        return {"adam": self.optimizer}

    def resume_key(self) -> dict:
        return {k: v for k, v in asdict(self.cfg).items() if k not in RESUME_FREE}

    def step(self, iteration: int) -> dict:
        cfg = self.cfg
        idx = seeded_permutation_batch(cfg.seed, len(self.images), cfg.batch_size, iteration, self.per_epoch)
        x, y = _crop_pairs(self.images[idx], self.labels[idx], cfg.seed, iteration, cfg.crop, cfg.flip)
        x = normalise(x.to(self.device), *self.model.pixel_stats).contiguous(memory_format=self.memory_format)
        lr = step_lr(cfg.lr, iteration, self.total_iterations)
        _set_lr(self.optimizer, lr)
        self.model.train()
        loss = F.cross_entropy(self.model(x), y.to(self.device), ignore_index=255)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"ce": loss.detach(), "lr": lr, "epoch": iteration // self.per_epoch}

    def save_model(self, out_dir: Path) -> Path:
        path = Path(out_dir) / TEACHER_FILE
        self.model.to(memory_format=torch.contiguous_format)
        save_model(path, self.model, extra={"iterations": self.trained_iterations,
                                            "planned_iterations": self.total_iterations})
        self.model.to(memory_format=self.memory_format)
        return path


def train_teacher(config: dict, prepared_dir, out_dir, device: str = "cpu", resume: bool = True,
                  progress: bool = True) -> dict:
    cfg = TeacherTrainConfig.from_dict(config)
    images, labels = load_labelled(prepared_dir, progress=progress)
    task = TeacherTraining(cfg, images, labels, device)
    return fit(task, out_dir, resume=resume, checkpoint_every=cfg.checkpoint_every, log_every=cfg.log_every,
               budget_s=seconds(cfg.minutes), progress=progress).to_dict()


# --- 3. the students --------------------------------------------------------------------------------
@torch.inference_mode()
def latent_inputs(codec, teacher: DeepLabV3, images: torch.Tensor, labels: torch.Tensor | None = None,
                  progress: bool = True) -> dict[str, torch.Tensor]:
    """Per image, as the encoder sees it (padded to 64): y^ = round(g_a(x)), F_gt = teacher front, labels padded."""
    ys, features, padded_labels = [], [], []
    for i in tqdm(range(len(images)), desc="latents", leave=False, disable=not progress):
        image = images[i:i + 1]
        x = pad(to_unit(image))
        ys.append(torch.round(codec.g_a(x)))
        features.append(teacher.front(normalise(pad(image), *teacher.pixel_stats)))
        if labels is not None:
            label = labels[i:i + 1].long()
            padded_labels.append(F.pad(label, (0, x.shape[-1] - label.shape[-1], 0, x.shape[-2] - label.shape[-2]),
                                       value=255))
    out = {"y_hat": torch.cat(ys), "features": torch.cat(features)}
    if labels is not None:
        out["labels"] = torch.cat(padded_labels)
    return out


@dataclass
class StudentTrainConfig:
    quality: int = 3
    selection: str = "none"          # none | dynamic | static
    channels: int | None = None      # static: how many channels (the most often selected)
    transform: str = "deconv"
    transform_width: int = 128
    iterations: int = 1000
    minutes: float | None = None
    batch_size: int = 8
    crop: int = 256                  # pixels, a multiple of 16 (latent crops of crop / 16)
    lr: float = 1e-3
    lambda_kd: float = 1.0
    lambda_gate: float = 0.1         # dynamic gate: x the mean share of channels selected (DCTNet's penalty)
    gate_lr_scale: float = 10.0      # the gate's learning rate over lr (it must move within a short run)
    init_from_teacher: bool = True
    seed: int = 0
    checkpoint_every: int = 200
    log_every: int = 10

    def __post_init__(self) -> None:
        if self.crop % LATENT_STRIDE:
            raise ConfigError(f"student crop {self.crop} must be a multiple of {LATENT_STRIDE}")
        if (self.selection == "static") != (self.channels is not None):
            raise ConfigError("a static student needs channels (how many), and only a static one")

    @property
    def label(self) -> str:
        """no_gate, dynamic or static<N>, with ``_res`` for Module-Res."""
        base = {"none": "no_gate", "dynamic": "dynamic"}.get(self.selection, f"static{self.channels}")
        return base + ("_res" if self.transform == "res" else "")

    @classmethod
    def from_dict(cls, data: dict) -> "StudentTrainConfig":
        return dataclass_from_dict(cls, data, "latent_seg student training")


class StudentTraining(TrainingTask):
    name = "train_latent_seg"

    def __init__(self, cfg: StudentTrainConfig, inputs: dict[str, torch.Tensor], teacher: DeepLabV3,
                 latent_channels: int, static_channels: tuple = (), device: str = "cpu"):
        torch.manual_seed(cfg.seed)
        self.cfg, self.device = cfg, torch.device(device)
        config = StudentConfig(deeplab=teacher.config.to_dict(), quality=cfg.quality, latent_channels=latent_channels,
                               selection=cfg.selection, channels=tuple(static_channels), transform=cfg.transform,
                               transform_width=cfg.transform_width)
        self.model = LatentSegNet(config)
        if cfg.init_from_teacher:
            self.model.init_back_from(teacher)
            if not features_rectified(teacher.config):   # a signed F_gt: start at its statistics
                self.model.match_features(inputs["features"])
        self.model.to(self.device)
        gate = list(self.model.gate.parameters()) if self.model.gate is not None else []
        ids = {id(p) for p in gate}
        groups = [{"params": [p for p in self.model.parameters() if id(p) not in ids], "scale": 1.0}]
        if gate:
            groups.append({"params": gate, "scale": cfg.gate_lr_scale})
        self.optimizer = adam(groups, lr=cfg.lr)
        self.inputs = inputs
        n = len(inputs["y_hat"])
        self.n, self.per_epoch = n, max(1, math.ceil(n / cfg.batch_size))
        self.total_iterations, self.images_per_iteration = cfg.iterations, cfg.batch_size
        self.static_channels = tuple(static_channels)

    def modules(self):
        return {"student": self.model}

    def optimizers(self):
        return {"adam": self.optimizer}

    def resume_key(self) -> dict:
        return {**{k: v for k, v in asdict(self.cfg).items() if k not in RESUME_FREE},
                "static_channels": list(self.static_channels)}

    def batch(self, iteration: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Crops on the latent grid of (y^, F_gt, labels), seeded by the iteration."""
        cfg = self.cfg
        idx = seeded_permutation_batch(cfg.seed, self.n, cfg.batch_size, iteration, self.per_epoch)
        rng = torch.Generator().manual_seed(cfg.seed * 7_919 + iteration)
        y_all, f_all, l_all = self.inputs["y_hat"], self.inputs["features"], self.inputs["labels"]
        lh, lw = y_all.shape[-2:]
        c = min(cfg.crop // LATENT_STRIDE, lh, lw)
        ys, fs, ls = [], [], []
        for i in idx.tolist():
            top = int(torch.randint(0, lh - c + 1, (1,), generator=rng))
            left = int(torch.randint(0, lw - c + 1, (1,), generator=rng))
            ys.append(y_all[i, :, top:top + c, left:left + c])
            fs.append(f_all[i, :, 4 * top:4 * (top + c), 4 * left:4 * (left + c)])
            ls.append(l_all[i, 16 * top:16 * (top + c), 16 * left:16 * (left + c)])
        return torch.stack(ys), torch.stack(fs), torch.stack(ls)

    def step(self, iteration: int) -> dict:
        cfg = self.cfg
        y, f_gt, labels = (t.to(self.device) for t in self.batch(iteration))
        lr = step_lr(cfg.lr, iteration, self.total_iterations)
        _set_lr(self.optimizer, lr)
        self.model.train()
        features, mask = self.model.features(y)
        logits = self.model.back(features, tuple(labels.shape[-2:]))
        ce = F.cross_entropy(logits, labels, ignore_index=255)
        kd = F.mse_loss(features, f_gt)
        loss = ce + cfg.lambda_kd * kd
        if mask is not None and cfg.lambda_gate:
            loss = loss + cfg.lambda_gate * mask.mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        out = {"loss": loss.detach(), "ce": ce.detach(), "kd": kd.detach(), "lr": lr,
               "epoch": iteration // self.per_epoch}
        if mask is not None:
            out["selected"] = mask.detach().sum(1).mean()
        return out

    def save_model(self, out_dir: Path) -> Path:
        path = Path(out_dir) / f"latent_seg_q{self.cfg.quality}_{self.cfg.label}.safetensors"
        save_model(path, self.model, extra={"iterations": self.trained_iterations,
                                            "planned_iterations": self.total_iterations})
        return path


@torch.inference_mode()
def selection_counts(student: LatentSegNet, y_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(how often the dynamic gate selects each channel, the sum of its selection probabilities) over
    the images, one whole image at a time."""
    if student.gate is None:
        raise ConfigError("selection counts need a student with a dynamic gate")
    student.eval()
    counts = torch.zeros(student.config.latent_channels, dtype=torch.long)
    probability = torch.zeros(student.config.latent_channels, dtype=torch.float64)
    for i in range(len(y_hat)):
        counts += (student.gate(y_hat[i:i + 1])[0] > 0.5).long().cpu()
        probability += student.gate.probability(y_hat[i:i + 1])[0].double().cpu()
    return counts, probability


def most_selected(counts: torch.Tensor, n: int, probability: torch.Tensor | None = None) -> tuple[int, ...]:
    """The ``n`` channels selected most often, sorted (ties: the higher summed probability, then the
    lower channel index)."""
    if not 1 <= n <= len(counts):
        raise ConfigError(f"static selection of {n} channels out of {len(counts)}")
    prob = probability if probability is not None else torch.zeros(len(counts))
    order = sorted(range(len(counts)), key=lambda c: (-int(counts[c]), -float(prob[c]), c))
    return tuple(sorted(order[:n]))


def train_student(cfg: StudentTrainConfig, inputs: dict[str, torch.Tensor], teacher: DeepLabV3, latent_channels: int,
                  out_dir, static_channels: tuple = (), device: str = "cpu", resume: bool = True,
                  progress: bool = True) -> dict:
    task = StudentTraining(cfg, inputs, teacher, latent_channels, static_channels, device)
    result = fit(task, out_dir, resume=resume, checkpoint_every=cfg.checkpoint_every, log_every=cfg.log_every,
                 budget_s=seconds(cfg.minutes), progress=progress)
    return {**result.to_dict(), "student": cfg.label, "quality": cfg.quality}


__all__ = ["HYPERPRIOR_FILE", "TEACHER_FILE", "HyperpriorTrainConfig", "HyperpriorTraining", "StudentTrainConfig",
           "StudentTraining", "TeacherTrainConfig", "TeacherTraining", "latent_inputs", "most_selected",
           "selection_counts", "step_lr", "train_hyperprior", "train_student", "train_teacher"]
