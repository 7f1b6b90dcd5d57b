"""Encode and decode seconds per Kodak image of a registered coding method at paper size, and peak memory.

Every network the method uses (:attr:`Method.models` and :attr:`Method.encoder_models`) is
built at the paper's configuration (:func:`semlic.model_files.build_model`, preset ``paper``;
DSSLIC: CompNet + FineNet, ngf 64, 9 residual blocks, 151 classes as for ADE20K) with
*untrained* weights: timing does not depend on the weights, but the residual of an untrained
model is larger than a trained one's, so the HEVC share is pessimistic. Kodak has no labels:
for a method that takes a segmentation map the map is the image quantised to 12 colours (Pillow
median cut), a label map with the region structure of a real one. Decoding runs in a fresh
process (the models found in a folder by their registered names) so its peak resident memory
is its own.

Usage: python benchmarks/codec_speed.py [--method dsslic] [--images N] [--quality 27] [--threads 2]
       [--device cpu] [-o KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _segmentation(image: np.ndarray) -> np.ndarray:
    return np.array(Image.fromarray(image).quantize(12, method=Image.Quantize.MEDIANCUT), dtype=np.uint8)


def _peak_rss_mb() -> float:
    """This process's peak resident memory: VmHWM (its own since exec), else ru_maxrss (which on Linux
    survives execve, so a child started by a large parent would report the parent's size)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _decode_child(method_name: str, models_dir: str, files: list[str], threads: int, device: str) -> dict:
    import torch

    from semlic.methods import get_method
    from semlic.model_files import ModelStore

    torch.set_num_threads(threads)
    method = get_method(method_name)
    models = ModelStore(dirs=[models_dir], device=device).models(method.models)
    times = []
    for f in files:
        data = Path(f).read_bytes()
        t = time.perf_counter()
        method.decode(data, models)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    peak_gpu = torch.cuda.max_memory_allocated() if device.startswith("cuda") else 0
    return {"dec_s": times, "peak_rss_mb": _peak_rss_mb(),
            "peak_gpu_mb": peak_gpu / 2**20}


def _options(pairs: list[str]) -> dict:
    options = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"-o takes KEY=VALUE, got {pair!r}")
        options[key] = value
    return options


def main(argv=None) -> int:
    from semlic.methods import get_method, method_names

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="dsslic", choices=method_names(), help="registered method (default dsslic)")
    parser.add_argument("--kodak", default=str(REPO.parent / "shared" / "data" / "kodak"))
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--quality", "--qp", dest="quality", default="27",
                        help="the method's quality (DSSLIC / EDMS: the residual QP; default 27)")
    parser.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                        help="an encoder option of the method (repeatable)")
    parser.add_argument("--num-classes", type=int, default=151, help="classes of the networks (default 151, ADE20K)")
    parser.add_argument("--preset", default="paper", help="network preset of build_model (default paper)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    parser.add_argument("--report", default=None, help="write a markdown report here")
    parser.add_argument("--decode-child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.decode_child:
        method_name, models_dir, *files = args.decode_child
        print(json.dumps(_decode_child(method_name, models_dir, files, args.threads, args.device)))
        return 0

    import torch

    from semlic.imageio import load_image
    from semlic.model_files import ModelStore, build_model, save_model

    method = get_method(args.method)
    quality = method.parse_quality(args.quality)
    options = method.encode_options(_options(args.option))
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="semlic-speed-"))
    torch.manual_seed(0)
    names = tuple(dict.fromkeys(method.models + (() if method.uses_segmentation else method.encoder_models)))
    for name in names:
        save_model(tmp / "models" / f"{name}.safetensors", build_model(name, args.preset, args.num_classes))
    models = ModelStore(dirs=[tmp / "models"], device=args.device).models(names)
    paths = sorted(Path(args.kodak).glob("kodim*.png"))[: args.images]
    if not paths:
        raise SystemExit(f"no kodim*.png in {args.kodak}")
    enc, parts, files = [], [], []
    for p in paths:
        image = load_image(p)
        seg = _segmentation(image) if method.uses_segmentation else None
        t = time.perf_counter()
        result = method.encode(image, models, quality, segmentation=seg, **options)
        enc.append(time.perf_counter() - t)
        parts.append(result.timings)
        f = tmp / f"{p.stem}.sem"
        f.write_bytes(result.data)
        files.append(str(f))
        print(f"{p.name}: encode {enc[-1]:.2f} s {json.dumps({k: round(v, 3) for k, v in result.timings.items()})}",
              flush=True)
    child = subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--device", args.device,
                            "--decode-child", method.name, str(tmp / "models"), *files],
                           check=True, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    dec = json.loads(child.stdout.strip().splitlines()[-1])
    summary = {
        "method": method.name, "label": method.label,
        "device": args.device if args.device != "cpu" else f"cpu ({args.threads} threads)",
        "images": len(paths), "quality_name": method.quality_name, "quality": method.quality_value(quality),
        "options": options, "preset": args.preset, "num_classes": args.num_classes,
        "parameters": {name: sum(p.numel() for p in models[name].parameters()) for name in names},
        "encode_s_mean": float(np.mean(enc)),
        "encode_parts_s_mean": {k: float(np.mean([p.get(k, np.nan) for p in parts])) for k in parts[0]},
        "decode_s_mean": float(np.mean(dec["dec_s"])),
        "decode_peak_rss_mb": dec["peak_rss_mb"], "decode_peak_gpu_mb": dec["peak_gpu_mb"],
        "encode_peak_rss_mb": _peak_rss_mb(),
    }
    print(json.dumps(summary, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    if args.report:
        _write_report(Path(args.report), summary, argv if argv is not None else sys.argv[1:])
    return 0


def _write_report(path: Path, s: dict, argv) -> None:
    from semlic.results import git_revision

    parts = s["encode_parts_s_mean"]
    models = ", ".join(f"{name} {count / 1e6:.1f} M" for name, count in s["parameters"].items())
    lines = [
        f"# {s['label']} codec speed at {s['preset']} size (untrained weights)", "",
        f"Command: `python benchmarks/codec_speed.py {' '.join(argv)}`  ",
        f"Revision: {git_revision()}  ",
        f"Device: {s['device']}; {s['images']} Kodak images (768x512 / 512x768); {s['quality_name']} "
        f"{s['quality']:g}; options {s['options']}  ",
        f"Networks ({s['num_classes']} classes, parameters): {models}", "",
        "| step | seconds per image |", "|---|---|",
        f"| encode, total | {s['encode_s_mean']:.2f} |",
        *[f"| encode: {k[:-2] if k.endswith('_s') else k} | {v:.2f} |" for k, v in parts.items()],
        f"| decode, total (fresh process) | {s['decode_s_mean']:.2f} |", "",
        f"Peak resident memory: encoder process {s['encode_peak_rss_mb']:.0f} MB, decoder process "
        f"{s['decode_peak_rss_mb']:.0f} MB" + (f", GPU {s['decode_peak_gpu_mb']:.0f} MB" if s['decode_peak_gpu_mb'] else ""),
        "",
        "Reference points: the DSSLIC paper reports about 44 s to decode a Kodak image on a CPU; the target here",
        "is under 10 s on 2 cores and under 4 GB. DSSLIC's decoding is RecNet (FineNet: 9 residual blocks at 512",
        "channels on a 1/8-resolution grid, about 0.9 TFLOP per 768x512 image) plus JPEG XL and HEVC decoding.",
        "The encoder's parts are the method's own timings (EncodeResult.timings): `network` the networks,",
        "`entropy` the coding of the layers (DSSLIC: `recnet` is the network the decoder runs, `residual` the HEVC",
        "encoding of the residual (x265, one thread) and its decoding, `lossless` the JPEG XL layers).", "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
