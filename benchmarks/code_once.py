"""The code stage's work per image, coding everything at every QP against computing once what
does not depend on the QP (x' and EDMS's derived map, at the encoder and at the decoder).

For each method (DSSLIC, EDMS, EDMS without SMapNet) and image: ``per_qp`` runs
``Method.encode`` and ``Method.decode`` once per QP, as a codec without shared work would;
``once`` runs ``Method.encode_many`` and ``Method.decode_many`` (the code stage's path). Both
must give byte-identical files and reconstructions; the script prints seconds per image for
each and their ratio, and writes reports/code_once.md.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/code_once.py --models data/models \\
        --images data/prepared/camvid/test/images --limit 6
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

QPS = (42, 35, 28, 21)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="data/models", help="folder with the trained model files")
    parser.add_argument("--images", default="data/prepared/camvid/test/images")
    parser.add_argument("--limit", type=int, default=6)
    parser.add_argument("--methods", nargs="+", default=["dsslic", "edms", "edms_noenh"])
    parser.add_argument("--out", default="reports/code_once.md")
    args = parser.parse_args(argv)
    from semlic.imageio import load_image
    from semlic.methods import get_method
    from semlic.model_files import ModelStore

    store = ModelStore(dirs=[args.models])
    images = sorted(Path(args.images).glob("*.png"))[: args.limit]
    lines = ["# Coding once what does not depend on the QP", "",
             f"Command: `OMP_NUM_THREADS={torch.get_num_threads()} .venv/bin/python benchmarks/code_once.py --models "
             f"{args.models} --images {args.images} --limit {args.limit}` ({len(images)} images, QPs {list(QPS)}, "
             f"{torch.get_num_threads()} threads)", "",
             "| method | per QP: encode s/image | per QP: decode s/image | once: encode s/image | once: decode s/image | "
             "speed-up (encode + decode) |", "|---|---|---|---|---|---|"]
    for name in args.methods:
        method = get_method(name)
        models = store.models(method.models + method.encoder_models)
        timings = {"per_qp_enc": 0.0, "per_qp_dec": 0.0, "once_enc": 0.0, "once_dec": 0.0}
        for path in images:
            image = load_image(path)
            start = time.perf_counter()
            single = [method.encode(image, models, qp) for qp in QPS]
            timings["per_qp_enc"] += time.perf_counter() - start
            start = time.perf_counter()
            decoded_single = [method.decode(r.data, models) for r in single]
            timings["per_qp_dec"] += time.perf_counter() - start
            start = time.perf_counter()
            many = method.encode_many(image, models, QPS)
            timings["once_enc"] += time.perf_counter() - start
            start = time.perf_counter()
            decoded_many = method.decode_many([r.data for r in many], models)
            timings["once_dec"] += time.perf_counter() - start
            assert [r.data for r in single] == [r.data for r in many], "encode_many wrote other files"
            for a, (b, _) in zip(decoded_single, decoded_many):
                np.testing.assert_array_equal(a, b)
        per = {k: v / len(images) for k, v in timings.items()}
        ratio = (per["per_qp_enc"] + per["per_qp_dec"]) / (per["once_enc"] + per["once_dec"])
        print(f"{name}: per QP {per['per_qp_enc']:.2f} + {per['per_qp_dec']:.2f} s, once {per['once_enc']:.2f} + "
              f"{per['once_dec']:.2f} s per image: {ratio:.2f}x")
        lines.append(f"| {name} | {per['per_qp_enc']:.2f} | {per['per_qp_dec']:.2f} | {per['once_enc']:.2f} | "
                     f"{per['once_dec']:.2f} | {ratio:.2f}x |")
    lines += ["", "Same files and reconstructions either way (asserted). `once` is what the code stage runs "
              "(semlic.code_stage.code_method: Method.encode_many, Method.decode_many); each file's decode time in the "
              "rows still counts x' (measured once per image), so dec_s is what decoding that file alone costs.", ""]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
