"""``semlic smap-pairs``, ``train-smapnet``, ``finetune-finenet``: EDMS's training steps 2 and 3.

* ``smap-pairs --model BASE --segnet PSPNET --data PREPARED --split train --segs REF_DIR --out DIR
  [--ids a,b,...] [--device]``: :func:`semlic.methods.edms.pairs.generate_pairs`; writes ``DIR/pairs.parquet``
  (per image: mIoU of PSPNet(up(c^)) against the reference map) and prints a JSON summary.
* ``train-smapnet --pairs DIR --out DIR [--config CFG.yaml] [--device] [--epochs N | --iterations N]
  [--batch-size N] [--preset paper|tiny] [--crop N] [--restart]``:
  :func:`semlic.methods.edms.training.train_smapnet`; the config's ``train_smapnet`` section (or its
  top-level keys) gives :class:`~semlic.methods.edms.training.SMapNetTrainConfig` keys, the options
  override them. Prints the model path.
* ``finetune-finenet --model DSSLIC --segnet PSPNET [--smapnet SMAPNET] --data PREPARED --segs REF_DIR
  --out DIR [--eval-split val] [--eval-segs DIR] [--method edms|edms_noenh] [--maps matched|reference]
  [--iterations N]``: :func:`semlic.methods.edms.finetune.finetune_finenet`; prints ``finetune.json`` (x'
  PSNR before / after on the held-out split, and whether the fine-tuned model is kept).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ...config_files import add_pause_argument, read_section, seconds

#: The commands this module adds to ``semlic`` (read by semlic.cli without importing it).
COMMANDS = {
    "smap-pairs": "EDMS: SMapNet training pairs (PSPNet(up(c^)), reference map)",
    "train-smapnet": "EDMS: train SMapNet on a pairs directory",
    "finetune-finenet": "EDMS step 3: fine-tune FineNet on s^, kept only if x' improves",
}


def run_pairs(args: argparse.Namespace) -> int:
    from ...fileio import write_parquet
    from ...model_files import load_model
    from .pairs import generate_pairs

    model = load_model(args.model, args.device, expect="dsslic")
    segnet = load_model(args.segnet, args.device, expect="pspnet")
    ids = [i for i in args.ids.split(",") if i] if args.ids else None
    table = generate_pairs(model, segnet, args.data, args.split, args.segs, args.out, ids=ids,
                           progress=not args.no_progress)
    write_parquet(table.sort_values("id", kind="stable"), Path(args.out) / "pairs.parquet")
    print(json.dumps({"pairs": len(table), "mean_image_miou_pspnet_up_c": float(table["miou"].mean()),
                      "table": str(Path(args.out) / "pairs.parquet")}, indent=2))
    return 0


def run_train(args: argparse.Namespace) -> int:
    from .training import train_smapnet

    config = read_section(args.config, "train_smapnet")
    for key in ("epochs", "iterations", "batch_size", "preset", "crop"):
        value = getattr(args, key)
        if value is not None:
            config[key] = value
    if args.epochs is not None:
        config["iterations"] = None
    result = train_smapnet(config, args.pairs, args.out, device=args.device, resume=not args.restart,
                           time_limit_s=seconds(args.pause_after),
                           progress=not args.no_progress)
    print(json.dumps(result.to_dict(), indent=2, default=str))
    return 0


def run_finetune(args: argparse.Namespace) -> int:
    from ...model_files import load_model
    from .finetune import finetune_finenet

    segnet = load_model(args.segnet, args.device, expect="pspnet")
    smapnet = load_model(args.smapnet, args.device, expect="smapnet") if args.smapnet else None
    config = {"method": args.method, "maps": args.maps, **({"iterations": args.iterations} if args.iterations else {})}
    finetune_finenet(config, args.model, segnet, smapnet, args.data, args.segs, args.out, train_split=args.split,
                     eval_split=args.eval_split, eval_seg_dir=args.eval_segs, device=args.device,
                     progress=not args.no_progress)
    print((Path(args.out) / "finetune.json").read_text())
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("smap-pairs", help=COMMANDS["smap-pairs"])
    p.add_argument("--model", required=True, help="DSSLIC model (dsslic.safetensors from train-dsslic)")
    p.add_argument("--segnet", required=True, help="PSPNet checkpoint")
    p.add_argument("--data", required=True, help="prepared data directory")
    p.add_argument("--split", default="train", help="split to make pairs of (default train)")
    p.add_argument("--segs", required=True, help="reference maps <id>.png (PSPNet on the original images)")
    p.add_argument("--out", required=True, help="pairs directory")
    p.add_argument("--ids", help="comma-separated ids: only this shard")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_pairs)

    p = sub.add_parser("train-smapnet", help=COMMANDS["train-smapnet"])
    p.add_argument("--config", help="YAML with a train_smapnet section (or the keys at top level)")
    p.add_argument("--pairs", required=True, help="pairs directory (semlic smap-pairs)")
    p.add_argument("--out", required=True, help="output directory (smapnet.safetensors, train_state, log)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--epochs", type=int)
    p.add_argument("--iterations", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--preset", help="paper | tiny")
    p.add_argument("--crop", type=int)
    add_pause_argument(p)
    p.add_argument("--restart", action="store_true", help="ignore an existing train_state and start afresh")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_train)

    p = sub.add_parser("finetune-finenet", help=COMMANDS["finetune-finenet"])
    p.add_argument("--model", required=True, help="DSSLIC model (dsslic.safetensors from train-dsslic)")
    p.add_argument("--segnet", required=True)
    p.add_argument("--smapnet", help="needed for --method edms")
    p.add_argument("--data", required=True, help="prepared data directory")
    p.add_argument("--split", default="train")
    p.add_argument("--segs", required=True, help="reference maps <id>.png of --split")
    p.add_argument("--eval-split", default="val")
    p.add_argument("--eval-segs", help="reference maps of --eval-split (default: --segs)")
    p.add_argument("--out", required=True)
    p.add_argument("--method", choices=("edms", "edms_noenh"), default="edms")
    p.add_argument("--maps", choices=("matched", "reference"), default="matched")
    p.add_argument("--iterations", type=int)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_finetune)
