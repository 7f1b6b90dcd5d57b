"""How good is the segmentation EDMS derives from c^? mIoU of PSPNet(up(c^)) and of SMapNet's output.

For every image x of a prepared split, with its reference map s (PSPNet on x: what DSSLIC would
send and what SMapNet is trained to reproduce) and, where present, its ground truth:
c^ = round8(CompNet(x, s)) as the codec computes it, then

* ``pspnet_up_c``: argmax PSPNet(up(c^))            (the map of method edms_noenh)
* ``smapnet``:     argmax SMapNet(PSPNet(up(c^)))   (the map of method edms)
* ``pspnet_x``:    s itself (scored against the ground truth only)

each scored against s and against the ground truth (confusion matrices accumulated over the split,
:mod:`semlic.segnet.metrics` conventions), plus the PSNR of RecNet's prediction x' = RecNet(map, c^)
with each map (no residual): what the map is worth to the reconstruction.

The networks are found by their registered names (``dsslic``, ``pspnet``, ``smapnet``) among the
model files given (``--model FILE``, repeatable, or ``--models-dir DIR``).

Writes ``<out>/edms_segmentation.csv`` (one row per map) and ``<out>/edms_segmentation.md``.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from semlic.imageio import load_image, load_label_map  # noqa: E402
from semlic.layers import pad_to_multiple  # noqa: E402
from semlic.layered_codec import compact_image, predict  # noqa: E402
from semlic.methods.edms import matched as edms  # noqa: E402
from semlic.model_files import ModelStore  # noqa: E402
from semlic.segnet.metrics import confusion_matrix, scores_from_confusion  # noqa: E402
from semlic.segnet.prepared import list_prepared  # noqa: E402

MAPS = ("pspnet_x", "pspnet_up_c", "smapnet")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def evaluate(args) -> pd.DataFrame:
    store = ModelStore(files=args.model or (), dirs=args.models_dir or ())
    missing = [name for name in ("dsslic", "pspnet", "smapnet") if name not in store]
    if missing:
        raise SystemExit(f"no model file of {', '.join(missing)} among the given ones (--model / --models-dir)")
    model, segnet, smapnet = store["dsslic"], store["pspnet"], store["smapnet"]
    classes = segnet.config.num_classes
    vs_ref = {m: torch.zeros(classes, classes, dtype=torch.long) for m in MAPS}
    vs_gt = {m: torch.zeros(classes, classes, dtype=torch.long) for m in MAPS}
    psnrs = {m: [] for m in MAPS}
    up_psnrs = []
    samples = list_prepared(args.data, args.split)
    for sample in samples:
        image, ref = load_image(sample.image_path), load_label_map(Path(args.segs) / f"{sample.id}.png")
        h, w = ref.shape
        padded_ref = pad_to_multiple(ref, model.config.multiple)
        compact = compact_image(model, pad_to_multiple(image, model.config.multiple), padded_ref)
        maps = {"pspnet_x": padded_ref, "pspnet_up_c": edms.matched_segmentation(compact, model, segnet),
                "smapnet": edms.matched_segmentation(compact, model, segnet, smapnet)}
        gt = load_label_map(sample.label_path) if sample.label_path else None
        up = edms.upsampled_for_segnet(compact, model, torch.device("cpu"))[0, :, :h, :w]
        up_psnrs.append(psnr(torch.round(up * 255).permute(1, 2, 0).numpy(), image))
        for name, labels in maps.items():
            vs_ref[name] += confusion_matrix(labels[:h, :w], ref, classes)
            if gt is not None:
                vs_gt[name] += confusion_matrix(labels[:h, :w], gt, classes)
            psnrs[name].append(psnr(predict(model, compact, labels, (h, w)), image))
    rows = []
    for name in MAPS:
        ref_scores, gt_scores = scores_from_confusion(vs_ref[name]), scores_from_confusion(vs_gt[name])
        rows.append({"map": name, "images": len(samples),
                     "miou_vs_reference": ref_scores.miou, "pixel_acc_vs_reference": ref_scores.pixel_accuracy,
                     "miou_vs_ground_truth": gt_scores.miou, "pixel_acc_vs_ground_truth": gt_scores.pixel_accuracy,
                     "prediction_psnr_db": float(np.mean(psnrs[name])), "up_c_psnr_db": float(np.mean(up_psnrs))})
    return pd.DataFrame(rows)


def write_report(table: pd.DataFrame, args, seconds: float) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "edms_segmentation.csv", index=False, float_format="%.4f")
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    lines = [
        "# EDMS: the segmentation derived from the compact image",
        "",
        f"Data: `{args.data}`, split `{args.split}` ({int(table['images'][0])} images). "
        + (args.note or ""),
        "",
        "Command (from the repository root):",
        "",
        "```",
        " ".join(shlex.quote(a) for a in [f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')}", ".venv/bin/python", "benchmarks/edms_segmentation.py", *sys.argv[1:]]),
        "```",
        "",
        f"git {rev} (plus the working tree), torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, {seconds:.0f} s.",
        "",
        "| map | mIoU vs reference | pixel acc. vs reference | mIoU vs ground truth | pixel acc. vs ground truth "
        "| x' PSNR (dB, no residual) |",
        "|---|---|---|---|---|---|",
    ]
    names = {"pspnet_x": "PSPNet(x) = reference (DSSLIC sends it)", "pspnet_up_c": "PSPNet(up(c^)) (edms_noenh)",
             "smapnet": "SMapNet(PSPNet(up(c^))) (edms)"}
    for row in table.itertuples():
        lines.append(f"| {names[row.map]} | {row.miou_vs_reference:.4f} | {row.pixel_acc_vs_reference:.4f} | "
                     f"{row.miou_vs_ground_truth:.4f} | {row.pixel_acc_vs_ground_truth:.4f} | "
                     f"{row.prediction_psnr_db:.2f} |")
    lines += ["", f"PSNR of up(c^) itself against x (what PSPNet sees; mean over images): "
              f"{table['up_c_psnr_db'][0]:.2f} dB.", ""]
    (out / "edms_segmentation.md").write_text("\n".join(lines) + "\n" + (Path(args.append).read_text() if args.append else ""))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="prepared data directory")
    parser.add_argument("--split", default="test")
    parser.add_argument("--segs", required=True, help="reference maps <id>.png of the split (semlic segment)")
    parser.add_argument("--model", action="append", metavar="FILE",
                        help="a model file (repeatable): the dsslic, pspnet and smapnet models")
    parser.add_argument("--models-dir", action="append", metavar="DIR", help="a folder of model files (repeatable)")
    parser.add_argument("--out", default="reports")
    parser.add_argument("--note", help="a sentence for the report (e.g. what data set this is)")
    parser.add_argument("--append", help="a markdown file appended to the report (how the models were made)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    table = evaluate(args)
    write_report(table, args, time.perf_counter() - started)
    print(table.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
