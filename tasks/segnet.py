"""Tasks of the train_segnet and segment stages."""

from __future__ import annotations

from prefect import task

from semlic.model_files import load_model
from semlic.segnet.segment import segment_images, write_segment_table
from semlic.segnet.train import MODEL_FILE as SEGNET_FILE
from semlic.segnet.train import train_segnet as train

from .common import TASK_OPTIONS, task_device, timed, use_assigned_threads

__all__ = ["SEGNET_FILE", "part_name", "segment_shard", "train_segnet"]


@task(name="train-segnet", **TASK_OPTIONS)
def train_segnet(config: dict, prepared_dir: str, out_dir: str, device: str) -> dict:
    """semlic.segnet.train.train_segnet into ``out_dir``, resuming from a state left by an interrupted run."""
    device = task_device(device)  # the GPU Ray gave this task, if any
    with timed({"out_dir": out_dir}) as record:
        record["threads"] = use_assigned_threads()
        summary = train(config, prepared_dir, out_dir, device=device, resume=True, progress=False)
        record.update({k: summary.get(k) for k in ("completed", "stopped_by", "step", "total_steps", "final_loss",
                                                   "train_images_per_s", "eval", "model_path")})
    return record


@task(name="segment-shard", **TASK_OPTIONS)
def segment_shard(model_path: str, image_paths: list[str], label_dir: str | None, out_dir: str, part_path: str,
                  device: str, batch_size: int) -> dict:
    """Segment one shard of images (model loaded once); write its table to ``part_path``."""
    device = task_device(device)  # the GPU Ray gave this task, if any
    with timed({"part": part_path, "images": len(image_paths)}) as record:
        record["threads"] = use_assigned_threads()
        model = load_model(model_path, device, expect="pspnet")
        table = segment_images(model, image_paths, out_dir, label_dir=label_dir, device=device,
                               batch_size=batch_size)
        write_segment_table(table, part_path)
        record["images_per_s"] = float(table.attrs.get("images_per_s", float("nan")))
    return record


def part_name(split: str, index: int) -> str:
    return f"{split}-{index:04d}.parquet"
