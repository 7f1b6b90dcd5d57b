"""``semlic train-smic``: SMIC's SS-Net and Rec-Net on a prepared data set.

``train-smic --data PREPARED --out DIR [--config CFG.yaml] [--part ssnet|recnet|both]``: the
config's ``train_smic`` section (or its top-level keys) has an ``ssnet`` and a ``recnet``
mapping (semlic.methods.smic.training's SSNetTrainConfig / RecNetTrainConfig keys) and
``num_classes``; SS-Net goes to ``DIR/ssnet/smic_ssnet.safetensors``, Rec-Net to
``DIR/recnet/smic_recnet.safetensors``. Rerun to resume; ``--restart`` starts afresh.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ...config_files import read_section
from ...errors import ConfigError

#: The commands this module adds to ``semlic`` (read by semlic.cli without importing it).
COMMANDS = {
    "train-smic": "SMIC: train SS-Net (image -> map) and Rec-Net (small image + map -> image)",
}


def trained_part(out_dir, part: str) -> dict | None:
    """What a finished ``part`` (ssnet or recnet) in ``out_dir`` reports, TrainResult-like, read from its
    model file's metadata; None when the part has no model file yet."""
    from ...model_files import written_model
    from .training import RECNET_FILE, SSNET_FILE

    return written_model(Path(out_dir) / part / {"ssnet": SSNET_FILE, "recnet": RECNET_FILE}[part])


def train_smic(config: dict, prepared_dir, out_dir, part: str = "both", device: str = "cpu", resume: bool = True,
               progress: bool = True, keep_trained: bool = False) -> dict:
    """SS-Net then Rec-Net (``part``: both, ssnet or recnet); returns each TrainResult as a dict.

    ``keep_trained``: a part whose model file is already written is not trained again (the
    pipeline's rerun after a kill: with a ``minutes`` budget, training on would give that part a
    second budget); its entry is :func:`trained_part`'s. Without it a rerun trains on (the CLI).
    """
    from ...model_files import load_model
    from .training import SSNET_FILE, train_recnet, train_ssnet

    unknown = set(config) - {"ssnet", "recnet", "num_classes", "seed"}
    if unknown or part not in ("both", "ssnet", "recnet"):
        raise ConfigError(f"train_smic: unknown keys {sorted(unknown)} or part {part!r} (both, ssnet, recnet)")
    out_dir, results = Path(out_dir), {}
    shared = {k: config[k] for k in ("seed",) if k in config}
    kept = {p: trained_part(out_dir, p) for p in ("ssnet", "recnet")} if keep_trained else {}
    results.update({p: r for p, r in kept.items() if r is not None and part in ("both", p)})
    if part in ("both", "ssnet") and "ssnet" not in results:
        ssnet_cfg = {**shared, **(config.get("ssnet") or {}), "num_classes": config.get("num_classes", 11)}
        results["ssnet"] = train_ssnet(ssnet_cfg, prepared_dir, out_dir / "ssnet", device=device, resume=resume,
                                       progress=progress).to_dict()
    if part in ("both", "recnet") and "recnet" not in results:
        ssnet_path = out_dir / "ssnet" / SSNET_FILE
        ssnet = load_model(ssnet_path, device, expect="smic_ssnet") if ssnet_path.is_file() else None
        results["recnet"] = train_recnet({**shared, **(config.get("recnet") or {})}, prepared_dir, out_dir / "recnet",
                                         ssnet=ssnet, num_classes=config.get("num_classes"), device=device,
                                         resume=resume, progress=progress).to_dict()
    for name in ("ssnet", "recnet"):
        if name in results:
            results[name].setdefault("reused", False)
    return results


def run_train(args: argparse.Namespace) -> int:
    config = read_section(args.config, "train_smic")
    if args.num_classes is not None:
        config["num_classes"] = args.num_classes
    results = train_smic(config, args.data, args.out, part=args.part, device=args.device, resume=not args.restart,
                         progress=not args.no_progress)
    print(json.dumps(results, indent=2, default=str))
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-smic", help=COMMANDS["train-smic"])
    p.add_argument("--data", required=True, help="prepared data directory (its train split: images and labels)")
    p.add_argument("--out", required=True, help="output directory (ssnet/, recnet/)")
    p.add_argument("--config", help="YAML with a train_smic section: ssnet and recnet mappings, num_classes")
    p.add_argument("--part", default="both", choices=("both", "ssnet", "recnet"))
    p.add_argument("--num-classes", type=int, help="classes of the data set (default: the config's, else 11)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--restart", action="store_true", help="ignore existing training states and start afresh")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_train)
