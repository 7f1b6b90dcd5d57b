"""SMapNet's training pairs (EDMS, section 2.4, step 2): (PSPNet(up(c^)), the reference map)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save as safetensors_save
from tqdm.auto import tqdm

from ...errors import DatasetError, LabelMapError, ModelMismatchError
from ...fileio import atomic_write_bytes
from ...imageio import load_image, load_label_map, save_png
from ...layers import pad_to_multiple
from ...segnet.prepared import list_prepared
from ..base import module_fingerprint
from ...layered_codec import compact_image
from ..dsslic.model import DSSLIC
from .matched import deterministic_float32, module_device, segnet_lowres_logits, upsample_logits, upsampled_for_segnet

PAIRS_INFO = "pairs.json"


def _pair_row(sample_id: str, size: tuple[int, int], raw: torch.Tensor, reference: np.ndarray, classes: int) -> dict:
    from ...segnet.metrics import confusion_matrix, scores_from_confusion

    h, w = size
    scores = scores_from_confusion(confusion_matrix(raw[:h, :w].cpu(), torch.from_numpy(reference[:h, :w]), classes))
    return {"id": sample_id, "height": h, "width": w, "miou": scores.miou, "pixel_accuracy": scores.pixel_accuracy}


@torch.inference_mode()
def generate_pairs(dsslic: DSSLIC, segnet, prepared_dir, split: str, seg_dir, out_dir,
                   ids: list[str] | None = None, progress: bool = True):
    """SMapNet's training pairs: (PSPNet(up(c^)), reference segmentation) for every image of a split.

    For each image x of ``<prepared_dir>/<split>/images`` with reference map s (``<seg_dir>/<id>.png``:
    PSPNet on the original image, what train-dsslic used), padded as the codec pads:
    c^ = round8(CompNet(x, s)), then PSPNet's low-resolution logits of up(c^) (float16,
    :func:`segnet_lowres_logits`). Writes ``<out_dir>/logits/<id>.safetensors`` (``logits``
    (K, H/8, W/8), metadata ``height``/``width`` = the padded size), ``<out_dir>/targets/<id>.png``
    (s, padded) and ``<out_dir>/pairs.json`` (classes, PSPNet interpolation, fingerprints).
    ``ids`` restricts the work to a shard. Returns one row per image: id, height, width, and the
    mIoU / pixel accuracy of PSPNet(up(c^)) (full float32 logits) against s on the unpadded image.
    """
    classes = segnet.config.num_classes
    if classes > dsslic.config.label_nc:
        raise ModelMismatchError(f"PSPNet has {classes} classes, more than the DSSLIC model's label_nc "
                                 f"{dsslic.config.label_nc}")
    out_dir, seg_dir = Path(out_dir), Path(seg_dir)
    samples = list_prepared(prepared_dir, split)
    if ids is not None:
        unknown = sorted(set(ids) - {s.id for s in samples})
        if unknown:
            raise DatasetError(f"{prepared_dir}: split {split!r} has no images {unknown[:5]}")
        samples = [s for s in samples if s.id in set(ids)]
    segnet.eval()
    multiple, rows = dsslic.config.multiple, []
    for sample in tqdm(samples, desc=f"smap pairs {split}", disable=not progress, dynamic_ncols=True):
        image, reference = load_image(sample.image_path), load_label_map(seg_dir / f"{sample.id}.png")
        if reference.shape != image.shape[:2] or int(reference.max()) >= classes:
            raise LabelMapError(f"{seg_dir / sample.id}.png: reference map {reference.shape} with labels up to "
                                f"{int(reference.max())}; expected {image.shape[:2]} and labels < {classes}")
        reference = pad_to_multiple(reference, multiple)
        compact = compact_image(dsslic, pad_to_multiple(image, multiple), reference)
        with deterministic_float32():
            images = upsampled_for_segnet(compact, dsslic, module_device(segnet))
            lowres = segnet_lowres_logits(segnet, images).float()
        size = tuple(images.shape[-2:])
        raw = upsample_logits(lowres, size, segnet.config.align_corners)[0].argmax(0)
        metadata = {"height": str(size[0]), "width": str(size[1])}
        payload = safetensors_save({"logits": lowres[0].half().cpu().contiguous()}, metadata=metadata)
        atomic_write_bytes(out_dir / "logits" / f"{sample.id}.safetensors", payload)
        save_png(out_dir / "targets" / f"{sample.id}.png", reference)
        rows.append(_pair_row(sample.id, image.shape[:2], raw, reference, classes))
    info = {"num_classes": classes, "align_corners": bool(segnet.config.align_corners), "split": split,
            "dsslic_fingerprint": module_fingerprint(dsslic).hex(),
            "segnet_fingerprint": module_fingerprint(segnet).hex()}
    atomic_write_bytes(out_dir / PAIRS_INFO, (json.dumps(info, indent=2, sort_keys=True) + "\n").encode())
    return pd.DataFrame(rows, columns=["id", "height", "width", "miou", "pixel_accuracy"])
