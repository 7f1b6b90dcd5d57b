"""Here (no GPU): prepare CamVid with ``semlic prepare`` and write the data packs that travel.

    .venv/bin/python scripts/gpu_study/pack_data.py                 # the study: build/gpu-data/*.tar
    .venv/bin/python scripts/gpu_study/pack_data.py --dry-run       # a few images: build/gpu-dryrun-data/

Writes ``camvid-train.tar`` (train split resized to 256x256 by ``semlic prepare``, labels NEAREST),
``camvid-test.tar`` (a fixed subset of the test split, native 480x360: ``--test-count`` evenly
spaced images of the sorted ids, the first and the last included, both sequences covered;
:func:`semlic.code_stage.sample_images`, as ``code.sample`` picks them) and ``kodak.tar`` (24
images, native), each images as JPEG XL lossless + label PNGs + a pixel-hash index
(datapack.py), and prints their sizes against the 64 MiB that may travel in the one call
(with the working tree and the wheels). The prepared PNGs stay in build/gpu-study/.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import datapack  # noqa: E402

MIB = 1 << 20


def _semlic() -> list[str]:
    return [sys.executable, "-m", "semlic"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--camvid", default=str(REPO.parent / "shared" / "data" / "camvid"))
    parser.add_argument("--kodak", default=str(REPO.parent / "shared" / "data" / "kodak"))
    parser.add_argument("--prepared", default=None, help="prepare output (default build/gpu-study/prepared[-dryrun])")
    parser.add_argument("--out", default=None, help="pack folder (default build/gpu-data or build/gpu-dryrun-data)")
    parser.add_argument("--size", type=int, default=256, help="side of the resized train split (default 256)")
    parser.add_argument("--dry-run", action="store_true", help="a few images per pack (--train-limit etc.)")
    parser.add_argument("--train-limit", type=int, default=8)
    parser.add_argument("--test-limit", type=int, default=3)
    parser.add_argument("--kodak-limit", type=int, default=2)
    parser.add_argument("--test-count", type=int, default=36,
                        help="CamVid test images that travel (evenly spaced; default 36: what fits beside the "
                             "train split, Kodak, the wheels and the working tree in 64 MiB)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    tag = "-dryrun" if args.dry_run else ""
    prepared = Path(args.prepared or REPO / "build" / "gpu-study" / f"prepared{tag}" / "camvid")
    out = Path(args.out or REPO / "build" / f"gpu{tag}-data")
    limits = (args.train_limit, args.test_limit, args.kodak_limit) if args.dry_run else (None, None, None)

    started = time.time()
    command = _semlic() + ["prepare", "--dataset", "camvid", "--root", args.camvid, "--out", str(prepared),
                           "--splits", "train", "test", "--resize-splits", "train", "--size", str(args.size),
                           str(args.size), "--workers", str(args.workers), "--no-progress"]
    if args.dry_run:
        command += ["--limit", str(max(args.train_limit, args.test_limit))]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})

    from semlic.code_stage import sample_images

    def split_items(split: str, limit: int | None, count: int | None = None):
        images = sample_images(sorted((prepared / split / "images").glob("*.png")), count, limit)
        return [(p.stem, p, prepared / split / "labels" / p.name if (prepared / split / "labels" / p.name).is_file()
                 else None) for p in images]

    kodak = [(p.stem, p, None) for p in sorted(Path(args.kodak).glob("kodim*.png"))[:limits[2]]]
    packs = {"camvid-train.tar": ("camvid", "train", split_items("train", limits[0])),
             "camvid-test.tar": ("camvid", "test", split_items("test", limits[1],
                                                               None if args.dry_run else args.test_count)),
             "kodak.tar": ("kodak", "test", kodak)}
    sizes = {}
    for name, (dataset, split, items) in packs.items():
        datapack.pack(items, out / name, dataset, split, workers=args.workers)
        sizes[name] = {"images": len(items), "bytes": (out / name).stat().st_size,
                       "png_bytes": sum(p.stat().st_size for _, p, _ in items)}
        print(f"{name}: {len(items)} images, {sizes[name]['bytes'] / MIB:.2f} MiB "
              f"(PNG {sizes[name]['png_bytes'] / MIB:.2f} MiB)", flush=True)
    sizes["camvid-test.tar"]["ids"] = [image_id for image_id, _, _ in packs["camvid-test.tar"][2]]
    (out / "sizes.json").write_text(json.dumps(sizes, indent=2) + "\n")
    print(f"done in {time.time() - started:.0f} s; sizes in {out / 'sizes.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
