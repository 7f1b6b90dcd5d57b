"""``semlic train-segnet``, ``semlic segment`` and ``semlic convert-segnet``.

* ``train-segnet --config CFG.yaml|json --data PREPARED_DIR --out DIR [--device cpu|cuda]
  [--restart] [--iterations N | --epochs N] [--batch-size N] [--crop-size N] [--lr X]
  [--num-workers N] [--seed N] [--eval-split SPLIT] [--backbone-weights PTH] [--pause-after M]``:
  config keys in :mod:`semlic.segnet.train_config`; the options override them. Writes
  ``DIR/segnet.safetensors`` (and the resumable state and log); prints the result (JSON).
* ``segment --model CKPT --data PREPARED_DIR --split SPLIT --out DIR [--device] [--batch-size]
  [--num-workers]``: writes ``DIR/<id>.png`` and ``DIR/segments.parquet``
  (:mod:`semlic.segnet.segment`).
* ``convert-segnet --format csail|hszhao WEIGHTS... --num-classes K --out CKPT``: converts
  published PSPNet weights (CSAILVision: encoder and decoder files) to a semlic model file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..config_files import add_pause_argument, seconds
from ..errors import ConfigError
from ..model_files import load_model, save_model
from .pretrained import CSAIL_ENCODERS, load_csail_pspnet, load_hszhao_pspnet
from .segment import segment_split, write_segment_table
from .train import train_segnet
from .train_config import load_train_config

#: The commands this module adds to ``semlic`` (read by semlic.cli without importing it).
COMMANDS = {
    "train-segnet": "train the PSPNet segmenter on a prepared data set",
    "segment": "write PSPNet label maps for a prepared split",
    "convert-segnet": "convert published PSPNet weights to a semlic model file",
}

# command-line option -> config key
_TRAIN_OVERRIDES = {
    "iterations": "iterations", "epochs": "epochs", "batch_size": "batch_size", "crop_size": "crop_size",
    "lr": "base_lr", "num_workers": "num_workers", "seed": "seed", "eval_split": "eval_split",
    "backbone_weights": "backbone_weights",
}


def run_train(args: argparse.Namespace) -> int:
    config = load_train_config(args.config)
    changes = {
        key: getattr(args, option) for option, key in _TRAIN_OVERRIDES.items() if getattr(args, option) is not None
    }
    if "iterations" in changes:
        changes.setdefault("epochs", None)
    elif "epochs" in changes:
        changes["iterations"] = None
    config = config.replace(**changes) if changes else config
    result = train_segnet(config, args.data, args.out, device=args.device, resume=not args.restart,
                          time_limit_s=seconds(args.pause_after),
                          progress=not args.no_progress)
    print(json.dumps(result, indent=2))
    return 0


def run_segment(args: argparse.Namespace) -> int:
    model = load_model(args.model, "cpu", expect="pspnet")
    out_dir = Path(args.out)
    table = segment_split(model, args.data, args.split, out_dir, device=args.device, batch_size=args.batch_size,
                          num_workers=args.num_workers)
    write_segment_table(table, out_dir / "segments.parquet")
    labelled = table["miou"].dropna()
    summary = {"images": len(table), "images_per_s": table.attrs["images_per_s"],
               "mean_image_miou": float(labelled.mean()) if len(labelled) else None,
               "table": str(out_dir / "segments.parquet")}
    print(json.dumps(summary, indent=2))
    return 0


def run_convert(args: argparse.Namespace) -> int:
    if args.format == "csail":
        if len(args.weights) != 2:
            raise ConfigError("--format csail needs two files: the encoder and the decoder weights")
        model = load_csail_pspnet(args.weights[0], args.weights[1], args.num_classes, args.encoder)
    else:
        if len(args.weights) != 1:
            raise ConfigError("--format hszhao needs one checkpoint file")
        model = load_hszhao_pspnet(args.weights[0], args.num_classes, args.backbone)
    save_model(args.out, model)
    print(json.dumps({"model": str(args.out), "config": model.config.to_dict()}))
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser("train-segnet", help=COMMANDS["train-segnet"])
    train.add_argument("--config", required=True, help="YAML or JSON training config (model section + training keys)")
    train.add_argument("--data", required=True, help="prepared data directory (semlic prepare)")
    train.add_argument("--out", required=True, help="output directory (segnet.safetensors, train_state, train_log)")
    train.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    train.add_argument("--restart", action="store_true", help="ignore an existing train_state and start afresh")
    train.add_argument("--iterations", type=int, help="override: total steps (clears epochs)")
    train.add_argument("--epochs", type=int, help="override: total epochs (clears iterations)")
    train.add_argument("--batch-size", type=int, help="override: images per step")
    train.add_argument("--crop-size", type=int, help="override: square crop size")
    train.add_argument("--lr", type=float, help="override: base learning rate")
    train.add_argument("--num-workers", type=int, help="override: data loader workers")
    train.add_argument("--seed", type=int, help="override: random seed")
    train.add_argument("--eval-split", help="override: split to evaluate at the end")
    train.add_argument("--backbone-weights", help="override: ImageNet backbone weights (torchvision ResNet, or weights/efficientnet_lite0.safetensors)")
    add_pause_argument(train)
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(func=run_train)

    segment = subparsers.add_parser("segment", help=COMMANDS["segment"])
    segment.add_argument("--model", required=True, help="PSPNet model file (.safetensors)")
    segment.add_argument("--data", required=True, help="prepared data directory")
    segment.add_argument("--split", required=True, help="split to segment (train, val, test, ...)")
    segment.add_argument("--out", required=True, help="output directory for <id>.png and segments.parquet")
    segment.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    segment.add_argument("--batch-size", type=int, default=4, help="images per forward pass (same size only)")
    segment.add_argument("--num-workers", type=int, default=0, help="PNG decoding workers")
    segment.set_defaults(func=run_segment)

    convert = subparsers.add_parser("convert-segnet", help=COMMANDS["convert-segnet"])
    convert.add_argument("--format", required=True, choices=["csail", "hszhao"], help="layout of the weights")
    convert.add_argument("weights", nargs="+", help="csail: ENCODER.pth DECODER.pth; hszhao: CHECKPOINT.pth")
    convert.add_argument("--num-classes", type=int, default=150, help="classes of the weights (ADE20K: 150)")
    convert.add_argument("--encoder", default="resnet50dilated", choices=sorted(CSAIL_ENCODERS), help="csail encoder")
    convert.add_argument("--backbone", default="resnet50", choices=["resnet50", "resnet101"], help="hszhao depth")
    convert.add_argument("--out", required=True, help="output model file (.safetensors)")
    convert.set_defaults(func=run_convert)
