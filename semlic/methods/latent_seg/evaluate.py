"""Rate-mIoU of segmentation in the pixel domain and in the compressed domain (the paper's Tables 1-3).

For every test image and hyperprior quality, from real files:

* ``pixel``: the whole file (hyper + every latent channel) is decoded to pixels, then the teacher
  DeepLabv3 segments them. bpp = the file.
* each student (``no_gate``, ``dynamic``, ``static<N>``, ``..._res``): the encoder sends the hyper
  layer and the channels the student reads (the dynamic gate's choice for this image, the
  static list, or all), with the channel mask in the header; the decoder entropy-decodes only
  those and runs the student. bpp = that file; ``bpp_image`` = the same file with the rest layer
  too (what decoding the image as well costs).

Timing per image: ``enc_s`` from the image to the file's bytes (g_a, the hyperprior, the gate,
entropy coding); ``task_s`` from the bytes to the label map (parsing, entropy decoding, and g_s +
DeepLabv3 or the student). Each row keeps the image's confusion matrix, so the data set's mIoU
is computed from the summed matrices (:func:`summary`), as segmentation benchmarks do.

Rows (one Parquet table of its own): dataset, image_id, method, quality, channels, bpp,
bpp_image, psnr_rgb (pixel rows), miou, pixel_accuracy, enc_s, task_s, confusion, pixels, git_rev.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from ... import format as fmt
from ... import metrics, results
from ...errors import ConfigError
from ...fileio import write_parquet
from ...imageio import load_image, load_label_map
from ...segnet.metrics import confusion_matrix, scores_from_confusion
from ...segnet.prepared import list_prepared
from .codec import HyperpriorCodec, encode_latents, image_tensor, read_latents
from .hyperprior import analyse, pad, synthesise
from .networks import DeepLabV3, LatentSegNet, normalise

COLUMNS = ["dataset", "image_id", "method", "quality", "channels", "bpp", "bpp_image", "psnr_rgb", "miou",
           "pixel_accuracy", "enc_s", "task_s", "confusion", "pixels", "git_rev"]
SORT = ["dataset", "method", "quality", "image_id"]


@torch.inference_mode()
def teacher_labels(teacher: DeepLabV3, image: np.ndarray) -> np.ndarray:
    """DeepLabv3's (H, W) labels for an (H, W, 3) uint8 image (padded to 64 like the codec's input)."""
    h, w = image.shape[:2]
    logits = teacher(normalise(pad(image_tensor(image)), *teacher.pixel_stats))
    return logits[0, :, :h, :w].argmax(0).to(torch.uint8).numpy()


@torch.inference_mode()
def student_labels(student: LatentSegNet, y_sent: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """The student's labels from the latents a file carries (unsent channels zero)."""
    logits = student.forward_sent(y_sent)
    return logits[0, :, :size[0], :size[1]].argmax(0).to(torch.uint8).numpy()


def _row(dataset, image_id, method, quality, channels, bits, bits_image, psnr, confusion, enc_s, task_s, h, w,
         git_rev) -> dict:
    scores = scores_from_confusion(confusion)
    return {"dataset": dataset, "image_id": image_id, "method": method, "quality": int(quality),
            "channels": int(channels), "bpp": bits / (h * w), "bpp_image": bits_image / (h * w), "psnr_rgb": psnr,
            "miou": scores.miou, "pixel_accuracy": scores.pixel_accuracy, "enc_s": enc_s, "task_s": task_s,
            "confusion": confusion.reshape(-1).astype(np.int64).tolist(), "pixels": h * w, "git_rev": git_rev}


def evaluate(samples, bank, teacher: DeepLabV3, students: Iterable[LatentSegNet], *, dataset: str,
             qualities: Iterable[int] | None = None, git_rev: str | None = None, progress: bool = True) -> pd.DataFrame:
    """Rows (module docstring) for ``samples`` (PreparedSample with labels) at each quality."""
    method = HyperpriorCodec()
    models = {"hyperprior": bank}
    qualities = list(qualities or bank.config.qualities)
    students = list(students)
    for student in students:
        if student.config.quality not in qualities:
            continue
        if student.config.latent_channels != bank.codec(student.config.quality).M:
            raise ConfigError(f"student {student.config.label} reads {student.config.latent_channels} channels, the "
                              f"quality-{student.config.quality} codec has {bank.codec(student.config.quality).M}")
    k = teacher.config.num_classes
    git_rev = git_rev or results.git_revision()
    rows = []
    bar = tqdm(total=len(samples) * len(qualities), desc="eval latent seg", disable=not progress)
    for sample in samples:
        image = load_image(sample.image_path)
        truth = load_label_map(sample.label_path)
        h, w = image.shape[:2]
        for quality in qualities:
            codec = bank.codec(quality)
            start = time.perf_counter()
            latents = analyse(codec, image_tensor(image))
            analyse_s = time.perf_counter() - start
            # the pixel domain: the whole file, decoded, then the teacher
            t = time.perf_counter()
            data = fmt.pack(encode_latents(method, bank, quality, latents, (h, w)))
            enc_s = analyse_s + time.perf_counter() - t
            t = time.perf_counter()
            sem = method.open(data, models)
            y_all, _ = read_latents(sem, bank, need_all=True)
            decoded = synthesise(codec, y_all, (h, w))
            labels = teacher_labels(teacher, decoded)
            task_s = time.perf_counter() - t
            confusion = confusion_matrix(labels, truth, k).numpy()
            rows.append(_row(dataset, sample.id, "pixel", quality, codec.M, 8 * len(data), 8 * len(data),
                             metrics.psnr_rgb(image, decoded), confusion, enc_s, task_s, h, w, git_rev))
            for student in (s for s in students if s.config.quality == quality):
                t = time.perf_counter()
                with torch.inference_mode():
                    channels = student.channels_for(latents.y_hat)
                data = fmt.pack(encode_latents(method, bank, quality, latents, (h, w), channels, with_rest=False))
                enc_s = analyse_s + time.perf_counter() - t
                full = fmt.pack(encode_latents(method, bank, quality, latents, (h, w), channels, with_rest=True))
                t = time.perf_counter()
                y_sent, _ = read_latents(method.open(data, models), bank)
                labels = student_labels(student, y_sent, (h, w))
                task_s = time.perf_counter() - t
                confusion = confusion_matrix(labels, truth, k).numpy()
                rows.append(_row(dataset, sample.id, student.config.label, quality, len(channels), 8 * len(data),
                                 8 * len(full), float("nan"), confusion, enc_s, task_s, h, w, git_rev))
            bar.update()
    bar.close()
    return pd.DataFrame(rows, columns=COLUMNS).sort_values(SORT, kind="stable").reset_index(drop=True)


def task_rows(rows: pd.DataFrame, method: str = HyperpriorCodec.name) -> pd.DataFrame:
    """The rows as task rows of semlic.machines (coding for machines, beside every other method's):
    ``pixel`` becomes output ``decoded+teacher`` (the whole file decoded, then DeepLabv3), each student
    ``student:<label>`` (the hyper and task layers only); the confusion matrices gain the void row and
    column (empty: these networks always name a class)."""
    from ... import machines

    out = []
    for row in rows.itertuples(index=False):
        matrix = np.asarray(row.confusion, dtype=np.int64)
        k = int(round(len(matrix) ** 0.5))
        padded = np.zeros((k + 1, k + 1), np.int64)
        padded[:k, :k] = matrix.reshape(k, k)
        output = "decoded+teacher" if row.method == "pixel" else f"student:{row.method}"
        out.append(machines.make_row(row.dataset, row.image_id, method, str(int(row.quality)), output,
                                 row.bpp * row.pixels / 8.0, padded, int(row.pixels), row.task_s))
    return machines.frame(out)


def summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (method, quality): mean bpp, bpp_image, channels, times; mIoU from the summed confusion."""
    out = []
    for (method, quality), group in rows.groupby(["method", "quality"], sort=True):
        confusion = np.sum(np.stack([np.asarray(c, np.int64) for c in group["confusion"]]), axis=0)
        k = int(round(len(confusion) ** 0.5))
        scores = scores_from_confusion(confusion.reshape(k, k))
        out.append({"method": method, "quality": int(quality), "images": len(group),
                    "channels": float(group["channels"].mean()), "bpp": float(group["bpp"].mean()),
                    "bpp_image": float(group["bpp_image"].mean()), "psnr_rgb": float(group["psnr_rgb"].mean()),
                    "miou": scores.miou, "pixel_accuracy": scores.pixel_accuracy,
                    "enc_s": float(group["enc_s"].median()), "task_s": float(group["task_s"].median())})
    return pd.DataFrame(out)


def count_macs(module: nn.Module, *inputs: torch.Tensor) -> int:
    """Multiply-accumulates of the convolutions and transposed convolutions of one forward pass."""
    total = [0]

    def hook(layer, args, output):
        if isinstance(layer, nn.Conv2d):
            per_output = (layer.in_channels // layer.groups) * layer.kernel_size[0] * layer.kernel_size[1]
            total[0] += output.numel() * per_output
        elif isinstance(layer, nn.ConvTranspose2d):
            per_input = (layer.out_channels // layer.groups) * layer.kernel_size[0] * layer.kernel_size[1]
            total[0] += args[0].numel() * per_input

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    try:
        with torch.inference_mode():
            module(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return total[0]


def transform_macs(students: Iterable[LatentSegNet], height: int, width: int) -> pd.DataFrame:
    """MACs of each student's transform module for an H x W image (latents at ceil(H/64)*4 x ...)."""
    rows = []
    lh, lw = -(-height // 64) * 4, -(-width // 64) * 4
    for student in students:
        n_in = len(student.config.channels) if student.config.selection == "static" else student.config.latent_channels
        rows.append({"method": student.config.label, "quality": student.config.quality,
                     "transform": student.config.transform, "input_channels": n_in,
                     "gmacs": count_macs(student.transform.eval(), torch.zeros(1, n_in, lh, lw)) / 1e9,
                     "params": sum(p.numel() for p in student.transform.parameters())})
    return pd.DataFrame(rows)


def load_students(models_dir, device: str = "cpu") -> list[LatentSegNet]:
    """Every ``latent_seg`` model file under ``models_dir`` (sorted by path)."""
    from ...errors import CheckpointError
    from ...model_files import load_model, model_name_of, read_metadata

    found = []
    for path in sorted(Path(models_dir).rglob("*.safetensors")):
        try:
            name = model_name_of(read_metadata(path), path)
        except CheckpointError:   # training states beside the models
            continue
        if name == "latent_seg":
            found.append(load_model(path, device, expect="latent_seg"))
    return found


def run_eval(args: argparse.Namespace) -> int:
    from ...model_files import load_model
    from .commands import teacher_path

    bank = load_model(args.hyperprior, args.device, expect="hyperprior")
    teacher = load_model(args.teacher or teacher_path(args.models), args.device, expect="deeplabv3")
    students = load_students(args.models, args.device)
    samples = [s for s in list_prepared(args.data, args.split) if s.label_path is not None]
    if args.limit:
        samples = samples[:args.limit]
    if not samples:
        raise ConfigError(f"{args.data}: split {args.split} has no labelled images")
    rows = evaluate(samples, bank, teacher, students, dataset=args.dataset, qualities=args.quality,
                    progress=not args.no_progress)
    write_parquet(rows, Path(args.out))
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(summary(rows).to_string(index=False))
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval-latent-seg", help="rate-mIoU of pixel-domain and compressed-domain segmentation")
    p.add_argument("--data", required=True, help="prepared data directory")
    p.add_argument("--hyperprior", required=True, help="the hyperprior model file")
    p.add_argument("--models", required=True, help="train-latent-seg's output directory (teacher/ and the students)")
    p.add_argument("--teacher", help="the DeepLabv3 model file (default: MODELS/teacher/deeplabv3.safetensors)")
    p.add_argument("--out", required=True, help="the rows' Parquet file")
    p.add_argument("--split", default="test")
    p.add_argument("--dataset", default="camvid", help="the rows' dataset column")
    p.add_argument("--quality", type=int, action="append", help="only these qualities (repeat)")
    p.add_argument("--limit", type=int, help="only the first N images")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_eval)


def plot_rate_miou(table: pd.DataFrame, path: Path, title: str = "") -> None:
    """mIoU against bpp, one curve per method over the qualities (the paper's Fig. 5)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for method, group in table.sort_values("bpp").groupby("method", sort=True):
        style = {"color": "black", "linestyle": "--", "marker": "s"} if method == "pixel" else {"marker": "o"}
        ax.plot(group["bpp"], group["miou"], label=method, **style)
    ax.set_xlabel("bpp (the file the task receives)")
    ax.set_ylabel("mIoU")
    ax.set_title(title or "rate-mIoU: pixel domain vs compressed domain")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(rows: pd.DataFrame, out_dir, students: Iterable[LatentSegNet] = (), image_size=None) -> dict:
    """rows.parquet, task_rows.parquet (:func:`task_rows`), summary.csv, macs.csv (when students are given),
    rate_miou.png, metrics.json (mIoU per method and quality); returns {<method>_q<quality>: {bpp, miou}}."""
    import json

    from ...fileio import atomic_write_text

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_parquet(rows, out_dir / "rows.parquet")
    write_parquet(task_rows(rows), out_dir / "task_rows.parquet")
    table = summary(rows)
    table.to_csv(out_dir / "summary.csv", index=False, float_format="%.6g")
    students = list(students)
    if students and image_size is not None:
        transform_macs(students, *image_size).to_csv(out_dir / "macs.csv", index=False, float_format="%.6g")
    plot_rate_miou(table, out_dir / "rate_miou.png")
    metrics_ = {f"{r.method}_q{r.quality}": {"bpp": round(r.bpp, 5), "miou": round(r.miou, 4)}
                for r in table.itertuples()}
    # dvc metrics / dvc exp show: one column per (method, quality), its mIoU; the rates are in summary.csv
    headline = {"miou": {name: figures["miou"] for name, figures in metrics_.items()}}
    atomic_write_text(out_dir / "metrics.json", json.dumps(headline, indent=2, sort_keys=True) + "\n")
    return metrics_
