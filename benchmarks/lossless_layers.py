"""Which lossless codec for the segmentation and compact-image layers? Measured, not assumed.

For every candidate (PNG, WebP lossless, JPEG XL lossless) and the per-layer "best of" (what
the ``lossless="best"`` option of the DSSLIC / EDMS methods does: semlic.layers.code_lossless),
this prints and records the mean bytes and encode/decode milliseconds on:
- segmentation maps: the CamVid test label maps (11 classes + void), 480x360;
- compact images: Kodak images area-downsampled by 8 (96x64 or 64x96), a stand-in for
  CompNet's output, which is trained to look like a small version of the image; and, with
  ``--model``, the real compact images of that DSSLIC model file (registered model ``dsslic``) on
  Kodak (segmentation = zeros).

Usage: python benchmarks/lossless_layers.py [--shared ../shared/data] [--out reports/lossless]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from semlic.image_codecs import LOSSLESS, get_codec  # noqa: E402
from semlic.imageio import load_image, load_label_map  # noqa: E402
from semlic.results import git_revision  # noqa: E402


def measure(arrays: list[np.ndarray], layer: str) -> list[dict]:
    rows = []
    for i, array in enumerate(arrays):
        sizes = {}
        for name in LOSSLESS:
            codec = get_codec(name)
            t = time.perf_counter()
            data = codec.encode(array)
            enc = time.perf_counter() - t
            t = time.perf_counter()
            back = codec.decode(data, 1 if array.ndim == 2 else 3)
            dec = time.perf_counter() - t
            assert np.array_equal(back, array), name
            sizes[name] = len(data)
            rows.append({"layer": layer, "item": i, "codec": name, "bytes": len(data), "enc_ms": 1e3 * enc,
                         "dec_ms": 1e3 * dec})
        best = min(sizes, key=sizes.get)
        rows.append({"layer": layer, "item": i, "codec": "best", "bytes": sizes[best], "enc_ms": float("nan"),
                     "dec_ms": float("nan"), "winner": best})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--out", default="reports/lossless")
    parser.add_argument("--model", help="a DSSLIC model file (dsslic.safetensors): also measure its real compact images")
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args(argv)
    shared = Path(args.shared)
    labels = [load_label_map(p) for p in sorted((shared / "camvid" / "testannot").glob("*.png"))[: args.limit]]
    kodak = [load_image(p) for p in sorted((shared / "kodak").glob("kodim*.png"))[: args.limit]]
    small = [np.asarray(Image.fromarray(k).reduce(8)) for k in kodak]
    rows = measure(labels, "segmentation (CamVid test labels)") + measure(small, "compact (Kodak / 8, box filter)")
    if args.model:
        from semlic.layers import pad_to_multiple
        from semlic.layered_codec import compact_image
        from semlic.model_files import load_model

        model = load_model(args.model, expect="dsslic")
        compacts = []
        for image in kodak:
            padded = pad_to_multiple(image, model.config.multiple)
            compacts.append(compact_image(model, padded, np.zeros(padded.shape[:2], np.uint8)))
        rows += measure(compacts, "compact (CompNet of the given model)")
    df = pd.DataFrame(rows)
    summary = (df.groupby(["layer", "codec"], sort=False)
                 .agg(mean_bytes=("bytes", "mean"), enc_ms=("enc_ms", "mean"), dec_ms=("dec_ms", "mean"))
                 .round(1).reset_index())
    winners = df[df.codec == "best"].groupby("layer")["winner"].value_counts().rename("images").reset_index()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    summary.to_csv(out.with_suffix(".csv"), index=False)
    command = "python benchmarks/lossless_layers.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = ["# Lossless codec for the segmentation and compact layers\n",
            f"Command: `{command.strip()}`  \nRevision: {git_revision()}  \n"
            f"Machine: 2 CPU cores (codecs single-threaded)\n",
            summary.to_markdown(index=False), "\nPer-image winner of the smallest file:\n",
            winners.to_markdown(index=False), ""]
    out.with_suffix(".md").write_text("\n".join(text))
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
