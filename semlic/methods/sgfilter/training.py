"""Training of the enhancement network on the train split coded at the method's QP grid.

The data are made once and cached in the output folder (``cache.safetensors``, keyed by the images,
the QPs, the map source and the segmenter): each train image HEVC 4:4:4-coded at every QP of the
grid exactly as the codec codes it (x^), and the map the network will be given (``derived``:
PSPNet on each x^, as the decoder computes it; ``sent``: PSPNet on the original, as the encoder
sends it; ``none``: no map; ``truth``: the ground-truth labels, void as one more class, an upper
bound on what a map can tell the network). A batch is ``batch_size`` (image, QP) pairs, one random crop of
``crop`` pixels and a flip per pair, all a function of (seed, iteration): a resumed run equals an
uninterrupted one (:func:`semlic.train_loop.fit`). Loss: MSE between x~ and the original (PSNR),
optionally plus ``lpips_weight`` x LPIPS (needs the LPIPS weights). Adam at ``lr``, constant, then
decaying linearly to zero over the last ``decay_fraction`` of the iterations. The budget
``minutes`` stops training and writes the model as it is.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch.nn import functional as F
from tqdm.auto import tqdm

from ...config_files import dataclass_from_dict, seconds
from ...errors import ConfigError
from ...fileio import atomic_write_bytes
from ...image_codecs import get_codec
from ...imageio import load_image
from ...layered_codec import segment_image
from ...model_files import save_model
from ...segnet.prepared import list_prepared
from ...train_loop import TrainingTask, TrainResult, adam, autocast, fit, seeded_permutation_batch
from ..base import module_fingerprint
from .codec import CHROMA, QPS
from .network import SGFilter, SGFilterNoMap, SGFilterSent, SGFilterTruth, sgfilter_config

#: map source -> (registered model, its class)
NETWORKS = {"derived": ("sgfilter", SGFilter), "sent": ("sgfilter_sent", SGFilterSent),
            "none": ("sgfilter_nomap", SGFilterNoMap), "truth": ("sgfilter_truth", SGFilterTruth)}
CACHE_FILE = "cache.safetensors"
RESUME_FREE = ("checkpoint_every", "log_every", "minutes")


@dataclass
class SGFilterTrainConfig:
    map_source: str = "derived"           # derived | sent | none | truth (the labels: a bound): NETWORKS
    preset: str = "small"                 # network.PRESETS
    model: dict = field(default_factory=dict)   # SGFilterConfig overrides (num_classes comes from the segmenter)
    qps: list = field(default_factory=lambda: list(QPS))
    iterations: int = 2000
    batch_size: int = 16
    crop: int = 64
    lr: float = 5e-4
    decay_fraction: float = 0.2
    lpips_weight: float = 0.0             # > 0: MSE + weight x LPIPS (the LPIPS weights file needed)
    lpips_weights: str | None = None
    seed: int = 0
    checkpoint_every: int = 200
    log_every: int = 20
    amp: bool = True
    limit: int | None = None              # only the first N train images
    minutes: float | None = None          # a training budget: the model is written when it runs out

    def __post_init__(self) -> None:
        if self.map_source not in NETWORKS:
            raise ConfigError(f"train_sgfilter: map_source must be one of {', '.join(NETWORKS)}, got {self.map_source!r}")
        if self.iterations < 1 or self.batch_size < 1 or self.crop < 8 or self.lr <= 0 or self.checkpoint_every < 1:
            raise ConfigError("train_sgfilter: iterations, batch_size and checkpoint_every must be >= 1, crop >= 8 "
                              f"and lr > 0; found {self.iterations}, {self.batch_size}, {self.checkpoint_every}, "
                              f"{self.crop}, {self.lr}")
        if not self.qps or any(not 0 <= int(q) <= 51 for q in self.qps):
            raise ConfigError(f"train_sgfilter: qps must be HEVC QPs 0..51, got {self.qps}")
        if not 0 <= self.decay_fraction <= 1 or self.lpips_weight < 0:
            raise ConfigError(f"train_sgfilter: decay_fraction must be in [0, 1] and lpips_weight >= 0; found "
                              f"{self.decay_fraction}, {self.lpips_weight}")
        self.qps = [int(q) for q in self.qps]

    @classmethod
    def from_dict(cls, data: dict) -> "SGFilterTrainConfig":
        return dataclass_from_dict(cls, data, "train_sgfilter")

    @property
    def model_name(self) -> str:
        return NETWORKS[self.map_source][0]


def learning_rate(cfg: SGFilterTrainConfig, iteration: int) -> float:
    """Constant, then linear to zero over the last ``decay_fraction`` of the iterations."""
    start = cfg.iterations * (1 - cfg.decay_fraction)
    if iteration < start or cfg.decay_fraction == 0:
        return cfg.lr
    return cfg.lr * max(0.0, (cfg.iterations - iteration) / (cfg.iterations - start))


def truth_classes(sample, num_classes: int) -> np.ndarray:
    """A prepared sample's ground truth as the truth network's classes: 0..K-1, void (255) as K."""
    from ...imageio import load_label_map

    if sample.label_path is None:
        raise ConfigError(f"{sample.id}: no ground truth (map_source truth needs labelled images)")
    labels = load_label_map(sample.label_path)
    if labels.size and int(labels[labels != 255].max(initial=0)) >= num_classes:
        raise ConfigError(f"{sample.id}: a label >= the segmenter's {num_classes} classes")
    return np.where(labels == 255, num_classes, labels).astype(np.uint8)


def build_cache(prepared_dir: str | Path, segnet: torch.nn.Module | None, qps: list[int], map_source: str,
                out_dir: str | Path, limit: int | None = None, progress: bool = True) -> dict[str, torch.Tensor]:
    """Originals (N, H, W, 3), x^ (N, Q, H, W, 3) and maps (N, Q, H, W) of the train split, uint8; made once,
    kept in ``out_dir/cache.safetensors`` and reused while its key (images, QPs, maps, segmenter) holds."""
    samples = list_prepared(prepared_dir, "train")[: limit or None]
    if map_source != "none" and segnet is None:   # truth: the segmenter's classes size the labels
        raise ConfigError(f"train_sgfilter: map_source {map_source} needs the segmenter (PSPNet model file)")
    key = json.dumps({"ids": [s.id for s in samples], "qps": qps, "map_source": map_source, "chroma": CHROMA,
                      "segnet": None if map_source == "none" else module_fingerprint(segnet).hex()}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()
    path = Path(out_dir) / CACHE_FILE
    if path.is_file():
        cached = load_file(str(path))
        if bytes(cached["key"].numpy()).decode() == digest:
            return cached
    hevc = get_codec("hevc")
    originals, decoded, maps = [], [], []
    for sample in tqdm(samples, desc="sgfilter data", unit="image", disable=not progress):
        image = load_image(sample.image_path)
        if originals and image.shape != originals[0].shape:
            raise ConfigError(f"{sample.id}: {image.shape[:2]} differs from the first train image's "
                              f"{originals[0].shape[:2]}: the network trains on one size (prepare.train_size)")
        coded = [hevc.decode(hevc.encode(image, qp, chroma=CHROMA), 3) for qp in qps]
        if map_source == "derived":
            labels = [segment_image(segnet, x) for x in coded]
        elif map_source == "truth":
            labels = [truth_classes(sample, int(segnet.config.num_classes))] * len(qps)
        elif map_source == "sent":
            labels = [segment_image(segnet, image)] * len(qps)
        else:
            labels = [np.zeros(image.shape[:2], np.uint8)] * len(qps)
        originals.append(image)
        decoded.append(np.stack(coded))
        maps.append(np.stack(labels))
    if not originals:
        raise ConfigError(f"{prepared_dir}: no train images")
    cache = {"originals": torch.from_numpy(np.stack(originals)), "decoded": torch.from_numpy(np.stack(decoded)),
             "maps": torch.from_numpy(np.stack(maps)), "key": torch.frombuffer(bytearray(digest.encode()), dtype=torch.uint8)}
    atomic_write_bytes(path, safetensors_bytes(cache))
    return cache


class SGFilterTraining(TrainingTask):
    """The enhancement network on the cached (x, x^, map) triples, one Adam step at a time."""

    name = "train_sgfilter"

    def __init__(self, cfg: SGFilterTrainConfig, cache: dict[str, torch.Tensor], num_classes: int, device: str):
        self.cfg, self.device = cfg, torch.device(device)
        self.originals = cache["originals"].to(self.device)
        self.decoded = cache["decoded"].to(self.device)
        self.maps = cache["maps"].to(self.device)
        n, q, h, w = self.maps.shape
        if cfg.crop > min(h, w):
            raise ConfigError(f"train_sgfilter: crop {cfg.crop} is larger than the train images ({h}x{w})")
        if q != len(cfg.qps):
            raise ConfigError(f"train_sgfilter: the cache holds {q} QPs, the config {len(cfg.qps)}")
        self.pairs = n * q
        self.qps = torch.tensor(cfg.qps, dtype=torch.float32, device=self.device)
        torch.manual_seed(cfg.seed)
        model_name, cls = NETWORKS[cfg.map_source]
        if cfg.map_source == "truth":
            num_classes += 1   # void
        self.model_cfg = sgfilter_config(cfg.preset, num_classes, **cfg.model)
        if cfg.map_source == "none":
            self.model_cfg = sgfilter_config(cfg.preset, num_classes, **{**cfg.model, "embed": 0})
        self.net = cls(self.model_cfg).to(self.device)
        self.opt = adam(self.net.parameters(), lr=cfg.lr)
        self.lpips = None
        if cfg.lpips_weight > 0:
            from ...lpips import load_lpips

            if not cfg.lpips_weights:
                raise ConfigError("train_sgfilter: lpips_weight > 0 needs lpips_weights (weights/lpips_alex.safetensors)")
            self.lpips = load_lpips(cfg.lpips_weights).to(self.device).eval()
            for p in self.lpips.parameters():
                p.requires_grad_(False)
        self.per_epoch = max(1, math.ceil(self.pairs / cfg.batch_size))
        self.total_iterations = cfg.iterations
        self.images_per_iteration = cfg.batch_size

    def modules(self):
        return {"sgfilter": self.net}

    def optimizers(self):
        return {"adam": self.opt}

    def resume_key(self) -> dict:
        return {k: v for k, v in asdict(self.cfg).items() if k not in RESUME_FREE}

    def batch(self, iteration: int):
        """(x^, map, QP, x) of one iteration, x^ and x in [-1, 1], a function of (seed, iteration)."""
        cfg = self.cfg
        index = seeded_permutation_batch(cfg.seed, self.pairs, cfg.batch_size, iteration, self.per_epoch).to(self.device)
        q = len(cfg.qps)
        image, level = index // q, index % q
        rng = torch.Generator().manual_seed(cfg.seed * 7_919 + iteration)
        h, w = self.maps.shape[-2:]
        top = torch.randint(0, h - cfg.crop + 1, (len(index),), generator=rng)
        left = torch.randint(0, w - cfg.crop + 1, (len(index),), generator=rng)
        flip = torch.rand(len(index), generator=rng) < 0.5
        rows = (top[:, None] + torch.arange(cfg.crop)).to(self.device)           # (B, c)
        cols = (left[:, None] + torch.arange(cfg.crop)).to(self.device)
        cols = torch.where(flip[:, None].to(self.device), cols.flip(1), cols)
        pick = (image[:, None, None], rows[:, :, None], cols[:, None, :])
        decoded = self.decoded[image[:, None, None], level[:, None, None], rows[:, :, None], cols[:, None, :]]
        original = self.originals[pick]
        labels = self.maps[image[:, None, None], level[:, None, None], rows[:, :, None], cols[:, None, :]].long()

        def to_unit(x):   # (B, c, c, 3) uint8 -> (B, 3, c, c) in [-1, 1]
            return x.permute(0, 3, 1, 2).float() / 127.5 - 1

        return to_unit(decoded), labels, self.qps[level], to_unit(original)

    def step(self, iteration: int) -> dict:
        cfg = self.cfg
        for group in self.opt.param_groups:
            group["lr"] = learning_rate(cfg, iteration)
        decoded, labels, qps, original = self.batch(iteration)
        with autocast(self.device, cfg.amp):
            out = self.net(decoded, labels if self.net.uses_map else None, qps)
        mse = F.mse_loss(out.float(), original)
        loss = mse
        figures = {"mse": mse.detach(), "lr": learning_rate(cfg, iteration), "epoch": iteration // self.per_epoch}
        if self.lpips is not None:
            perceptual = self.lpips(out.float(), original).mean()
            loss = mse + cfg.lpips_weight * perceptual
            figures["lpips"] = perceptual.detach()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        figures["loss"] = loss.detach()
        return figures

    def save_model(self, out_dir: Path) -> Path:
        path = Path(out_dir) / f"{self.cfg.model_name}.safetensors"
        save_model(path, self.net, extra={"iterations": self.trained_iterations, "planned_iterations": self.total_iterations,
                                          "map_source": self.cfg.map_source, "qps": self.cfg.qps})
        return path


def model_path(out_dir: str | Path, map_source: str) -> Path:
    """Where the network of ``map_source`` is written under ``out_dir``."""
    return Path(out_dir) / f"{NETWORKS[map_source][0]}.safetensors"


def train_sgfilter(config: SGFilterTrainConfig | dict, prepared_dir: str | Path, out_dir: str | Path,
                   segnet: torch.nn.Module | None, num_classes: int | None = None, device: str = "cpu",
                   resume: bool = True, stop_after: int | None = None, time_limit_s: float | None = None,
                   progress: bool = True) -> TrainResult:
    """Train one enhancement network into ``out_dir`` (``<model>.safetensors`` once complete).

    ``segnet``: the pipeline's PSPNet (its classes are the network's; not needed for ``map_source: none``,
    which then takes ``num_classes``). ``stop_after`` / ``time_limit_s``: this call's pause (rerun to continue).
    """
    cfg = config if isinstance(config, SGFilterTrainConfig) else SGFilterTrainConfig.from_dict(config)
    classes = int(segnet.config.num_classes) if segnet is not None else num_classes
    if classes is None:
        raise ConfigError("train_sgfilter: give the segmenter (or num_classes) to size the network's class input")
    out_dir = Path(out_dir)
    cache = build_cache(prepared_dir, segnet if cfg.map_source != "none" else None, cfg.qps, cfg.map_source, out_dir,
                        cfg.limit, progress)
    task = SGFilterTraining(cfg, cache, classes, device)
    return fit(task, out_dir, resume=resume, checkpoint_every=cfg.checkpoint_every, log_every=cfg.log_every,
               stop_after=stop_after, time_limit_s=time_limit_s, budget_s=seconds(cfg.minutes), progress=progress)
