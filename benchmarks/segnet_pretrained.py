"""Segmenters on CamVid under one CPU budget: ImageNet-initialised EfficientNet-Lite0 against training from scratch.

PSPNet (and the compressed-domain system's DeepLabv3 teacher), each setting trained alone.

Each setting trains with the same recipe as profiles/camvid_cpu.yaml's PSPNet (SGD, poly schedule,
crops of 192, scale 0.75-1.75, batch 8, the train split at 240x320) for at most ``--minutes`` of wall
time (the model is written when the budget runs out), one after the other so that none shares the
CPU; then each is scored on CamVid val and test at native size (mIoU from the summed confusion matrix).

    python benchmarks/segnet_pretrained.py --prepared data/prepared/camvid --weights weights \\
        --minutes 20 --work data/segnet_pretrained --out reports/segnet_pretrained

``--prepared``: ``semlic prepare --dataset camvid --size 240 320`` output. Settings (``--only`` picks):

* ``resnet18_scratch``: the profile's PSPNet today (ResNet-18 at half width, output stride 8, random init);
* ``lite0_scratch``: preset ``lite0`` (EfficientNet-Lite0, output stride 16), random init;
* ``lite0_imagenet``: the same, its backbone from weights/efficientnet_lite0.safetensors;
* ``lite0_imagenet_balanced``: the same with median-frequency class weights (``class_weights``);
* ``lite0_imagenet_skip``: ``lite0_imagenet`` with the 1/4-resolution skip decoder (``skip_channels`` 32);
* ``lite0_imagenet_skip_balanced``: both (the skip decoder and the class weights);
* ``deeplab_small_scratch``: the compressed-domain system's DeepLabv3 teacher today (preset ``small``,
  dilated ResNet-18 at half width, output stride 8, random init; its own recipe, Adam);
* ``deeplab_lite0_imagenet``: the teacher's preset ``lite0`` (EfficientNet-Lite0, output stride 16), ImageNet;
* ``ssnet_paper``: SMIC's SS-Net (preset ``small``, the paper's generator; reports/smic/train_smic.yaml's
  recipe), scored on the map it draws (a pixel painted void counts as wrong);
* ``ssnet_lite0_imagenet``: the same generator with EfficientNet-Lite0's stem and stages 1-2 as its
  encoder (``model.encoder``), ImageNet weights (``encoder_weights``).

``--threads N`` sets torch's threads: two settings may run side by side as two processes with
``--threads 1`` and their own ``--out`` (the report says how each ran).

Trains into ``WORK/<setting>/`` (resumable: a rerun continues); writes ``OUT/results.csv`` (one row per
setting: steps, s/step, val/test mIoU and pixel accuracy,
per-class test IoU) and ``OUT/report.md``; a setting already in results.csv is not run again.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import pandas as pd

SETTINGS = {
    "resnet18_scratch": {"model": dict(backbone="resnet18", base_channels=32, output_stride=8, head_channels=128,
                                       aux_channels=64, ppm_channels=32), "iterations_per_minute": 120},
    "lite0_scratch": {"preset": "lite0", "model": dict(output_stride=16), "iterations_per_minute": 85},
    "lite0_imagenet": {"preset": "lite0", "model": dict(output_stride=16), "iterations_per_minute": 85,
                       "weights": True},
    "lite0_imagenet_skip": {"preset": "lite0", "model": dict(output_stride=16, skip_channels=32),
                            "iterations_per_minute": 75, "weights": True},
    "lite0_imagenet_balanced": {"preset": "lite0", "model": dict(output_stride=16), "iterations_per_minute": 85,
                                "weights": True, "class_weights": "median_frequency"},
    "lite0_imagenet_skip_balanced": {"preset": "lite0", "model": dict(output_stride=16, skip_channels=32),
                                     "iterations_per_minute": 75, "weights": True,
                                     "class_weights": "median_frequency"},
    # the compressed-domain system's teacher (DeepLabv3, Adam 1e-3 -> 1e-4 for the last quarter, its own recipe)
    "deeplab_small_scratch": {"kind": "deeplabv3", "preset": "small", "iterations_per_minute": 100},
    "deeplab_lite0_imagenet": {"kind": "deeplabv3", "preset": "lite0", "iterations_per_minute": 85, "weights": True},
    # SMIC's SS-Net (preset small, reports/smic's recipe: Adam 2e-4, L1 x100 + its GAN, batch 4, crops of 128)
    "ssnet_paper": {"kind": "ssnet", "model": {}},
    "ssnet_lite0_imagenet": {"kind": "ssnet", "model": {"encoder": "efficientnet_lite0"}, "weights": True},
}
CLASSES = ("sky", "building", "pole", "road", "sidewalk", "tree", "sign", "fence", "car", "pedestrian", "bicyclist")


def cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown CPU"


def run(name: str, args) -> dict:
    if SETTINGS[name].get("kind") == "deeplabv3":
        return run_deeplab(name, args)
    if SETTINGS[name].get("kind") == "ssnet":
        return run_ssnet(name, args)
    import torch

    from semlic.segnet.evaluate import evaluate_segnet
    from semlic.segnet.pspnet import pspnet_config
    from semlic.segnet.train import train_segnet
    from semlic.model_files import load_model

    setting = SETTINGS[name]
    model = pspnet_config(setting.get("preset", "small"), 11, **setting["model"]).to_dict()
    config = {"model": model, "iterations": int(setting["iterations_per_minute"] * args.minutes), "batch_size": 8,
              "crop_size": 192, "scale_range": [0.75, 1.75], "checkpoint_every": 200, "log_every": 20,
              "minutes": args.minutes, "seed": args.seed}
    if setting.get("weights"):
        config["backbone_weights"] = str(Path(args.weights) / "efficientnet_lite0.safetensors")
    if setting.get("class_weights"):
        config["class_weights"] = setting["class_weights"]
    out = Path(args.work) / name
    started = time.perf_counter()
    summary = train_segnet(config, args.prepared, out, progress=False)
    wall = time.perf_counter() - started
    net = load_model(summary["model_path"], "cpu", expect="pspnet")
    row = training_row(name, args, model["backbone"], model["output_stride"], net, summary["step"],
                       summary["total_steps"], wall)
    for split in ("val", "test"):
        add_scores(row, split, evaluate_segnet(net, args.prepared, split, torch.device("cpu")))
    print(row, flush=True)
    return row


def training_row(name: str, args, backbone: str, output_stride: int, net, steps: int, planned: int,
                 wall: float) -> dict:
    """The columns every setting has: how it trained (threads, steps, seconds per step, parameters)."""
    import torch

    setting = SETTINGS[name]
    return {"setting": name, "threads": torch.get_num_threads(), "backbone": backbone, "output_stride": output_stride,
            "imagenet": bool(setting.get("weights")), "class_weights": setting.get("class_weights") or "-",
            "minutes": args.minutes, "steps": steps, "planned_steps": planned, "train_s": round(wall, 1),
            "s_per_step": round(wall / max(steps, 1), 3),
            "params_m": round(sum(p.numel() for p in net.parameters()) / 1e6, 3)}


def add_scores(row: dict, split: str, scores: dict) -> None:
    """mIoU and pixel accuracy of ``split`` into ``row`` (and the per-class IoU of test)."""
    row[f"{split}_miou"] = round(scores["miou"], 4)
    row[f"{split}_pixel_accuracy"] = round(scores["pixel_accuracy"], 4)
    if split == "test":
        row.update({f"iou_{c}": None if v is None else round(v, 4) for c, v in zip(CLASSES, scores["per_class_iou"])})


def run_deeplab(name: str, args) -> dict:
    import numpy as np
    import torch

    from semlic.imageio import load_image, load_label_map
    from semlic.methods.latent_seg.evaluate import teacher_labels
    from semlic.methods.latent_seg.networks import deeplab_config
    from semlic.methods.latent_seg.training import TEACHER_FILE, train_teacher
    from semlic.model_files import load_model
    from semlic.segnet.metrics import confusion_matrix, scores_from_confusion
    from semlic.segnet.prepared import list_prepared

    setting = SETTINGS[name]
    config = {"preset": setting["preset"], "num_classes": 11, "iterations": int(setting["iterations_per_minute"]
                                                                                * args.minutes),
              "minutes": args.minutes, "batch_size": 8, "crop": 192, "seed": args.seed, "checkpoint_every": 200,
              "log_every": 20}
    if setting.get("weights"):
        config["backbone_weights"] = str(Path(args.weights) / "efficientnet_lite0.safetensors")
    out = Path(args.work) / name
    started = time.perf_counter()
    summary = train_teacher(config, args.prepared, out, progress=False)
    wall = time.perf_counter() - started
    teacher = load_model(out / TEACHER_FILE, "cpu", expect="deeplabv3").eval()
    model = deeplab_config(setting["preset"], 11)
    row = training_row(name, args, model.backbone, model.output_stride, teacher, summary["iteration"],
                       summary["total_iterations"], wall)
    for split in ("val", "test"):
        confusion = torch.zeros(11, 11, dtype=torch.int64)
        for sample in list_prepared(args.prepared, split)[: args.eval_limit]:
            labels = torch.from_numpy(load_label_map(sample.label_path).astype(np.int64))
            predicted = torch.from_numpy(teacher_labels(teacher, load_image(sample.image_path)).astype(np.int64))
            confusion += confusion_matrix(predicted[None], labels[None], 11, 255)
        add_scores(row, split, scores_from_confusion(confusion).to_dict())
    print(row, flush=True)
    return row


def run_ssnet(name: str, args) -> dict:
    import numpy as np
    import torch

    from semlic.imageio import load_image, load_label_map
    from semlic.methods.smic.codec import draw_map
    from semlic.methods.smic.training import SSNET_FILE, train_ssnet
    from semlic.model_files import load_model
    from semlic.segnet.prepared import list_prepared

    setting = SETTINGS[name]
    config = {"preset": "small", "model": setting["model"], "num_classes": 11, "iterations": 100000,
              "minutes": args.minutes, "batch_size": 4, "crop": 128, "seed": args.seed, "checkpoint_every": 500,
              "log_every": 10}
    if setting.get("weights"):
        config["encoder_weights"] = str(Path(args.weights) / "efficientnet_lite0.safetensors")
    out = Path(args.work) / name
    started = time.perf_counter()
    summary = train_ssnet(config, args.prepared, out, progress=False)
    wall = time.perf_counter() - started
    ssnet = load_model(out / SSNET_FILE, "cpu", expect="smic_ssnet").eval()
    row = training_row(name, args, f"ssnet_small/{ssnet.config.encoder}", 4, ssnet, summary.iteration,
                       summary.total_iterations, wall)
    k = 11
    for split in ("val", "test"):
        # rows: true class (void ignored); columns: the class SS-Net paints, k = void (always wrong)
        confusion = np.zeros((k, k + 1), np.int64)
        for sample in list_prepared(args.prepared, split)[: args.eval_limit]:
            drawn = draw_map(ssnet, load_image(sample.image_path))
            predicted = ssnet.labels(torch.from_numpy(drawn).permute(2, 0, 1)[None].float() / 127.5 - 1)[0].numpy()
            truth = load_label_map(sample.label_path)
            valid = truth < k
            confusion += np.bincount(truth[valid].astype(np.int64) * (k + 1) + predicted[valid],
                                     minlength=k * (k + 1)).reshape(k, k + 1)
        tp = np.diag(confusion[:, :k]).astype(float)
        union = confusion.sum(1) + confusion[:, :k].sum(0) - tp
        present = confusion.sum(1) > 0
        iou = [float(t / u) if p else None for t, u, p in zip(tp, union, present)]
        add_scores(row, split, {"miou": float(np.mean(tp[present] / union[present])),
                                "pixel_accuracy": float(tp.sum() / confusion.sum()), "per_class_iou": iou})
    print(row, flush=True)
    return row


def report(rows: pd.DataFrame, args) -> str:
    lines = [
        "# Segmenters on CamVid within one CPU budget: ImageNet EfficientNet-Lite0 against training from scratch", "",
        "Commands (in order; each adds the settings it names):", "",
        *[f"    {line}" for line in (Path(args.out) / "commands.txt").read_text().splitlines()], "",
        f"Machine: {cpu_name()}, {os.cpu_count()} cores; each setting trained for at most its budget of wall time "
        "(the model written when the budget ran out) on CamVid train at 240x320, alone on the machine with the "
        "torch threads of its `threads` column (two 1-thread settings ran side by side, one core each), "
        f"seed {args.seed}: PSPNet with its recipe (SGD 0.01, head x10, poly, batch 8, crops of 192, scale "
        "0.75-1.75), the DeepLabv3 teacher with its own (Adam 1e-3, x0.1 for the last quarter, batch 8, crops of "
        "192, no rescaling), SS-Net with SMIC's (Adam 2e-4, L1 x100 + its GAN, batch 4, crops of 128); scored at "
        "native size (480x360; mIoU from the summed confusion matrix, 11 classes).", "",
        "| setting | backbone | OS | ImageNet | class weights | minutes | threads | steps (planned) | s/step "
        "| params (M) | val mIoU | test mIoU | test pixel acc. |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows.itertuples():
        lines.append(f"| {r.setting} | {r.backbone} | {r.output_stride} | {'yes' if r.imagenet else 'no'} | "
                     f"{r.class_weights} | {r.minutes:g} | {r.threads:g} | {r.steps} ({r.planned_steps}) | "
                     f"{r.s_per_step:.3f} | "
                     f"{r.params_m:.2f} | {r.val_miou:.3f} | {r.test_miou:.3f} | {r.test_pixel_accuracy:.3f} |")
    lines += ["", "Test IoU per class:", "", "| setting | " + " | ".join(CLASSES) + " |",
              "|---|" + "---|" * len(CLASSES)]
    for r in rows.to_dict("records"):
        lines.append(f"| {r['setting']} | " + " | ".join("-" if pd.isna(r[f'iou_{c}']) else f"{r[f'iou_{c}']:.3f}"
                                                         for c in CLASSES) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepared", required=True, help="semlic prepare --dataset camvid --size 240 320 output")
    parser.add_argument("--weights", default="weights", help="folder holding efficientnet_lite0.safetensors")
    parser.add_argument("--minutes", type=float, default=20.0, help="training budget per setting")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-limit", type=int, help="score the teachers on the first N images only (a dry run)")
    parser.add_argument("--only", nargs="*", choices=sorted(SETTINGS), help="settings to run (default: all)")
    parser.add_argument("--out", default="reports/segnet_pretrained", help="results.csv and report.md")
    parser.add_argument("--work", default="data/segnet_pretrained", help="training folders (models, logs)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, every core)")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = out / "results.csv"
    rows = pd.read_csv(table) if table.is_file() else pd.DataFrame()
    if len(rows):
        rows["class_weights"] = rows["class_weights"].fillna("-") if "class_weights" in rows else "-"
        # rows from before the column ran with torch's default threads: every core of the 2-core machine
        rows["threads"] = rows["threads"].fillna(2) if "threads" in rows else 2
    for name in args.only or list(SETTINGS):
        if len(rows) and name in set(rows["setting"]):
            continue
        rows = pd.concat([rows, pd.DataFrame([run(name, args)])], ignore_index=True)
        rows.to_csv(table, index=False)
    command = "python benchmarks/segnet_pretrained.py " + " ".join(sys.argv[1:] if argv is None else argv)
    commands = out / "commands.txt"      # every invocation that added rows, in order
    previous = commands.read_text().splitlines() if commands.is_file() else []
    commands.write_text("\n".join(dict.fromkeys(previous + [command])) + "\n")
    (out / "report.md").write_text(report(rows, args))
    print((out / "report.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
