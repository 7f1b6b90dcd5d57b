"""What happens at each training step: which images (batch plan), and at which learning rate.

Both are pure functions of (seed, step), so a run resumed at step k sees exactly the batches
and learning rates an uninterrupted run would have seen from step k on.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Sampler

from .pspnet import PSPNet


def steps_per_epoch(num_images: int, batch_size: int) -> int:
    """floor(images / batch_size), at least 1 (a set smaller than a batch repeats images)."""
    return max(1, num_images // batch_size)


class PlannedBatches(Sampler):
    """Batches of ``(epoch, image index)`` keys for steps ``start_step`` .. ``total_steps - 1``.

    Epoch e visits the images in the order of a permutation drawn from
    ``numpy.random.default_rng([seed, e])`` (repeated when the set is smaller than a batch);
    its steps take consecutive slices of ``batch_size``; left-over images wait for the next epoch's
    shuffle, as with ``drop_last=True``.
    """

    def __init__(self, num_images: int, batch_size: int, seed: int, start_step: int, total_steps: int) -> None:
        self.num_images, self.batch_size, self.seed = num_images, batch_size, seed
        self.start_step, self.total_steps = start_step, total_steps
        self.steps_per_epoch = steps_per_epoch(num_images, batch_size)

    def epoch_order(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        repeats = -(-self.batch_size // self.num_images)  # ceil
        return np.concatenate([rng.permutation(self.num_images) for _ in range(repeats)])

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step)

    def __iter__(self):
        order, order_epoch = None, None
        for step in range(self.start_step, self.total_steps):
            epoch, position = divmod(step, self.steps_per_epoch)
            if epoch != order_epoch:
                order, order_epoch = self.epoch_order(epoch), epoch
            indices = order[position * self.batch_size : (position + 1) * self.batch_size]
            yield [(epoch, int(index)) for index in indices]


def poly_lr(base_lr: float, step: int, total_steps: int, power: float) -> float:
    """Poly schedule (Liu et al. 2015, used by DeepLab and PSPNet): base * (1 - step/total)^power."""
    return base_lr * (1.0 - step / total_steps) ** power


def make_sgd(model: PSPNet, base_lr: float, head_lr_multiplier: float, momentum: float,
             weight_decay: float) -> torch.optim.SGD:
    """SGD with two parameter groups: backbone at base_lr, new layers at base_lr x multiplier.

    Each group records its ``lr_multiplier``; :func:`set_learning_rate` scales the schedule by it.
    """
    head = model.head_parameters()
    head_ids = {id(p) for p in head}
    backbone = [p for p in model.parameters() if id(p) not in head_ids]
    groups = [
        {"params": backbone, "lr": base_lr, "lr_multiplier": 1.0},
        {"params": head, "lr": base_lr * head_lr_multiplier, "lr_multiplier": head_lr_multiplier},
    ]
    return torch.optim.SGD(groups, lr=base_lr, momentum=momentum, weight_decay=weight_decay)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's lr to ``lr`` x its ``lr_multiplier``."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_multiplier"]
