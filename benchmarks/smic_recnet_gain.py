"""What SMIC's Rec-Net adds over the bicubic upsampling it starts from, and what the map is worth.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/smic_recnet_gain.py --prepared runs/smic/prep \\
        --models runs/smic/models --out reports/smic

For each test image and downsampling factor, the same small image (what SMIC's lossless layer
carries) is turned back into a full-size image four ways: ``bicubic`` (up(small), Rec-Net's
starting point: its output is up(small) + a learned correction), ``recnet_qp40`` and
``recnet_qp28`` (Rec-Net with SS-Net's map HEVC-coded at that QP: SMIC's decoder),
``recnet_truth`` (Rec-Net with the ground-truth labels drawn in the same palette: a perfect
segmenter with a lossless map) and ``recnet_blank`` (Rec-Net with an all-void map: no semantic
information). Every variant is scored with PSNR-RGB, MS-SSIM and LPIPS (AlexNet). Writes
``--out/recnet_gain.csv`` (means per factor and variant) and prints it as a table.

``--map-rates`` measures instead what the map layer costs: SS-Net's map and the ground-truth
map (same palette) HEVC-coded at each ``--qps``, mean bpp over the images, written to
``--out/map_rates.csv``.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from semlic import lpips, metrics  # noqa: E402
from semlic.image_codecs import get_codec  # noqa: E402
from semlic.imageio import load_image, load_label_map  # noqa: E402
from semlic.layers import tensor_to_uint8  # noqa: E402
from semlic.methods.smic.codec import FACTORS, downsample, draw_map, reconstruct, to_unit, upsample  # noqa: E402
from semlic.model_files import ModelStore  # noqa: E402
from semlic.segnet.prepared import list_prepared  # noqa: E402
from smic_camvid import arguments  # noqa: E402  (this folder: the SMIC benchmarks' shared arguments)


def map_rates(args) -> int:
    """Mean bpp of the HEVC-coded map (4:2:0, as SMIC's default) per QP: SS-Net's and the ground truth's."""
    ssnet = ModelStore(dirs=[args.models]).get("smic_ssnet")
    hevc = get_codec("hevc")
    samples = [s for s in list_prepared(args.prepared, args.split) if s.label_path is not None][: args.limit or None]
    rows = []
    for sample in samples:
        image = load_image(sample.image_path)
        h, w = image.shape[:2]
        maps = {"ssnet": draw_map(ssnet, image),
                "ground_truth": ssnet.draw(torch.from_numpy(load_label_map(sample.label_path))[None])[0]
                .permute(1, 2, 0).numpy()}
        for name, drawn in maps.items():
            for qp in args.qps:
                rows.append({"map": name, "qp": qp, "bpp": 8 * len(hevc.encode(drawn, qp, chroma="420")) / (h * w)})
    means = pd.DataFrame(rows).groupby(["map", "qp"], sort=True)["bpp"].mean().reset_index().assign(images=len(samples))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    means.to_csv(out / "map_rates.csv", index=False, float_format="%.6g")
    print(means.to_string(index=False))
    return 0


def main(argv=None) -> int:
    parser = arguments(__doc__.split("\n\n")[0])
    parser.add_argument("--qps", type=int, nargs="+", default=[40, 28])
    parser.add_argument("--map-rates", action="store_true", help="measure the map layer's bpp instead")
    args = parser.parse_args(argv)
    if args.map_rates:
        return map_rates(args)
    if lpips.get_model() is None:
        raise SystemExit("LPIPS weights missing: run `semlic convert-lpips` (make weights) first")
    store = ModelStore(dirs=[args.models])
    ssnet, recnet = store.get("smic_ssnet"), store.get("smic_recnet")
    hevc = get_codec("hevc")
    samples = [s for s in list_prepared(args.prepared, args.split) if s.label_path is not None][: args.limit or None]
    rows, started = [], time.time()
    for i, sample in enumerate(samples):
        image = load_image(sample.image_path)
        h, w = image.shape[:2]
        ref = lpips.reference(image)
        drawn = draw_map(ssnet, image)
        labels = load_label_map(sample.label_path)
        maps = {f"recnet_qp{q}": hevc.decode(hevc.encode(drawn, q, chroma="420"), 3) for q in args.qps}
        maps["recnet_truth"] = ssnet.draw(torch.from_numpy(labels)[None])[0].permute(1, 2, 0).numpy()
        maps["recnet_blank"] = ssnet.draw(torch.full((1, h, w), 255, dtype=torch.uint8))[0].permute(1, 2, 0).numpy()
        for factor in FACTORS:
            small = downsample(image, factor)
            outputs = {"bicubic": tensor_to_uint8(upsample(to_unit(small), (h, w)))}
            outputs.update({name: reconstruct(recnet, small, m, factor) for name, m in maps.items()})
            for variant, out in outputs.items():
                rows.append({"image_id": sample.id, "factor": factor, "variant": variant,
                             "psnr_rgb": metrics.psnr_rgb(image, out), "ms_ssim": metrics.ms_ssim_rgb(image, out),
                             "lpips": ref.distance(out)})
        if (i + 1) % 20 == 0:
            print(f"{i + 1}/{len(samples)} images, {time.time() - started:.0f} s", file=sys.stderr)
    frame = pd.DataFrame(rows)
    means = (frame.groupby(["factor", "variant"], sort=True)[["psnr_rgb", "ms_ssim", "lpips"]].mean()
             .reset_index().assign(images=len(samples)))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    means.to_csv(out / "recnet_gain.csv", index=False, float_format="%.6g")
    print("| factor | variant | PSNR-RGB | MS-SSIM | LPIPS |\n|---|---|---|---|---|")
    for r in means.itertuples():
        cells = [f"{v:.4f}" if math.isfinite(v) else "-" for v in (r.psnr_rgb, r.ms_ssim, r.lpips)]
        print(f"| {r.factor} | {r.variant} | " + " | ".join(cells) + " |")
    print(f"{len(samples)} images in {(time.time() - started) / 60:.1f} min", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
