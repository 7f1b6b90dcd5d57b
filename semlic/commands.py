"""``semlic encode | decode | info | methods | model-info | convert-model``: any registered method.

The method comes from ``--method`` when encoding and from the file's header when decoding;
the models it needs are found among the model files given with ``--model`` (repeatable) or
in ``--models-dir`` (every model file below it), each recognised by the registered name in
its metadata. Method options are ``-o KEY=VALUE`` (``semlic methods`` lists them).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from . import format as fmt
from .errors import ConfigError, UnreadableImageError
from .fileio import atomic_write_bytes
from .imageio import load_image, load_label_map, save_png

#: The commands this module adds to ``semlic`` (read by semlic.cli without importing it).
COMMANDS = {
    "encode": "code an image into a .sem file with a registered method",
    "decode": "decode a .sem file to PNG (from the file and its models alone)",
    "info": "show a .sem file's header and the bits of each layer",
    "methods": "list the registered methods, the models they need, their options",
    "model-info": "show a model file's registered name, config and fingerprint",
    "convert-model": "rewrite a model file of an earlier format in the current one",
}


def _read_bytes(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise UnreadableImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UnreadableImageError(f"{path}: is a directory, expected a file") from None


def _store(args):
    from .model_files import ModelStore

    return ModelStore(files=args.model or (), dirs=[args.models_dir] if args.models_dir else (), device=args.device)


def _options(pairs: list[str] | None) -> dict:
    options = {}
    for item in pairs or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"-o takes KEY=VALUE, got {item!r}")
        options[key.replace("-", "_")] = yaml.safe_load(value)
    return options


def cmd_encode(args) -> int:
    from .methods import get_method

    method = get_method(args.method)
    image = load_image(args.image)
    seg = None
    if args.seg:
        seg = load_label_map(args.seg)
        if seg.shape != image.shape[:2]:
            raise ConfigError(f"segmentation map {args.seg} is {seg.shape[1]}x{seg.shape[0]}, "
                              f"the image is {image.shape[1]}x{image.shape[0]}")
    store = _store(args)
    models = store.models(method.models + (method.encoder_models if seg is None else ()))
    if args.quality is None and method.default_quality is None:
        raise ConfigError(f"{method.name} declares no default quality: give --quality")
    quality = method.parse_quality(method.default_quality if args.quality is None else args.quality)
    result = method.encode(image, models, quality, segmentation=seg, **_options(args.option))
    atomic_write_bytes(args.out, result.data)
    h, w = image.shape[:2]
    line = f"{args.out}: {method.name}, {len(result.data)} bytes, {8 * len(result.data) / (h * w):.4f} bpp ({w}x{h})"
    if args.metrics:  # the file decoded from its bytes, as a receiver decodes it
        from . import metrics

        decoded = method.decode(_read_bytes(args.out), models)
        line += (f", PSNR-RGB {metrics.psnr_rgb(image, decoded):.2f} dB, "
                 f"MS-SSIM {metrics.ms_ssim_rgb(image, decoded):.4f}")
    print(line)
    return 0


def cmd_decode(args) -> int:
    from .methods import get_method

    data = _read_bytes(args.file)
    method = get_method(fmt.unpack(data).method)
    image = method.decode(data, _store(args).models(method.models))
    save_png(args.out, image)
    print(f"{args.out}: {image.shape[1]}x{image.shape[0]}")
    return 0


def describe(data: bytes) -> dict:
    """What ``semlic info`` prints: header fields, the method's own fields, each layer with its bits."""
    from .methods import get_method

    sem = fmt.unpack(data)
    method = get_method(sem.method)
    pixels = sem.width * sem.height
    layers = [{"role": "header", "codec": "-", "bits": 8 * sem.header_bytes}]
    layers += [{"role": method.role_name(lay.role), "codec": lay.codec_name, "bits": lay.bits} for lay in sem.layers]
    for lay in layers:
        lay["bpp"] = lay["bits"] / pixels
    return {"method": sem.method, "version": sem.version, "width": sem.width, "height": sem.height,
            "fingerprint": sem.fingerprint.hex(), **method.describe(sem), "bytes": len(data),
            "bpp": 8 * len(data) / pixels, "layers": layers}


def cmd_info(args) -> int:
    info = describe(_read_bytes(args.file))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    fields = {k: v for k, v in info.items() if k not in ("method", "version", "width", "height", "fingerprint",
                                                         "bytes", "bpp", "layers")}
    print(f"{args.file}: {info['method']} {info['width']}x{info['height']}, {info['bytes']} bytes, "
          f"{info['bpp']:.4f} bpp, model {info['fingerprint']}, format version {info['version']}")
    if fields:
        print("  " + ", ".join(f"{k} {v}" for k, v in fields.items()))
    print(f"  {'layer':<14}{'codec':<15}{'bits':>10}{'bpp':>10}")
    for lay in info["layers"]:
        print(f"  {lay['role']:<14}{lay['codec']:<15}{lay['bits']:>10}{lay['bpp']:>10.4f}")
    return 0


def cmd_methods(args) -> int:
    from .methods import all_methods

    rows = [{"name": m.name, "label": m.label, "format_id": m.format_id, "models": list(m.models),
             "encoder_models": list(m.encoder_models), "quality": m.quality_name,
             "default_qualities": [m.quality_value(m.parse_quality(q)) for q in m.default_qualities],
             "default_quality": (None if m.default_quality is None
                                 else m.quality_label(m.parse_quality(m.default_quality))),
             "options": {k: o.default for k, o in m.options.items()}, "paper": m.paper} for m in all_methods()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        print(f"{row['name']:<12} {row['label']}: needs {', '.join(row['models']) or 'no models'}"
              + (f" (encoder may use {', '.join(row['encoder_models'])})" if row["encoder_models"] else "")
              + f"; {row['quality']} {row['default_qualities']} (default {row['default_quality']}); "
                f"options {row['options']}")
    return 0


def cmd_model_info(args) -> int:
    from .model_files import config_of, read_metadata, stored_config

    metadata = read_metadata(args.file)
    if args.check:   # the config against the network's config class (imports the network)
        name, built = config_of(args.file, metadata)
        config = built.to_dict()
    else:
        name, config = stored_config(args.file, metadata)
    info = {"model": name, "format": metadata.get("format"), "fingerprint": metadata.get("fingerprint"),
            "config": config, **{k: v for k, v in metadata.items()
                                 if k not in ("model", "format", "fingerprint", "config")}}
    print(json.dumps(info, indent=2, default=str))
    return 0


def cmd_convert_model(args) -> int:
    from .model_files import convert_model_file

    name = convert_model_file(args.source, args.target)
    print(f"{args.target}: {name} model in the current format")
    return 0


def _model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", action="append", metavar="FILE",
                   help="a model file the method needs (repeat for each: e.g. the DSSLIC, PSPNet and SMapNet files)")
    p.add_argument("--models-dir", metavar="DIR", help="find the needed model files below this directory")
    p.add_argument("--device", default="cpu")


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("encode", help=COMMANDS["encode"])
    p.add_argument("image")
    p.add_argument("out")
    p.add_argument("--method", default="dsslic", help="registered method (semlic methods lists them)")
    p.add_argument("--quality", "--qp", dest="quality", default=None,
                   help="the method's quality knob (default: the method's own, `semlic methods` lists it; DSSLIC/EDMS: "
                        "residual QP 0..51, -1: no residual; SMIC: factor/map QP, e.g. 8/28; DSSLIC-RD: level/QP)")
    p.add_argument("--seg", help="the image's segmentation map PNG (class index per pixel), for methods that use one; "
                                 "without it they run their segmentation network")
    p.add_argument("-o", "--option", action="append", metavar="KEY=VALUE",
                   help="a method option, e.g. -o chroma=444 -o lossless=png")
    p.add_argument("--metrics", action="store_true",
                   help="also decode the written file and print its PSNR-RGB and MS-SSIM against the image")
    _model_arguments(p)
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("decode", help=COMMANDS["decode"])
    p.add_argument("file")
    p.add_argument("out")
    _model_arguments(p)
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("info", help=COMMANDS["info"])
    p.add_argument("file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("methods", help=COMMANDS["methods"])
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("model-info", help=COMMANDS["model-info"])
    p.add_argument("file")
    p.add_argument("--check", action="store_true",
                   help="also check the stored config against the network's config class (imports the network)")
    p.set_defaults(func=cmd_model_info)

    p = sub.add_parser("convert-model", help=COMMANDS["convert-model"])
    p.add_argument("source")
    p.add_argument("target")
    p.set_defaults(func=cmd_convert_model)
