"""Do an EDMS encoder and decoder derive the same segmentation s^ under different thread counts?

An encoder process (``torch.set_num_threads(A)``) codes every image of a prepared split with
each measured method (``--methods``; default: every registered method that is compared with
another, ``Method.compare_to``: ``edms`` and ``edms_noenh``), and keeps its reconstruction and
its matched scores (the float32 class scores whose argmax is s^). The models are found by their
registered names among the files given (``--model FILE``, repeatable, or ``--models-dir DIR``);
each method uses those it declares (``Method.models``). By default the files carry no
correction layer (``--agreement-tau 0``), so the decoder's output shows the raw disagreement. Decoder processes (``torch.set_num_threads(B)`` for each B
asked) decode those files, and recompute the scores from the compact layer. Per (method,
decoder threads) the report gives: the fraction of pixels whose class differs, the largest
score difference, the PSNR of the decoder's output against the encoder's own reconstruction
(inf = identical) and the change of PSNR against the original; and, from the encoder's scores,
the fraction of pixels whose top-2 margin is below 1e-5 .. 1e-2 (the pixels a difference of
that size in the scores could flip: the exposure of the scheme to a device change).

Writes ``<out>/edms_agreement.csv`` and ``<out>/edms_agreement.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
MARGINS = (1e-5, 1e-4, 1e-3, 1e-2)
GUARDS = (1e-4, 1e-3)   # tau of the correction map (semlic.methods.edms.matched.correction_map)
LOSSLESS = "jxl_lossless"


def default_methods() -> list[str]:
    """Every registered method measured against another (``compare_to``): the matched-map codecs."""
    from semlic.methods import all_methods

    return [m.name for m in all_methods() if m.compare_to]


def _methods(args):
    from semlic.methods import get_method

    return [get_method(name) for name in (args.methods or default_methods())]


def _store(args):
    from semlic.model_files import ModelStore

    return ModelStore(files=args.model or (), dirs=args.models_dir or ())


def _models(method, store) -> dict:
    """The models ``method`` declares, loaded from ``store``; refused by name when one is missing."""
    models = store.models(method.models)
    method.check_models(models)
    return models


def _compact_of(data: bytes, method):
    """c^: the file's layer the method calls ``compact``, decoded alone."""
    from semlic import format as fmt
    from semlic.image_codecs import CODECS_BY_ID

    layer = next(lay for lay in fmt.unpack(data).layers if method.role_name(lay.role) == "compact")
    return CODECS_BY_ID[layer.codec].decode(layer.payload, 3)


def worker(args) -> int:
    """One process, one thread count: ``encode`` writes files + scores, ``decode`` reads them back."""
    import torch

    torch.set_num_threads(args.threads)
    from semlic.imageio import load_image, load_label_map
    from semlic.segnet.prepared import list_prepared

    store = _store(args)
    methods = [(method, _models(method, store)) for method in _methods(args)]
    work, tag = Path(args.work), f"t{args.threads}"
    for sample in list_prepared(args.data, args.split):
        for method, models in methods:
            stem = work / f"{sample.id}.{method.name}"
            if args.role == "encode":
                image, seg = load_image(sample.image_path), load_label_map(Path(args.segs) / f"{sample.id}.png")
                result = method.encode(image, models, method.parse_quality(args.quality), segmentation=seg,
                                       agreement_tau=args.agreement_tau)
                Path(f"{stem}.sem").write_bytes(result.data)
                np.save(f"{stem}.enc.recon.npy", result.reconstruction)
                scores = method.matched_scores(_compact_of(result.data, method), models)
                assert np.array_equal(scores[0].argmax(0).numpy(), result.extras["matched_segmentation"])
            else:
                data = Path(f"{stem}.sem").read_bytes()
                np.save(f"{stem}.{tag}.recon.npy", method.decode(data, models))
                scores = method.matched_scores(_compact_of(data, method), models)
            np.save(f"{stem}.{'enc' if args.role == 'encode' else tag}.scores.npy", scores[0].numpy())
    return 0


def _psnr(a, b) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def compare(args, work: Path) -> pd.DataFrame:
    import torch

    from semlic.image_codecs import get_codec
    from semlic.imageio import load_image, load_label_map
    from semlic.methods.edms import matched as edms
    from semlic.segnet.prepared import list_prepared

    rows = []
    samples = list_prepared(args.data, args.split)
    for method in (m.name for m in _methods(args)):
        for threads in args.decode_threads:
            acc = {"pixels": 0, "differ": 0, "max_dscore": 0.0, "psnr_enc": [], "psnr_dec": [], "psnr_enc_dec": [],
                   **{f"margin<{m:g}": 0 for m in MARGINS}, **{f"guard{g:g}_bytes": 0 for g in GUARDS},
                   **{f"guard{g:g}_differ": 0 for g in GUARDS}, "segmentation_layer_bytes": 0}
            for sample in samples:
                stem = work / f"{sample.id}.{method}"
                enc, dec = np.load(f"{stem}.enc.scores.npy"), np.load(f"{stem}.t{threads}.scores.npy")
                acc["pixels"] += enc[0].size
                acc["differ"] += int((enc.argmax(0) != dec.argmax(0)).sum())
                acc["max_dscore"] = max(acc["max_dscore"], float(np.abs(enc - dec).max()))
                top2 = np.sort(enc, axis=0)[-2:]
                for m in MARGINS:
                    acc[f"margin<{m:g}"] += int((top2[1] - top2[0] < m).sum())
                for g in GUARDS:
                    correction = edms.correction_map(torch.from_numpy(enc)[None], g)
                    acc[f"guard{g:g}_bytes"] += len(get_codec(LOSSLESS).encode(correction))
                    corrected = edms.apply_correction(dec.argmax(0).astype(np.uint8), correction)
                    acc[f"guard{g:g}_differ"] += int((corrected != enc.argmax(0)).sum())
                reference = load_label_map(Path(args.segs) / f"{sample.id}.png")
                acc["segmentation_layer_bytes"] += len(get_codec(LOSSLESS).encode(reference))
                image = load_image(sample.image_path)
                enc_recon, dec_recon = np.load(f"{stem}.enc.recon.npy"), np.load(f"{stem}.t{threads}.recon.npy")
                acc["psnr_enc"].append(_psnr(enc_recon, image))
                acc["psnr_dec"].append(_psnr(dec_recon, image))
                acc["psnr_enc_dec"].append(_psnr(enc_recon, dec_recon))
            rows.append({"method": method, "encoder_threads": args.encode_threads, "decoder_threads": threads,
                         "images": len(samples), "pixels": acc["pixels"],
                         "class_differs_fraction": acc["differ"] / acc["pixels"], "max_abs_score_diff": acc["max_dscore"],
                         "min_psnr_decoder_vs_encoder_db": min(acc["psnr_enc_dec"]),
                         "psnr_change_db": float(np.mean(acc["psnr_dec"]) - np.mean(acc["psnr_enc"])),
                         **{f"fraction_margin_below_{m:g}": acc[f"margin<{m:g}"] / acc["pixels"] for m in MARGINS},
                         **{f"guard_{g:g}_bytes_per_image": acc[f"guard{g:g}_bytes"] / len(samples) for g in GUARDS},
                         **{f"guard_{g:g}_class_differs_fraction": acc[f"guard{g:g}_differ"] / acc["pixels"]
                            for g in GUARDS},
                         "dsslic_segmentation_bytes_per_image": acc["segmentation_layer_bytes"] / len(samples)})
    return pd.DataFrame(rows)


def write_report(table: pd.DataFrame, args, seconds: float) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "edms_agreement.csv", index=False)
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    import torch

    lines = [
        "# EDMS: encoder-decoder agreement of the matched segmentation",
        "",
        f"Data: `{args.data}`, split `{args.split}`, quality (residual QP) {args.quality}, agreement_tau "
        f"{args.agreement_tau:g}. " + (args.note or ""),
        "",
        "Command (from the repository root):",
        "",
        "```",
        " ".join(shlex.quote(a) for a in [f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')}", ".venv/bin/python", "benchmarks/edms_agreement.py", *sys.argv[1:]]),
        "```",
        "",
        f"git {rev} (plus the working tree), torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{seconds:.0f} s. Encoder: {args.encode_threads} thread(s); decoders: "
        f"{', '.join(map(str, args.decode_threads))} thread(s), each in its own process.",
        "",
        "| method | dec. threads | pixels | class differs | max abs score diff | min PSNR dec vs enc output (dB) "
        "| PSNR change (dB) | " + " | ".join(f"margin < {m:g}" for m in MARGINS) + " |",
        "|---|---|---|---|---|---|---|" + "---|" * len(MARGINS),
    ]
    for r in table.to_dict("records"):
        lines.append(f"| {r['method']} | {r['decoder_threads']} | {r['pixels']} | {r['class_differs_fraction']:.2e} | "
                     f"{r['max_abs_score_diff']:.3g} | {r['min_psnr_decoder_vs_encoder_db']:.2f} | "
                     f"{r['psnr_change_db']:+.4f} | "
                     + " | ".join(f"{r[f'fraction_margin_below_{m:g}']:.2e}" for m in MARGINS) + " |")
    lines += ["", f"Correction map (semlic.methods.edms.matched.correction_map, coded with {LOSSLESS}): bytes per "
              "image, and the "
              "fraction of pixels still differing after the decoder applies it; DSSLIC's segmentation layer "
              "(the reference map, same codec) for scale.", "",
              "| method | dec. threads | " + " | ".join(f"tau {g:g}: bytes / image | tau {g:g}: class differs"
                                                     for g in GUARDS) + " | DSSLIC map bytes / image |",
              "|---|---|" + "---|---|" * len(GUARDS) + "---|"]
    for r in table.to_dict("records"):
        lines.append(f"| {r['method']} | {r['decoder_threads']} | " + " | ".join(
            f"{r[f'guard_{g:g}_bytes_per_image']:.1f} | {r[f'guard_{g:g}_class_differs_fraction']:.2e}" for g in GUARDS)
            + f" | {r['dsslic_segmentation_bytes_per_image']:.1f} |")
    (out / "edms_agreement.md").write_text("\n".join(lines) + "\n" + (Path(args.append).read_text() if args.append else ""))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--segs", required=True, help="maps <id>.png CompNet sees (semlic segment)")
    parser.add_argument("--model", action="append", metavar="FILE",
                        help="a model file (repeatable): the dsslic, pspnet and smapnet models the methods declare")
    parser.add_argument("--models-dir", action="append", metavar="DIR", help="a folder of model files (repeatable)")
    parser.add_argument("--methods", nargs="+", metavar="METHOD",
                        help="registered methods to measure (default: every method with a compare_to: "
                             "the matched-map codecs)")
    parser.add_argument("--quality", "--qp", dest="quality", default="28", help="the methods' quality (residual QP)")
    parser.add_argument("--agreement-tau", type=float, default=0.0,
                        help="the methods' agreement_tau option (default 0: no correction layer in the files)")
    parser.add_argument("--encode-threads", type=int, default=2)
    parser.add_argument("--decode-threads", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--out", default="reports")
    parser.add_argument("--note")
    parser.add_argument("--append", help="markdown appended to the report")
    parser.add_argument("--role", choices=("encode", "decode"), help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not (args.model or args.models_dir):
        parser.error("give the models: --model FILE (repeatable) or --models-dir DIR")
    if args.role:
        return worker(args)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edms_agreement_") as work:
        base = [sys.executable, __file__, *(sys.argv[1:] if argv is None else argv), "--work", work]
        for role, threads in [("encode", args.encode_threads)] + [("decode", t) for t in args.decode_threads]:
            env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
            subprocess.run([*base, "--role", role, "--threads", str(threads)], check=True, env=env)
        table = compare(args, Path(work))
    write_report(table, args, time.perf_counter() - started)
    print(json.dumps(table.to_dict("records"), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
