"""EDMS training step 3 (optional): fine-tune FineNet on the matched segmentation s^.

Hoang, Zhou & Fan 2020 train CompNet and FineNet with the original segmentation (step 1),
then SMapNet (step 2); the codec then feeds FineNet s^ instead of the map it was trained on.
This step adapts FineNet to s^: CompNet stays frozen, so c^ and therefore s^ (which depends on
c^ only) are computed once per training image, and FineNet is trained with DSSLIC's
PSNR-favouring terms (``lambda_l1`` L1 + ``lambda_ssim`` (-SSIM), no GAN or VGG; Adam lr 2e-4,
beta1 0.5), on the decoded 8-bit c^ as the codec runs it.

Whether it helps is measured, not assumed: :func:`finetune_finenet` scores the mean PSNR of the
prediction x' = RecNet(s^, c^) (no residual) on a held-out split before and after, and returns
the fine-tuned model only if it is better; ``finetune.json`` records both figures and the
decision. ``maps="reference"`` fine-tunes on the reference maps instead, the control that
separates "more training" from "training on s^". Not resumable: it is short (``iterations``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from ...config_files import dataclass_from_dict
from ...errors import ConfigError
from ...fileio import atomic_write_bytes
from ...imageio import load_image, load_label_map
from ...layers import pad_to_multiple
from ...model_files import load_model, save_model
from ...nn.losses import ssim
from ...segnet.prepared import list_prepared
from ...train_loop import adam
from ...layered_codec import compact_image, predict
from ..dsslic.model import DSSLIC
from .matched import matched_segmentation
from .smapnet import SMapNet

FINETUNE_METHODS = ("edms", "edms_noenh")


@dataclass
class FinetuneConfig:
    method: str = "edms"          # the s^ FineNet learns from: edms (SMapNet) or edms_noenh (raw PSPNet)
    maps: str = "matched"         # matched: s^; reference: the reference maps (control)
    iterations: int = 500
    batch_size: int = 8
    lr: float = 2e-4
    beta1: float = 0.5
    lambda_l1: float = 20.0
    lambda_ssim: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in FINETUNE_METHODS or self.maps not in ("matched", "reference"):
            raise ConfigError(f"method must be one of {FINETUNE_METHODS} and maps 'matched' or 'reference'; "
                              f"found {self.method!r}, {self.maps!r}")
        if self.iterations < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError(f"iterations and batch_size must be >= 1 and lr > 0; found {self.iterations}, "
                              f"{self.batch_size}, {self.lr}")

    @classmethod
    def from_dict(cls, data: dict) -> "FinetuneConfig":
        return dataclass_from_dict(cls, data, "finetune_finenet")


def matched_set(model: DSSLIC, segnet, smapnet: SMapNet | None, prepared_dir, split: str, seg_dir,
                progress: bool = True) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Per image of a split: (x, c^, s^, reference s), x and maps at the padded size."""
    out = []
    for sample in tqdm(list_prepared(prepared_dir, split), desc=f"s^ {split}", disable=not progress, leave=False):
        image = pad_to_multiple(load_image(sample.image_path), model.config.multiple)
        reference = pad_to_multiple(load_label_map(Path(seg_dir) / f"{sample.id}.png"), model.config.multiple)
        compact = compact_image(model, image, reference)
        out.append((image, compact, matched_segmentation(compact, model, segnet, smapnet), reference))
    return out


def prediction_psnr(model: DSSLIC, items) -> float:
    """Mean PSNR (dB, 8-bit RGB) of x' = RecNet(s^, c^) over :func:`matched_set` items."""
    values = []
    for image, compact, matched, _ in items:
        mse = np.mean((predict(model, compact, matched, image.shape[:2]).astype(np.float64) - image) ** 2)
        values.append(math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse))
    return float(np.mean(values))


def _stack(items, index: int, device) -> torch.Tensor:
    return torch.from_numpy(np.stack([item[index] for item in items])).to(device)


def finetune_finenet(config: FinetuneConfig | dict, base_path, segnet, smapnet: SMapNet | None, prepared_dir,
                     seg_dir, out_dir, train_split: str = "train", eval_split: str = "val", eval_seg_dir=None,
                     device: str = "cpu", progress: bool = True) -> Path:
    """Fine-tune FineNet on s^ of ``train_split``; return the better of the two base models' paths."""
    cfg = config if isinstance(config, FinetuneConfig) else FinetuneConfig.from_dict(config)
    enhancer = smapnet if cfg.method == "edms" else None
    model = load_model(base_path, device, expect="dsslic")
    train = matched_set(model, segnet, enhancer, prepared_dir, train_split, seg_dir, progress)
    held_out = matched_set(model, segnet, enhancer, prepared_dir, eval_split, eval_seg_dir or seg_dir, progress)
    if len({item[0].shape for item in train}) != 1:
        raise ConfigError(f"fine-tuning needs training images of one size (split {train_split})")
    before = prediction_psnr(model, held_out)
    images = _stack(train, 0, device).permute(0, 3, 1, 2).float() / 127.5 - 1
    compacts = _stack(train, 1, device).permute(0, 3, 1, 2).float() / 127.5 - 1
    maps = _stack(train, 2 if cfg.maps == "matched" else 3, device).long()
    model.train()
    model.compnet.requires_grad_(False)
    opt = adam(model.finenet.parameters(), lr=cfg.lr, betas=(cfg.beta1, 0.999))
    generator = torch.Generator().manual_seed(cfg.seed)
    for _ in tqdm(range(cfg.iterations), desc="finetune_finenet", disable=not progress, dynamic_ncols=True):
        idx = torch.randint(0, len(images), (cfg.batch_size,), generator=generator).to(images.device)
        recon = model.reconstruct(compacts[idx], maps[idx])
        loss = cfg.lambda_l1 * F.l1_loss(recon, images[idx]) - cfg.lambda_ssim * ssim(recon, images[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    after = prediction_psnr(model, held_out)
    out_dir = Path(out_dir)
    tuned_path = out_dir / "dsslic_finetuned.safetensors"
    save_model(tuned_path, model.cpu(), extra={"finetuned_on": asdict(cfg)})
    kept = after > before
    record = {"config": asdict(cfg), "eval_split": eval_split, "psnr_before_db": before, "psnr_after_db": after,
              "kept": kept, "model": str(tuned_path if kept else base_path)}
    atomic_write_bytes(out_dir / "finetune.json", (json.dumps(record, indent=2) + "\n").encode())
    return tuned_path if kept else Path(base_path)
