"""Training a PSPNet on a prepared data set (recipe of Zhao et al. 2017 / hszhao/semseg).

SGD (momentum 0.9, weight decay 1e-4), poly learning-rate schedule (power 0.9) over all steps,
new layers (pyramid pooling, head, aux head) at 10x the backbone's rate; random scale 0.5-2,
random crop (padded with the ignore label), random flip; cross-entropy with the ignore index
plus 0.4 x the auxiliary loss. On CUDA: bfloat16 autocast, channels-last tensors, pinned memory
and non-blocking copies.

Runs on :func:`semlic.train_loop.fit`. Files written in ``out_dir``: the resumable state
``train_state.safetensors`` every ``checkpoint_every`` steps and when a call stops, the log
``train_log.parquet`` (iteration, loss, main_loss, lr, images_per_s: one row per ``log_every``
steps, losses averaged over them) and, when all steps are done, the model ``segnet.safetensors``
(model ``pspnet``). Batches, augmentation and dropout depend only on (seed, step) and the saved
random state, so a resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..config_files import seconds
from ..errors import DatasetError
from ..model_files import save_model
from ..train_loop import TrainingTask, autocast, channels_last, fit
from .evaluate import evaluate_segnet
from .inference import resolve_device
from .prepared import AugmentedTrainingSet, list_prepared
from .pretrained import load_backbone_weights
from .pspnet import PSPNet, pspnet_loss
from .schedule import PlannedBatches, make_sgd, poly_lr, set_learning_rate, steps_per_epoch
from .train_config import SegnetTrainConfig

MODEL_FILE = "segnet.safetensors"
#: Keys that may differ between a run and its resumption: they do not change the result.
RESUME_FREE_KEYS = frozenset({"num_workers", "checkpoint_every", "log_every", "eval_split", "minutes"})


def median_frequency_weights(samples: list, num_classes: int) -> torch.Tensor:
    """Median-frequency balancing (Eigen & Fergus 2015; SegNet on CamVid): weight(c) = median(f) / f(c), with
    f(c) = pixels of class c / labelled pixels of the images where c is present; a class absent from every
    image gets 0."""
    import numpy as np

    from ..imageio import load_label_map

    pixels = np.zeros(num_classes, np.int64)
    image_pixels = np.zeros(num_classes, np.int64)
    for sample in samples:
        label = load_label_map(sample.label_path)
        counts = np.bincount(label[label < num_classes].ravel(), minlength=num_classes)[:num_classes]
        pixels += counts
        image_pixels += np.where(counts > 0, counts.sum(), 0)
    present = pixels > 0
    if not present.any():
        raise DatasetError("no labelled pixel to weigh the classes by")
    frequency = np.where(present, pixels / np.maximum(image_pixels, 1), np.nan)
    weights = np.where(present, np.nanmedian(frequency) / frequency, 0.0)
    return torch.tensor(weights, dtype=torch.float32)


class SegnetTraining(TrainingTask):
    """PSPNet with SGD and the poly schedule, one step at a time."""

    name = "train_segnet"

    def __init__(self, config: SegnetTrainConfig, samples: list, device: torch.device):
        self.config, self.device = config, device
        self.total_iterations = config.iterations or config.epochs * steps_per_epoch(len(samples), config.batch_size)
        self.images_per_iteration = config.batch_size
        torch.manual_seed(config.seed)
        model = PSPNet(config.model)
        if config.backbone_weights:
            load_backbone_weights(model, config.backbone_weights)
        self.memory_format = channels_last(device)
        self.model = model.to(device, memory_format=self.memory_format)
        self.optimizer = make_sgd(self.model, config.base_lr, config.head_lr_multiplier, config.momentum,
                                  config.weight_decay)
        self.dataset = AugmentedTrainingSet(samples, config.crop_size, config.scale_range, config.horizontal_flip,
                                            config.model.num_classes, config.model.ignore_index, config.seed)
        self.class_weights = None
        if config.class_weights == "median_frequency":
            self.class_weights = median_frequency_weights(samples, config.model.num_classes).to(device)
        self.batches = None

    def modules(self):
        return {"pspnet": self.model}

    def optimizers(self):
        return {"sgd": self.optimizer}

    def resume_key(self) -> dict:
        return {k: v for k, v in self.config.to_dict().items() if k not in RESUME_FREE_KEYS}

    def begin(self, start: int) -> None:
        config = self.config
        plan = PlannedBatches(len(self.dataset), config.batch_size, config.seed, start, self.total_iterations)
        self.steps_per_epoch = plan.steps_per_epoch
        loader = DataLoader(
            self.dataset, batch_sampler=plan, num_workers=config.num_workers, pin_memory=self.device.type == "cuda",
            prefetch_factor=4 if config.num_workers else None, generator=torch.Generator().manual_seed(config.seed),
        )
        self.batches = iter(loader)
        self.model.train()

    def step(self, iteration: int) -> dict:
        images, labels = next(self.batches)
        images = images.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        labels = labels.to(self.device, non_blocking=True)
        lr = poly_lr(self.config.base_lr, iteration, self.total_iterations, self.config.poly_power)
        set_learning_rate(self.optimizer, lr)
        with autocast(self.device, self.config.amp):
            outputs = self.model(images)
        loss, main_loss, _ = pspnet_loss(outputs, labels, self.config.model, self.class_weights)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.detach(), "main_loss": main_loss.detach(), "lr": lr,
                "epoch": iteration // self.steps_per_epoch}

    def save_model(self, out_dir: Path) -> Path:
        path = Path(out_dir) / MODEL_FILE
        save_model(path, self.model.to(memory_format=torch.contiguous_format),
                   extra={"iterations": self.trained_iterations, "planned_iterations": self.total_iterations})
        return path


def train_segnet(config: SegnetTrainConfig | dict, prepared_dir: str | os.PathLike, out_dir: str | os.PathLike,
                 device: str | torch.device = "cpu", resume: bool = True, stop_at_step: int | None = None,
                 time_limit_s: float | None = None, progress: bool = True) -> dict:
    """Train a PSPNet on the labelled images of ``config.train_split`` into ``out_dir``.

    ``stop_at_step`` / ``time_limit_s`` end this call early (after saving the state) so that a
    later call continues, e.g. on a machine with a per-command time limit. Returns a dict:
    completed, step, total_steps, stopped_by, final_loss (mean of the last log window),
    train_images_per_s (this call), model_path (None unless completed), state_path, log_path,
    eval (evaluate_segnet's dict for ``eval_split``, or None).
    """
    config = SegnetTrainConfig.from_dict(config) if isinstance(config, dict) else config
    device = resolve_device(device)
    samples = [s for s in list_prepared(prepared_dir, config.train_split) if s.label_path is not None]
    if not samples:
        raise DatasetError(f"{prepared_dir}: split {config.train_split!r} has no label maps to train on")
    task = SegnetTraining(config, samples, device)
    out_dir = Path(out_dir)
    start = 0
    if resume and (out_dir / "train_state.safetensors").is_file():
        from ..model_files import read_metadata

        start = int(read_metadata(out_dir / "train_state.safetensors").get("iteration", 0))
    stop_after = None if stop_at_step is None else max(0, stop_at_step - start)
    result = fit(task, out_dir, resume=resume, checkpoint_every=config.checkpoint_every, log_every=config.log_every,
                 stop_after=stop_after, time_limit_s=time_limit_s,
                 budget_s=seconds(config.minutes), progress=progress)
    summary = {
        "completed": result.completed, "step": result.iteration, "total_steps": result.total_iterations,
        "stopped_by": result.stopped_by, "final_loss": result.last.get("loss", float("nan")),
        "train_images_per_s": result.images_per_s,
        "model_path": str(result.model_path) if result.model_path else None,
        "state_path": str(result.state_path), "log_path": str(result.log_path), "eval": None,
    }
    if result.model_path is not None and config.eval_split:
        summary["eval"] = evaluate_segnet(task.model, prepared_dir, config.eval_split, device,
                                          num_workers=config.num_workers)
    return summary
