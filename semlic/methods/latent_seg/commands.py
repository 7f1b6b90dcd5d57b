"""Commands of the compressed-domain system, and the library functions the pipeline's tasks call.

* ``semlic train-hyperprior --data PREPARED --out DIR [--config CFG] [--quality Q ...]``: each
  quality into ``DIR/q<Q>/`` (resumable), then the bank ``DIR/hyperprior.safetensors``. The
  config's ``train_hyperprior`` section: ``qualities`` and HyperpriorTrainConfig keys (shared),
  ``per_quality`` overrides by quality.
* ``semlic import-hyperprior CHECKPOINT --quality Q --out FILE [--into BANK]``: a local
  CompressAI checkpoint into a bank file.
* ``semlic train-latent-seg --data PREPARED --hyperprior BANK --out DIR [--config CFG]``: the
  teacher (``DIR/teacher/``), then per quality the students (``DIR/q<Q>/<label>/``); the
  config's ``train_latent_seg`` section: ``teacher`` (TeacherTrainConfig keys), ``student``
  (StudentTrainConfig keys shared by every student), ``variants`` (list of {selection,
  channels, transform}; default no gate, dynamic, static 16/32/64/128 with Module-Deconv),
  ``qualities`` (default: the bank's), ``num_classes``.
* ``semlic eval-latent-seg``: :mod:`.evaluate`.

Reruns resume each training from its state; with ``keep_trained`` (the pipeline) a part whose
model file is written is kept as it is.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ...config_files import read_section
from ...errors import ConfigError
from ...fileio import atomic_write_text
from ...model_files import written_model

#: The commands this module adds to ``semlic`` (read by semlic.cli without importing it;
#: eval-latent-seg is added by .evaluate).
COMMANDS = {
    "train-hyperprior": "train CompressAI's bmshj2018-hyperprior at some qualities",
    "import-hyperprior": "a local CompressAI bmshj2018-hyperprior checkpoint -> a model file",
    "train-latent-seg": "DeepLabv3 teacher, then the compressed-domain students",
    "eval-latent-seg": "rate-mIoU of pixel-domain and compressed-domain segmentation",
}

DEFAULT_VARIANTS = ({"selection": "none"}, {"selection": "dynamic"},
                    *({"selection": "static", "channels": n} for n in (16, 32, 64, 128)))
HYPERPRIOR_KEYS = {"qualities", "per_quality"}
LATENT_SEG_KEYS = {"teacher", "student", "variants", "qualities", "num_classes", "seed"}


# --- the hyperprior ----------------------------------------------------------------------------
def hyperprior_quality_config(config: dict, quality: int) -> dict:
    """The training config of one quality: the shared keys, then ``per_quality[quality]``."""
    unknown_shared = {k: v for k, v in config.items() if k not in HYPERPRIOR_KEYS}
    per = (config.get("per_quality") or {}).get(quality) or (config.get("per_quality") or {}).get(str(quality)) or {}
    return {**unknown_shared, **per, "quality": int(quality)}


def train_hyperprior_quality(config: dict, quality: int, prepared_dir, out_dir, device: str = "cpu",
                             resume: bool = True, progress: bool = True, keep_trained: bool = False) -> dict:
    """One quality into ``out_dir/q<quality>/hyperprior.safetensors``."""
    from .hyperprior import HYPERPRIOR_FILE
    from .training import train_hyperprior

    target = Path(out_dir) / f"q{quality}"
    kept = written_model(target / HYPERPRIOR_FILE) if keep_trained else None
    if kept is not None:
        return {**kept, "quality": int(quality)}
    result = train_hyperprior(hyperprior_quality_config(config, quality), prepared_dir, target, device=device,
                              resume=resume, progress=progress)
    return {**result, "reused": False}


def hyperprior_qualities(config: dict) -> list[int]:
    from .hyperprior import check_quality

    qualities = config.get("qualities") or [3]
    return [check_quality(q) for q in qualities]


def train_hyperprior_bank(config: dict, prepared_dir, out_dir, device: str = "cpu", resume: bool = True,
                          progress: bool = True) -> dict:
    """Every quality one after the other (the pipeline runs them as parallel tasks), then the bank."""
    from .hyperprior import HYPERPRIOR_FILE, merge_banks

    results = {q: train_hyperprior_quality(config, q, prepared_dir, out_dir, device, resume, progress)
               for q in hyperprior_qualities(config)}
    bank = Path(out_dir) / HYPERPRIOR_FILE
    merge_banks([Path(out_dir) / f"q{q}" / HYPERPRIOR_FILE for q in results], bank)
    return {"bank": str(bank), "qualities": results}


# --- teacher and students ------------------------------------------------------------------------
def latent_seg_parts(config: dict, bank_qualities) -> tuple[list[int], list[dict]]:
    """(qualities, variants) of a train_latent_seg config, checked."""
    unknown = set(config) - LATENT_SEG_KEYS
    if unknown:
        raise ConfigError(f"train_latent_seg: unknown keys {sorted(unknown)}; known: {sorted(LATENT_SEG_KEYS)}")
    qualities = [int(q) for q in (config.get("qualities") or bank_qualities)]
    missing = sorted(set(qualities) - set(bank_qualities))
    if missing:
        raise ConfigError(f"train_latent_seg: qualities {missing} are not in the hyperprior model ({list(bank_qualities)})")
    variants = [dict(v) for v in (config.get("variants") or DEFAULT_VARIANTS)]
    selections = [v.get("selection", "none") for v in variants]
    if "static" in selections and ("dynamic" not in selections
                                   or selections.index("dynamic") > selections.index("static")):
        raise ConfigError("train_latent_seg: static students need a dynamic one before them (its gate's counts)")
    return qualities, variants


def teacher_path(out_dir) -> Path:
    from .training import TEACHER_FILE

    return Path(out_dir) / "teacher" / TEACHER_FILE


def train_teacher_part(config: dict, prepared_dir, out_dir, device: str = "cpu", resume: bool = True,
                       progress: bool = True, keep_trained: bool = False) -> dict:
    from .training import train_teacher

    kept = written_model(teacher_path(out_dir)) if keep_trained else None
    if kept is not None:
        return kept
    teacher_cfg = {"num_classes": config.get("num_classes", 11), **({"seed": config["seed"]} if "seed" in config else {}),
                   **(config.get("teacher") or {})}
    return {**train_teacher(teacher_cfg, prepared_dir, teacher_path(out_dir).parent, device, resume, progress),
            "reused": False}


def train_students(config: dict, prepared_dir, bank_path, quality: int, out_dir, device: str = "cpu",
                   resume: bool = True, progress: bool = True, keep_trained: bool = False) -> dict:
    """Every student of one quality (one after the other: static ones read the dynamic gate's counts)."""
    from ...model_files import load_model
    from ...segnet.prepared import load_labelled
    from .training import StudentTrainConfig, latent_inputs, most_selected, selection_counts, train_student

    bank = load_model(bank_path, device, expect="hyperprior")
    _, variants = latent_seg_parts(config, bank.config.qualities)
    teacher = load_model(teacher_path(out_dir), device, expect="deeplabv3")
    codec = bank.codec(quality)
    shared = {**({"seed": config["seed"]} if "seed" in config else {}), **(config.get("student") or {})}
    results, inputs, counts = {}, None, None
    base = Path(out_dir) / f"q{quality}"
    for variant in variants:
        cfg = StudentTrainConfig.from_dict({**shared, **variant, "quality": quality})
        target = base / cfg.label
        kept = written_model(target / f"latent_seg_q{quality}_{cfg.label}.safetensors") if keep_trained else None
        if kept is None or (cfg.selection == "dynamic" and counts is None):
            if inputs is None:
                images, labels = load_labelled(prepared_dir, progress=progress)
                inputs = latent_inputs(codec, teacher, images, labels, progress=progress)
        channels = ()
        if cfg.selection == "static":
            channels = most_selected(counts[0], cfg.channels, counts[1])
        if kept is not None:
            results[cfg.label] = kept
        else:
            results[cfg.label] = {**train_student(cfg, inputs, teacher, codec.M, target, channels, device, resume,
                                                  progress), "reused": False}
        if cfg.selection == "dynamic":
            student = load_model(results[cfg.label]["model_path"], device, expect="latent_seg")
            counts = selection_counts(student, inputs["y_hat"])
            atomic_write_text(base / "selection_counts.json", json.dumps(
                {"images": len(inputs["y_hat"]), "counts": counts[0].tolist(),
                 "probability": [round(float(p), 6) for p in counts[1]]}))
    return results


def train_latent_seg(config: dict, prepared_dir, bank_path, out_dir, device: str = "cpu", resume: bool = True,
                     progress: bool = True, keep_trained: bool = False) -> dict:
    """The teacher, then each quality's students (the pipeline runs the qualities as parallel tasks)."""
    from ...model_files import config_of

    _, bank_config = config_of(bank_path)
    qualities, _ = latent_seg_parts(config, bank_config.qualities)
    out = {"teacher": train_teacher_part(config, prepared_dir, out_dir, device, resume, progress, keep_trained)}
    for quality in qualities:
        out[f"q{quality}"] = train_students(config, prepared_dir, bank_path, quality, out_dir, device, resume, progress,
                                            keep_trained)
    return out


# --- the command line ------------------------------------------------------------------------------
def _print(results) -> None:
    print(json.dumps(results, indent=2, default=str))


def run_train_hyperprior(args: argparse.Namespace) -> int:
    config = read_section(args.config, "train_hyperprior")
    if args.quality:
        config["qualities"] = args.quality
    _print(train_hyperprior_bank(config, args.data, args.out, args.device, not args.restart, not args.no_progress))
    return 0


def run_import(args: argparse.Namespace) -> int:
    from .hyperprior import import_compressai

    bank = import_compressai(args.checkpoint, args.quality, into=args.into, out_path=args.out)
    print(f"{args.out}: hyperprior qualities {list(bank.config.qualities)}")
    return 0


def run_train_latent_seg(args: argparse.Namespace) -> int:
    config = read_section(args.config, "train_latent_seg")
    if args.num_classes is not None:
        config["num_classes"] = args.num_classes
    _print(train_latent_seg(config, args.data, args.hyperprior, args.out, args.device, not args.restart,
                            not args.no_progress, keep_trained=args.keep_trained))
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-hyperprior", help=COMMANDS["train-hyperprior"])
    p.add_argument("--data", required=True, help="prepared data directory (its train split)")
    p.add_argument("--out", required=True, help="output directory (q<Q>/ per quality, hyperprior.safetensors)")
    p.add_argument("--config", help="YAML with a train_hyperprior section")
    p.add_argument("--quality", type=int, action="append", help="a quality 1..8 (repeat; default: the config's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--restart", action="store_true", help="ignore existing training states")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_train_hyperprior)

    p = sub.add_parser("import-hyperprior", help=COMMANDS["import-hyperprior"])
    p.add_argument("checkpoint", help="a CompressAI checkpoint (.pth / .pth.tar: a state dict; tensors only)")
    p.add_argument("--quality", type=int, required=True, help="its quality 1..8")
    p.add_argument("--out", required=True, help="the hyperprior model file to write")
    p.add_argument("--into", help="an existing hyperprior model file whose other qualities are kept")
    p.set_defaults(func=run_import)

    p = sub.add_parser("train-latent-seg", help=COMMANDS["train-latent-seg"])
    p.add_argument("--data", required=True, help="prepared data directory (its train split with labels)")
    p.add_argument("--hyperprior", required=True, help="the hyperprior model file (semlic train-hyperprior)")
    p.add_argument("--out", required=True, help="output directory (teacher/, q<Q>/<student>/)")
    p.add_argument("--config", help="YAML with a train_latent_seg section")
    p.add_argument("--num-classes", type=int)
    p.add_argument("--device", default="cpu")
    p.add_argument("--keep-trained", action="store_true",
                   help="keep every model already written (train only the missing ones; default: train on)")
    p.add_argument("--restart", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_train_latent_seg)
