"""The code stage's work for a registered method: files in, rows out.

For every image, :func:`code_method` codes it at each quality of the method's grid
(:meth:`~semlic.methods.base.Method.encode_many`: work that does not depend on the quality is
done once), writes one ``.sem`` file per quality, decodes it *from its bytes* as a user would
(:meth:`~semlic.methods.base.Method.decode_many`: what files share is decoded once),
checks that the decoder rebuilt exactly the encoder's reconstruction, and returns one
docs/DESIGN.md section-6 row per file (bpp over the whole file, layer bits, PSNR-RGB, per-channel
PSNR, MS-SSIM, LPIPS, encode and decode seconds). LPIPS (:mod:`semlic.lpips`) runs on the
method's device, the original's features computed once per image; NaN without its weights.

Timing is honest: ``enc_s`` is what producing that file from the image costs, including the
encoder's own segmentation when it runs its segmentation network. With ``segmentation:
precomputed`` (a method that :attr:`~semlic.methods.base.Method.uses_segmentation`), the maps
of the segment stage are read instead, ``enc_s`` excludes segmentation and the row's
``device`` says ``+precomputed-seg``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from . import lpips, metrics, results
from .errors import ConfigError, LayerError
from .fileio import atomic_write_bytes
from .imageio import load_image, load_label_map
from .methods import Method, get_method

SEGMENTATION_SOURCES = ("segnet", "precomputed")



def sample_images(paths: Sequence[Path], sample: int | None, limit: int | None = None) -> list[Path]:
    """``sample`` evenly spaced images of the sorted list (null: all; a data set with fewer keeps
    them all; the first and the last are always in), then the first ``limit`` of those."""
    paths = list(paths)
    if sample is not None and 0 < int(sample) < len(paths):
        paths = [paths[i] for i in np.unique(np.linspace(0, len(paths) - 1, int(sample)).round().astype(int))]
    return paths[: limit or None]

@dataclass(frozen=True)
class CodingSample:
    image_id: str
    image_path: Path
    seg_path: Path | None = None   # a precomputed segmentation map (segmentation: precomputed)


@dataclass(frozen=True)
class MethodPlan:
    """A method, its quality grid and options, as a params section gives them.

    ``name`` is what the rows and the coded files' folder are called: the registered method's
    name, or the section's key when the section names its ``method`` (a variant of a method with
    other options, e.g. ``dsslic_444: {method: dsslic, chroma: "444"}``).
    """

    method: Method
    qualities: tuple
    options: dict
    segmentation: str = "segnet"
    name: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", self.method.name)

    @classmethod
    def from_section(cls, name: str, section: Mapping[str, Any] | None) -> "MethodPlan":
        """``{method: <registered name, default: name>, qualities: [...], segmentation: segnet|precomputed,
        <option>: value, ...}``."""
        section = dict(section or {})
        method = get_method(section.pop("method", None) or name)
        if name != method.name:
            from .methods import method_names

            if name in method_names():
                raise ConfigError(f"{name}: a variant of {method.name} cannot take the name of the registered "
                                  f"method {name}")
            results.check_partition_value("method", name)
        qualities = section.pop("qualities", None)
        qualities = tuple(method.default_qualities if qualities is None else qualities)
        if not qualities:
            raise ConfigError(f"{name}: no qualities given")
        segmentation = section.pop("segmentation", "segnet")
        if segmentation not in SEGMENTATION_SOURCES:
            raise ConfigError(f"{name}: segmentation must be one of {SEGMENTATION_SOURCES}, got {segmentation!r}")
        if segmentation == "precomputed" and not method.uses_segmentation:
            raise ConfigError(f"{name} takes no segmentation map: segmentation: precomputed does not apply")
        options = method.encode_options(section)
        return cls(method, tuple(method.parse_quality(q) for q in qualities), options, segmentation, name)

    def settings(self) -> dict:
        """JSON data naming everything that decides the rows (for ``params_hash``)."""
        variant = {"name": self.name} if self.name != self.method.name else {}
        return {"method": self.method.name, **variant,
                "qualities": [self.method.quality_value(q) for q in self.qualities],
                "segmentation": self.segmentation, **self.options}


def _segmentation(sample: CodingSample, image: np.ndarray, plan: MethodPlan) -> np.ndarray | None:
    if plan.segmentation != "precomputed":
        return None
    if sample.seg_path is None:
        raise ConfigError(f"{sample.image_id}: segmentation: precomputed, but no precomputed map was given")
    seg = load_label_map(sample.seg_path)
    if seg.shape != image.shape[:2]:
        raise ConfigError(f"{sample.seg_path}: map {seg.shape} does not match image {image.shape[:2]}")
    return seg


def code_method(samples: Sequence[CodingSample], plan: MethodPlan, models: Mapping[str, torch.nn.Module], *,
                dataset: str, out_dir: str | Path | None = None, params_hash: str = "", git_rev: str | None = None,
                progress: bool = True, with_lpips: bool = True) -> list[dict]:
    """Code every sample at every quality of ``plan``; return rows sorted by the schema key
    (``with_lpips`` False: LPIPS NaN)."""
    method = plan.method
    method.check_models(models)
    git_rev = git_rev or results.git_revision()
    device = str(next(models[method.models[0]].parameters()).device) if method.models else "cpu"
    device_label = f"{device}+precomputed-seg" if plan.segmentation == "precomputed" else device
    rows = []
    bar = tqdm(total=len(samples) * len(plan.qualities), desc=f"code {plan.name}", unit="file", disable=not progress)
    for sample in samples:
        image = load_image(sample.image_path)
        h, w = image.shape[:2]
        lpips_ref = lpips.reference(image, device, enabled=with_lpips)
        encoded = method.encode_many(image, models, plan.qualities, segmentation=_segmentation(sample, image, plan),
                                     **plan.options)
        for quality, result in zip(plan.qualities, encoded):
            if out_dir is not None:
                label = method.quality_label(quality)
                atomic_write_bytes(Path(out_dir) / plan.name / f"{sample.image_id}_{label}.sem", result.data)
        decoded_files = method.decode_many([result.data for result in encoded], models)  # each from its bytes
        for quality, result, (decoded, dec_s) in zip(plan.qualities, encoded, decoded_files):
            label = method.quality_label(quality)
            if not np.array_equal(decoded, result.reconstruction):
                raise LayerError(f"{sample.image_id} {method.quality_name} {label}: the decoder did not rebuild "
                                 "the encoder's reconstruction")
            rows.append(results.make_row(
                dataset=dataset, image_id=sample.image_id, method=plan.name, quality=method.quality_value(quality),
                quality_name=method.quality_name, height=h, width=w, bytes_total=len(result.data),
                layer_bits=result.layer_bits, psnr_rgb=metrics.psnr_rgb(image, decoded),
                psnr_channel_mean=metrics.psnr_channel_mean(image, decoded),
                ms_ssim=metrics.ms_ssim_rgb(image, decoded), lpips=lpips_ref.distance(decoded),
                enc_s=result.seconds, dec_s=dec_s, device=device_label, git_rev=git_rev, params_hash=params_hash))
            bar.update()
    bar.close()
    return sorted(rows, key=lambda r: tuple(r[k] for k in results.SORT_KEY))


def code_shard(image_paths: Sequence[str | Path], name: str, section: Mapping[str, Any] | None, *,
               models_dir: str | Path, dataset: str, seg_dir: str | Path | None = None,
               out_dir: str | Path | None = None, device: str = "cpu", git_rev: str | None = None,
               progress: bool = False, with_lpips: bool = True) -> list[dict]:
    """One shard as a pipeline task runs it: the method's models found in ``models_dir``, loaded once.

    ``params_hash`` of the rows names the plan's settings and the fingerprints of the models used.
    """
    from .methods.base import module_fingerprint
    from .model_files import ModelStore

    plan = MethodPlan.from_section(name, section)
    wanted = plan.method.models + (plan.method.encoder_models if plan.segmentation != "precomputed" else ())
    store = ModelStore(dirs=[models_dir] if wanted else [], device=device)  # a method without networks needs none
    models = store.models(wanted)
    samples = [CodingSample(Path(p).stem, Path(p), Path(seg_dir) / f"{Path(p).stem}.png" if seg_dir else None)
               for p in image_paths]
    fingerprints = {name: module_fingerprint(model).hex() for name, model in sorted(models.items())}
    run_hash = results.params_hash({**plan.settings(), "models": fingerprints})
    return code_method(samples, plan, models, dataset=dataset, out_dir=out_dir, params_hash=run_hash, git_rev=git_rev,
                       progress=progress, with_lpips=with_lpips)
