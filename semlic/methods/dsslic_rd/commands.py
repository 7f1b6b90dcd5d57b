"""``semlic train-dsslic-rd``: one lambda of the rate-aware base layer, and ``--merge`` of several."""

from __future__ import annotations

import argparse
import json

from ...config_files import add_pause_argument, read_section, seconds

#: The commands this module adds to ``semlic`` (read by semlic.cli without importing it).
COMMANDS = {
    "train-dsslic-rd": "DSSLIC-RD: train the rate-aware base layer at one lambda (or merge the lambdas' files into one model)",
}


def cmd_train(args) -> int:
    from .training import RDTrainConfig, merge_levels, train_dsslic_rd

    if args.merge:
        bank = merge_levels(args.merge, args.out)
        print(json.dumps({"model": args.out, "lambdas": list(bank.config.lambdas), "map": bank.config.map}))
        return 0
    if not (args.images and args.segs):
        raise SystemExit("train-dsslic-rd: --images and --segs are needed to train (or --merge FILES to merge)")
    config = read_section(args.config, "train_dsslic_rd", RDTrainConfig.__dataclass_fields__)
    for key in ("iterations", "batch_size", "preset", "label_nc", "lmbda", "map", "map_factor", "init", "segnet"):
        value = getattr(args, key)
        if value is not None:
            config[key] = value
    result = train_dsslic_rd(config, args.images, args.segs, args.out, device=args.device, resume=not args.restart,
                             time_limit_s=seconds(args.pause_after),
                             progress=not args.no_progress)
    print(json.dumps(result.to_dict(), indent=2, default=str))
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-dsslic-rd", help=COMMANDS["train-dsslic-rd"])
    p.add_argument("--config", help="YAML with a train_dsslic_rd section (or the keys at top level)")
    p.add_argument("--images", help="directory of training images <id>.png (one size)")
    p.add_argument("--segs", help="directory of segmentation maps <id>.png")
    p.add_argument("--out", required=True, help="output directory (training), or the merged model file (--merge)")
    p.add_argument("--merge", nargs="+", metavar="FILE", help="merge these one-lambda model files into --out")
    p.add_argument("--device", default="cpu")
    p.add_argument("--lmbda", type=float, help="weight of 255^2 MSE against the compact layer's bpp")
    p.add_argument("--map", choices=("lossless", "lossy", "derived"))
    p.add_argument("--map-factor", type=int)
    p.add_argument("--init", help="dsslic.safetensors to start CompNet + FineNet from (a path: the pipeline's "
                                  "'init: dsslic' is resolved by its stage, not here)")
    p.add_argument("--segnet", help="PSPNet model file (map: derived)")
    p.add_argument("--iterations", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--preset")
    p.add_argument("--label-nc", type=int)
    add_pause_argument(p)
    p.add_argument("--restart", action="store_true", help="ignore an existing train_state and start afresh")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train)
