"""Training a PSPNet on a prepared data set (recipe of Zhao et al. 2017 / hszhao/semseg).

SGD (momentum 0.9, weight decay 1e-4), poly learning-rate schedule (power 0.9) over all steps,
new layers (pyramid pooling, head, aux head) at 10x the backbone's rate; random scale 0.5-2,
random crop (padded with the ignore label), random flip; cross-entropy with the ignore index
plus 0.4 x the auxiliary loss. On CUDA: bfloat16 autocast, channels-last tensors, pinned memory
and non-blocking copies; the loss is read back to the host only when a log row is written.

Files written next to ``out_path`` (e.g. ``segnet.safetensors``): the resumable state
``segnet.train_state.pt`` every ``checkpoint_every`` steps and at the end, the log
``segnet.train_log.parquet`` (step, epoch, loss, main_loss, lr, images_per_s: one row per
``log_every`` steps, losses averaged over them) and, when all steps are done, the model itself
(:func:`~semlic.segnet.checkpoint.save_segnet`). ``resume=True`` continues from the saved state:
batches, augmentation and dropout depend only on (seed, step), so on a deterministic device the
resumed run ends with the same weights as an uninterrupted one (without a saved state, resume
starts afresh).
"""

from __future__ import annotations

import io
import logging
import os
import time
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..errors import DatasetError
from ..imageio import atomic_write_bytes
from .checkpoint import assign_state_dict, save_segnet
from .evaluate import evaluate_segnet
from .inference import autocast_for, resolve_device
from .prepared import AugmentedTrainingSet, list_prepared
from .pretrained import load_torchvision_backbone
from .pspnet import PSPNet, pspnet_loss
from .schedule import PlannedBatches, make_sgd, poly_lr, set_learning_rate, steps_per_epoch
from .train_config import SegnetTrainConfig
from .train_state import load_train_state, log_path_for, restore_rng, save_train_state, state_path_for

logger = logging.getLogger(__name__)


def _write_log(rows: list[dict], path: Path) -> None:
    buffer = io.BytesIO()
    pd.DataFrame(rows, columns=["step", "epoch", "loss", "main_loss", "lr", "images_per_s"]).to_parquet(
        buffer, index=False
    )
    atomic_write_bytes(path, buffer.getvalue())


def train_segnet(config: SegnetTrainConfig | dict, prepared_dir: str | os.PathLike, out_path: str | os.PathLike,
                 device: str | torch.device = "cpu", resume: bool = False, stop_at_step: int | None = None,
                 time_limit_s: float | None = None, progress: bool = True) -> dict:
    """Train a PSPNet on the labelled images of ``config.train_split`` (module docstring).

    ``stop_at_step`` / ``time_limit_s`` end this call early (after saving the state) so that a
    later call with ``resume=True`` continues, e.g. on a machine with a per-command time limit.
    Returns a dict: completed, step, total_steps, final_loss (mean of the last log window),
    train_images_per_s (this call, data loading included), model_path (None unless completed),
    state_path, log_path, eval (evaluate_segnet's dict for ``eval_split``, or None).
    """
    config = SegnetTrainConfig.from_dict(config) if isinstance(config, dict) else config
    device = resolve_device(device)
    samples = [s for s in list_prepared(prepared_dir, config.train_split) if s.label_path is not None]
    if not samples:
        raise DatasetError(f"{prepared_dir}: split {config.train_split!r} has no label maps to train on")
    total_steps = config.iterations or config.epochs * steps_per_epoch(len(samples), config.batch_size)
    state_path, log_path = state_path_for(out_path), log_path_for(out_path)

    torch.manual_seed(config.seed)
    model = PSPNet(config.model)
    if config.backbone_weights:
        load_torchvision_backbone(model, config.backbone_weights)
    model = model.to(device, memory_format=torch.channels_last if device.type == "cuda" else torch.preserve_format)
    optimizer = make_sgd(model, config.base_lr, config.head_lr_multiplier, config.momentum, config.weight_decay)
    step, log_rows = 0, []
    if resume and state_path.is_file():
        state = load_train_state(state_path, config)
        assign_state_dict(model, state["model"], str(state_path))
        optimizer.load_state_dict(state["optimizer"])
        step, log_rows = state["step"], state["log"]
        restore_rng(state)
        logger.info("resuming %s at step %d of %d", state_path, step, total_steps)

    dataset = AugmentedTrainingSet(samples, config.crop_size, config.scale_range, config.horizontal_flip,
                                   config.model.num_classes, config.model.ignore_index, config.seed)
    batches = PlannedBatches(len(dataset), config.batch_size, config.seed, step, total_steps)
    loader = DataLoader(
        dataset, batch_sampler=batches, num_workers=config.num_workers, pin_memory=device.type == "cuda",
        prefetch_factor=4 if config.num_workers else None, generator=torch.Generator().manual_seed(config.seed),
    )
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    window_loss = torch.zeros((), device=device)
    window_main = torch.zeros((), device=device)
    window_steps = window_images = run_images = 0
    final_loss = log_rows[-1]["loss"] if log_rows else float("nan")
    run_started = window_started = time.perf_counter()
    model.train()
    with tqdm(total=total_steps, initial=step, disable=not progress, desc="train-segnet", unit="step") as bar:
        for images, labels in loader:
            images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
            labels = labels.to(device, non_blocking=True)
            lr = poly_lr(config.base_lr, step, total_steps, config.poly_power)
            set_learning_rate(optimizer, lr)
            with autocast_for(device):
                outputs = model(images)
            loss, main_loss, _ = pspnet_loss(outputs, labels, config.model)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            window_loss += loss.detach()
            window_main += main_loss.detach()
            window_steps += 1
            window_images += images.shape[0]
            run_images += images.shape[0]
            bar.update(1)
            if step % config.log_every == 0 or step == total_steps:
                final_loss = (window_loss / window_steps).item()  # the only host sync
                now = time.perf_counter()
                log_rows.append({
                    "step": step, "epoch": (step - 1) // batches.steps_per_epoch, "loss": final_loss,
                    "main_loss": (window_main / window_steps).item(), "lr": lr,
                    "images_per_s": window_images / (now - window_started),
                })
                bar.set_postfix(loss=f"{final_loss:.4f}", lr=f"{lr:.2e}", img_s=f"{log_rows[-1]['images_per_s']:.1f}")
                window_loss.zero_(), window_main.zero_()
                window_steps = window_images = 0
                window_started = now
            stop = (stop_at_step is not None and step >= stop_at_step) or (
                time_limit_s is not None and time.perf_counter() - run_started >= time_limit_s
            )
            if step % config.checkpoint_every == 0 or step == total_steps or stop:
                save_train_state(state_path, model, optimizer, step, config, log_rows)
                _write_log(log_rows, log_path)
            if stop:
                break
    elapsed = time.perf_counter() - run_started
    completed = step >= total_steps
    if completed:
        save_segnet(model, out_path)
    result = {
        "completed": completed, "step": step, "total_steps": total_steps, "final_loss": final_loss,
        "train_images_per_s": run_images / elapsed if run_images else float("nan"),
        "model_path": str(out_path) if completed else None, "state_path": str(state_path),
        "log_path": str(log_path), "eval": None,
    }
    if completed and config.eval_split:
        result["eval"] = evaluate_segnet(model, prepared_dir, config.eval_split, device,
                                         num_workers=config.num_workers)
    return result
