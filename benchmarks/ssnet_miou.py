"""SMIC's SS-Net against the ground truth: the test mIoU of the map it draws, snapped to the palette.

    .venv/bin/python benchmarks/ssnet_miou.py MODELS/smic/ssnet/smic_ssnet.safetensors PREPARED/camvid

mIoU over the data set's classes from the summed confusion matrix (void pixels of the ground truth
ignored; a pixel SS-Net paints void counts as wrong), and pixel accuracy, as reports/smic.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from semlic.imageio import load_image, load_label_map  # noqa: E402
from semlic.methods.smic.codec import draw_map  # noqa: E402
from semlic.model_files import load_model  # noqa: E402
from semlic.segnet.metrics import confusion_matrix  # noqa: E402
from semlic.segnet.prepared import list_prepared  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="an SS-Net model file (smic_ssnet.safetensors)")
    parser.add_argument("prepared", help="a prepared data set with labels (its test split)")
    parser.add_argument("--split", default="test")
    args = parser.parse_args(argv)
    ssnet = load_model(args.model, expect="smic_ssnet")
    k = ssnet.config.num_classes
    total = np.zeros((k + 1, k + 1))   # the last class: void, which SS-Net may paint
    samples = list_prepared(args.prepared, args.split)
    for sample in tqdm(samples, desc="SS-Net maps"):
        drawn = draw_map(ssnet, load_image(sample.image_path))
        with torch.no_grad():
            labels = ssnet.labels(torch.from_numpy(drawn).permute(2, 0, 1)[None].float() / 127.5 - 1)[0]
        truth = torch.from_numpy(load_label_map(sample.label_path).astype(np.int64))
        total += confusion_matrix(labels, truth, k + 1).numpy()
    hits = np.diag(total)[:k]
    iou = hits / (total.sum(1)[:k] + total.sum(0)[:k] - hits)
    print(f"{args.model}: {len(samples)} {args.split} images, mIoU {iou.mean():.3f}, "
          f"pixel accuracy {hits.sum() / total.sum():.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
