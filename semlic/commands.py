"""``semlic encode | decode | info | train-base``: the codec and its training from a shell.

``encode --method dsslic|edms|edms_noenh``: EDMS files need ``--segnet`` (the PSPNet both ends
run on up(c^)) and, for ``edms``, ``--smapnet``; ``decode`` takes the same two options.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import yaml

from . import codec
from . import format as fmt
from .codecs import CODECS_BY_ID, LOSSLESS
from .errors import ConfigError, UnreadableImageError
from .imageio import atomic_write_bytes, load_image, load_label_map, save_png


def _read_bytes(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise UnreadableImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UnreadableImageError(f"{path}: is a directory, expected a file") from None


def _load_edms_models(args):
    """(PSPNet or None, SMapNet or None) from --segnet / --smapnet, on --device."""
    segnet = smapnet = None
    if args.segnet:
        from .segnet.checkpoint import load_segnet
        from .segnet.inference import resolve_device

        segnet = load_segnet(args.segnet, resolve_device(args.device))
    if args.smapnet:
        from .smapnet_training import load_smapnet

        smapnet = load_smapnet(args.smapnet, args.device)
    return segnet, smapnet


def _segmentation_for(image: np.ndarray, args, segnet=None) -> np.ndarray:
    if args.seg:
        seg = load_label_map(args.seg)
        if seg.shape != image.shape[:2]:
            raise ConfigError(f"segmentation map {args.seg} is {seg.shape[1]}x{seg.shape[0]}, "
                              f"the image is {image.shape[1]}x{image.shape[0]}")
        return seg
    if segnet is not None:
        from .segnet.inference import predict_labels
        from .segnet.prepared import image_to_tensor

        device = next(segnet.parameters()).device
        return predict_labels(segnet, image_to_tensor(image)[None].to(device))[0].cpu().numpy()
    raise ConfigError("CompNet needs the image's segmentation map: "
                      "give --seg LABELS.png or --segnet PSPNET.safetensors")


def cmd_encode(args) -> int:
    from .training import load_dsslic

    image = load_image(args.image)
    model = load_dsslic(args.model, args.device)
    segnet, smapnet = _load_edms_models(args)
    seg = _segmentation_for(image, args, segnet)
    qp = None if args.qp < 0 else args.qp
    result = codec.encode(image, seg, model, qp, chroma=args.chroma, lossless=args.lossless, method=args.method,
                          segnet=segnet, smapnet=smapnet, agreement_tau=args.agreement_tau)
    atomic_write_bytes(args.out, result.data)
    h, w = image.shape[:2]
    print(f"{args.out}: {len(result.data)} bytes, {8 * len(result.data) / (h * w):.4f} bpp ({w}x{h})")
    return 0


def cmd_decode(args) -> int:
    from .training import load_dsslic

    data = _read_bytes(args.file)
    model = load_dsslic(args.model, args.device)
    segnet, smapnet = _load_edms_models(args)
    image = codec.decode(data, model, segnet=segnet, smapnet=smapnet)
    save_png(args.out, image)
    print(f"{args.out}: {image.shape[1]}x{image.shape[0]}")
    return 0


def describe(data: bytes) -> dict:
    """What ``semlic info`` prints: header fields and each layer with its bits."""
    sem = fmt.unpack(data)
    pixels = sem.width * sem.height
    layers = [{"role": "header", "codec": "-", "bits": 8 * fmt.HEADER_BYTES}]
    layers += [{"role": lay.role_name, "codec": CODECS_BY_ID[lay.codec].name, "bits": lay.bits} for lay in sem.layers]
    for lay in layers:
        lay["bpp"] = lay["bits"] / pixels
    return {"method": sem.method, "width": sem.width, "height": sem.height, "fingerprint": sem.fingerprint.hex(),
            "residual_qp": sem.residual_qp, "residual_min": sem.res_min, "residual_max": sem.res_max,
            "bytes": len(data), "bpp": 8 * len(data) / pixels, "layers": layers}


def cmd_info(args) -> int:
    info = describe(_read_bytes(args.file))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{args.file}: {info['method']} {info['width']}x{info['height']}, {info['bytes']} bytes, "
          f"{info['bpp']:.4f} bpp, model {info['fingerprint']}, residual QP {info['residual_qp']}")
    print(f"  {'layer':<14}{'codec':<15}{'bits':>10}{'bpp':>10}")
    for lay in info["layers"]:
        print(f"  {lay['role']:<14}{lay['codec']:<15}{lay['bits']:>10}{lay['bpp']:>10.4f}")
    return 0


def cmd_train_base(args) -> int:
    from .training import BaseTrainConfig, train_base

    config = {}
    if args.config:
        with open(args.config) as fh:
            loaded = yaml.safe_load(fh) or {}
        config = loaded.get("train_base", loaded) if isinstance(loaded, dict) else {}
        config = {k: v for k, v in config.items() if k in BaseTrainConfig.__dataclass_fields__}
    for key in ("iterations", "batch_size", "preset", "label_nc", "vgg_weights", "epochs"):
        value = getattr(args, key)
        if value is not None:
            config[key] = value
    path = train_base(config, args.images, args.segs, args.out, device=args.device, resume=not args.restart)
    print(path)
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("encode", help="code an image into a .sem file (DSSLIC or EDMS)")
    p.add_argument("image")
    p.add_argument("out")
    p.add_argument("--model", required=True, help="base model (base.safetensors from train-base)")
    p.add_argument("--qp", type=int, default=27, help="HEVC QP of the residual, 0..51; -1 sends no residual")
    p.add_argument("--seg", help="segmentation map PNG (class index per pixel)")
    p.add_argument("--segnet", help="PSPNet checkpoint: computes the segmentation map when --seg is absent; "
                                    "EDMS methods also run it on up(c^)")
    p.add_argument("--method", choices=codec.CODEC_METHODS, default="dsslic",
                   help="dsslic sends the map; edms / edms_noenh derive it at both ends")
    p.add_argument("--smapnet", help="SMapNet checkpoint (method edms)")
    p.add_argument("--agreement-tau", type=float, default=codec.AGREEMENT_TAU,
                   help="EDMS: send the encoder's class where the top-2 score margin is below this (0: never)")
    p.add_argument("--chroma", choices=("420", "444"), default="420", help="residual chroma format")
    p.add_argument("--lossless", choices=("best",) + LOSSLESS, default=codec.LOSSLESS_DEFAULT)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("decode", help="decode a .sem file to PNG")
    p.add_argument("file")
    p.add_argument("out")
    p.add_argument("--model", required=True)
    p.add_argument("--segnet", help="PSPNet checkpoint (EDMS files)")
    p.add_argument("--smapnet", help="SMapNet checkpoint (edms files)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("info", help="show a .sem file's header and the bits of each layer")
    p.add_argument("file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("train-base", help="train DSSLIC's CompNet + FineNet (+ discriminators)")
    p.add_argument("--config", help="YAML with a train_base section (or the keys at top level)")
    p.add_argument("--images", required=True, help="directory of training images <id>.png (one size)")
    p.add_argument("--segs", required=True, help="directory of segmentation maps <id>.png")
    p.add_argument("--out", required=True, help="output directory (base.safetensors, train_state, log)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--iterations", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--preset")
    p.add_argument("--label-nc", type=int)
    p.add_argument("--vgg-weights")
    p.add_argument("--restart", action="store_true", help="ignore an existing train_state and start afresh")
    p.set_defaults(func=cmd_train_base)

