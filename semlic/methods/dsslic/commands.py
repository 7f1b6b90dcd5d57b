"""``semlic train-dsslic``: DSSLIC's CompNet + FineNet (+ discriminators) from a shell."""

from __future__ import annotations

import argparse
import json

from ...config_files import add_pause_argument, read_section, seconds

#: The commands this module adds to ``semlic`` (read by semlic.cli without importing it).
COMMANDS = {
    "train-dsslic": "DSSLIC: train CompNet + FineNet (+ discriminators)",
}


def cmd_train(args) -> int:
    from .training import DSSLICTrainConfig, train_dsslic

    config = read_section(args.config, "train_dsslic", DSSLICTrainConfig.__dataclass_fields__)
    for key in ("iterations", "batch_size", "preset", "label_nc", "vgg_weights", "epochs"):
        value = getattr(args, key)
        if value is not None:
            config[key] = value
    result = train_dsslic(config, args.images, args.segs, args.out, device=args.device, resume=not args.restart,
                          time_limit_s=seconds(args.pause_after),
                          progress=not args.no_progress)
    print(json.dumps(result.to_dict(), indent=2, default=str))
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-dsslic", help=COMMANDS["train-dsslic"])
    p.add_argument("--config", help="YAML with a train_dsslic section (or the keys at top level)")
    p.add_argument("--images", required=True, help="directory of training images <id>.png (one size)")
    p.add_argument("--segs", required=True, help="directory of segmentation maps <id>.png")
    p.add_argument("--out", required=True, help="output directory (dsslic.safetensors, train_state, train_log)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--iterations", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--preset")
    p.add_argument("--label-nc", type=int)
    p.add_argument("--vgg-weights")
    add_pause_argument(p)
    p.add_argument("--restart", action="store_true", help="ignore an existing train_state and start afresh")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train)
