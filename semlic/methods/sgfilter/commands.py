"""``semlic train-sgfilter``: the enhancement network of one map source on a prepared train split.

``train-sgfilter --data PREPARED --out DIR [--segnet PSPNET] [--map-source derived|sent|none|truth] [--config CFG]
[--iterations N] [--batch-size N] [--crop N] [--preset small|wide|tiny] [--device] [--restart] [--pause-after M]``:
:func:`semlic.methods.sgfilter.training.train_sgfilter`; the config's ``train_sgfilter`` section gives
:class:`~semlic.methods.sgfilter.training.SGFilterTrainConfig` keys, the options override them. Prints
the training result as JSON.
"""

from __future__ import annotations

import argparse
import json

from ...config_files import add_pause_argument, read_section, seconds
from ...errors import ConfigError

#: The commands this module adds to ``semlic`` (read by semlic.cli without importing it).
COMMANDS = {
    "train-sgfilter": "HEVC + SG filter: train the enhancement network of one map source",
}


def run_train(args: argparse.Namespace) -> int:
    from ...model_files import load_model
    from .training import train_sgfilter

    config = read_section(args.config, "train_sgfilter")
    for key in ("map_source", "iterations", "preset", "batch_size", "crop"):
        value = getattr(args, key)
        if value is not None:
            config[key] = value
    needs_map = config.get("map_source", "derived") != "none"
    if needs_map and not args.segnet:
        raise ConfigError("train-sgfilter: --segnet PSPNET is needed (the network's map comes from it)")
    segnet = load_model(args.segnet, args.device, expect="pspnet") if args.segnet else None
    result = train_sgfilter(config, args.data, args.out, segnet, num_classes=args.num_classes, device=args.device,
                            resume=not args.restart, time_limit_s=seconds(args.pause_after),
                            progress=not args.no_progress)
    print(json.dumps(result.to_dict(), indent=2, default=str))
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-sgfilter", help=COMMANDS["train-sgfilter"])
    p.add_argument("--data", required=True, help="prepared data directory (its train split)")
    p.add_argument("--out", required=True, help="output directory (<model>.safetensors, cache, train_state, log)")
    p.add_argument("--segnet", help="PSPNet model file (the derived and sent maps; its classes size the network)")
    p.add_argument("--map-source", choices=("derived", "sent", "none", "truth"))
    p.add_argument("--num-classes", type=int, help="classes of the network's map input without --segnet")
    p.add_argument("--config", help="YAML with a train_sgfilter section (or the keys at top level)")
    p.add_argument("--iterations", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--crop", type=int, help="side of the square training crops")
    p.add_argument("--preset", help="small | wide | tiny")
    p.add_argument("--device", default="cpu")
    add_pause_argument(p)
    p.add_argument("--restart", action="store_true", help="ignore an existing train_state and start afresh")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_train)
