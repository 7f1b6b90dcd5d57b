"""Coding for machines: the segmentation each method delivers at the receiver, against the bits it reads.

For every coded file of the code stage (``files/<dataset>/<method>/<image>_<quality>.<ext>``) and
the ground truth of its image, :func:`task_rows` measures, from the file alone:

* ``decoded``: the file decoded to pixels (a ``.sem`` by its method, a classical file by its
  codec), then the pipeline's segmenter (PSPNet) on them; bytes = the whole file;
* every segmentation the method's decoder holds without the image
  (:meth:`~semlic.methods.base.Method.decoder_maps`: DSSLIC's map layer, the map EDMS derives,
  SMIC's decoded map, ...), each with the bytes of the layers it reads, the file header included
  (:meth:`~semlic.methods.base.Method.bytes_read`);
* ``original``: the segmenter on the uncompressed image (method ``original``, no bytes), the
  ceiling every row is measured against.

A row keeps the image's confusion matrix ((K + 1) x (K + 1): K classes and, last, "void", what a
receiver's map may hold where it names no class; ground-truth void pixels are left out), so a data
set's mIoU is computed from the summed matrices, as segmentation benchmarks do
(:func:`semlic.reporting.task_summary`).
Rows of the same schema written elsewhere (the compressed-domain students, from real files:
semlic.methods.latent_seg.evaluate) join them (:func:`read_rows`).

Per (dataset, method, output): the rate-mIoU curve, the Bjontegaard rate difference on mIoU against
the anchor (HEVC 4:4:4 + the segmenter, as MPEG VCM and JPEG AI evaluate codecs for machines:
pchip on log-rate over the mIoU range both share, on each curve's operational points) and the rate
needed to reach 90 % and 95 % of the segmenter's mIoU on the uncompressed images
(:func:`semlic.reporting.task_table`; the tables and the figure are the report library's).

Columns: dataset, image_id, method, quality (the file's quality label), output, bytes, pixels,
bpp, miou, pixel_accuracy, dec_s (from the bytes to that output), confusion (flattened, row-major:
ground truth x prediction).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from .errors import ConfigError, LabelMapError, SemlicError
from .reporting import DECODED, ORIGINAL, confusion_scores, rate_miou_figure, task_summary, task_table

COLUMNS = ["dataset", "image_id", "method", "quality", "output", "bytes", "pixels", "bpp", "miou", "pixel_accuracy",
           "dec_s", "confusion"]
SORT = ["dataset", "method", "output", "quality", "image_id"]


# --- confusion and scores -----------------------------------------------------------------------
def confusion(prediction: np.ndarray, truth: np.ndarray, num_classes: int) -> np.ndarray:
    """(K + 1) x (K + 1) int64 counts, rows: ground truth, columns: prediction; a predicted value
    outside 0..K-1 counts as void (column K); ground-truth void (anything outside 0..K-1: 255) is
    left out."""
    prediction, truth = np.asarray(prediction), np.asarray(truth)
    if prediction.shape != truth.shape:
        raise LabelMapError(f"the map is {prediction.shape}, the ground truth {truth.shape}")
    k = int(num_classes)
    valid = truth < k
    pred = np.where(prediction < k, prediction, k).astype(np.int64)[valid]
    counts = np.bincount(truth[valid].astype(np.int64) * (k + 1) + pred, minlength=(k + 1) ** 2)
    return counts.reshape(k + 1, k + 1)


def make_row(dataset: str, image_id: str, method: str, quality: str, output: str, n_bytes: float,
             matrix: np.ndarray, pixels: int, dec_s: float) -> dict:
    """One task row (module docstring); ``n_bytes`` NaN for the uncompressed image."""
    miou, accuracy = confusion_scores(matrix)
    return {"dataset": dataset, "image_id": image_id, "method": method, "quality": quality, "output": output,
            "bytes": float(n_bytes), "pixels": int(pixels), "bpp": 8.0 * n_bytes / pixels if n_bytes == n_bytes
            else math.nan, "miou": miou, "pixel_accuracy": accuracy, "dec_s": float(dec_s),
            "confusion": matrix.reshape(-1).astype(np.int64).tolist()}


def frame(rows: Iterable[Mapping]) -> pd.DataFrame:
    """Rows as a DataFrame in the schema's column order, sorted by :data:`SORT`."""
    table = pd.DataFrame(list(rows), columns=COLUMNS)
    return table.sort_values(SORT, kind="stable").reset_index(drop=True)


# --- the receiver --------------------------------------------------------------------------------
def coded_files(files_dir: str | Path, image_id: str) -> dict[str, list[tuple[str, Path]]]:
    """{method folder: [(quality label, file)]} of one image under ``files/<dataset>``."""
    found: dict[str, list[tuple[str, Path]]] = {}
    root = Path(files_dir)
    for folder in sorted(p for p in root.glob("*") if p.is_dir()):
        for path in sorted(folder.glob(f"{image_id}_*")):
            stem, _, label = path.stem.rpartition("_")
            if path.is_file() and stem == image_id and label:
                found.setdefault(folder.name, []).append((label, path))
    return found


def labelled_sets(coded: str | Path, prepared: str | Path, split: str) -> dict[str, list[str]]:
    """{data set: ids of its labelled ``split`` images with coded files}, for every data set under
    ``coded/files`` that is prepared under ``prepared`` (a data set without labels, e.g. Kodak, is left out)."""
    from .segnet.prepared import list_prepared

    coded, prepared, found = Path(coded), Path(prepared), {}
    for files in sorted(p for p in (coded / "files").glob("*") if p.is_dir()):
        if not (prepared / files.name / "manifest.parquet").is_file():
            continue
        names = {path.stem.rpartition("_")[0] for folder in files.iterdir() if folder.is_dir()
                 for path in folder.iterdir()}
        ids = [s.id for s in list_prepared(prepared / files.name, split) if s.label_path is not None and s.id in names]
        if ids:
            found[files.name] = ids
    return found


class Receiver:
    """Decodes files and segments what they deliver, with the models found in ``models_dir`` (each
    loaded once) and the segmenter (registered model ``segmenter``: the pipeline's PSPNet)."""

    def __init__(self, models_dir: str | Path, device: str = "cpu", segmenter: str = "pspnet"):
        from .model_files import ModelStore

        self.store = ModelStore(dirs=[models_dir], device=device)
        self.segmenter = self.store.models([segmenter])[segmenter]
        self.num_classes = int(self.segmenter.config.num_classes)
        self._models: dict[str, Mapping] = {}

    def segment(self, image: np.ndarray) -> np.ndarray:
        from .layers import module_device
        from .segnet.inference import predict_labels
        from .segnet.prepared import image_to_tensor

        batch = image_to_tensor(image)[None].to(module_device(self.segmenter))
        return predict_labels(self.segmenter, batch)[0].cpu().numpy()

    def models_for(self, method) -> Mapping:
        if method.name not in self._models:
            self._models[method.name] = self.store.models(tuple(dict.fromkeys(method.models + method.task_models)))
        return self._models[method.name]

    def outputs(self, paths: Sequence[Path]) -> list[list[tuple[str, np.ndarray, int, float]]]:
        """Per file, (output, labels, bytes read, seconds) of every segmentation it delivers: a ``.sem``
        by its method (the files of one method decoded together: :meth:`Method.decode_with_maps_many`
        computes once what they share, the map the decoder's prediction uses included; each file's
        seconds still count what decoding it alone costs), anything
        else by Pillow (with the codec plugins semlic registers)."""
        from . import format as fmt
        from .imageio import load_image
        from .methods import get_method

        out: list[list] = [[] for _ in paths]
        sems: dict[str, list[tuple[int, bytes, fmt.SemFile]]] = {}
        for index, path in enumerate(paths):
            if path.suffix != ".sem":
                start = time.perf_counter()
                labels = self.segment(load_image(path))
                out[index].append((DECODED, labels, path.stat().st_size, time.perf_counter() - start))
                continue
            data = path.read_bytes()
            sem = fmt.unpack(data)
            sems.setdefault(sem.method, []).append((index, data, sem))
        for name, files in sems.items():
            method = get_method(name)
            models = self.models_for(method)
            delivered = method.decode_with_maps_many([data for _, data, _ in files], models)
            for (index, data, sem), (image, dec_s, maps, maps_s) in zip(files, delivered):
                start = time.perf_counter()
                labels = self.segment(image)
                out[index].append((DECODED, labels, len(data), dec_s + time.perf_counter() - start))
                seconds = maps_s / max(1, len(maps))
                for output, found in sorted(maps.items()):
                    if found.labels.shape != (sem.height, sem.width):
                        raise LabelMapError(f"{name} output {output}: map {found.labels.shape}, the image is "
                                            f"{sem.height}x{sem.width}")
                    out[index].append((output, found.labels, method.bytes_read(sem, found.roles), seconds))
        return out


def task_rows(samples: Sequence, files_dir: str | Path, receiver: Receiver, *, dataset: str,
              methods: Iterable[str] | None = None, progress: bool = True) -> list[dict]:
    """Rows (module docstring) of every coded file of ``samples`` (PreparedSample with labels) under
    ``files_dir`` (``files/<dataset>``), and the ``original`` row of each image. ``methods``: only
    these folders (default: all)."""
    from tqdm.auto import tqdm

    from .imageio import load_image, load_label_map

    wanted = None if methods is None else set(methods)
    k = receiver.num_classes
    rows = []
    for sample in tqdm(samples, desc="task rows", unit="image", disable=not progress):
        if sample.label_path is None:
            raise ConfigError(f"{sample.id}: no ground truth: task rows need labelled images")
        image, truth = load_image(sample.image_path), load_label_map(sample.label_path)
        pixels = truth.size
        start = time.perf_counter()
        labels = receiver.segment(image)
        rows.append(make_row(dataset, sample.id, ORIGINAL, "-", DECODED, math.nan, confusion(labels, truth, k),
                             pixels, time.perf_counter() - start))
        for folder, versions in coded_files(files_dir, sample.id).items():
            if wanted is not None and folder not in wanted:
                continue
            try:
                delivered = receiver.outputs([path for _, path in versions])
            except SemlicError as exc:
                raise type(exc)(f"{files_dir}/{folder}, image {sample.id}: {exc}") from None
            for (label, _), outputs in zip(versions, delivered):
                for output, prediction, n_bytes, seconds in outputs:
                    rows.append(make_row(dataset, sample.id, folder, label, output, n_bytes,
                                         confusion(prediction, truth, k), pixels, seconds))
    return rows


def read_rows(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Task rows of several Parquet files (this module's and others' of the same schema), one table."""
    tables = []
    for path in paths:
        table = pd.read_parquet(path)
        missing = sorted(set(COLUMNS) - set(table.columns))
        if missing:
            raise ConfigError(f"{path}: not task rows (missing {', '.join(missing)})")
        tables.append(table[COLUMNS])
    if not tables:
        raise ConfigError("no task rows given")
    return frame(pd.concat(tables, ignore_index=True).to_dict("records"))


# --- outputs --------------------------------------------------------------------------------------


def write_outputs(rows: pd.DataFrame, out_dir: str | Path) -> dict:
    """``rows.parquet``, ``summary.csv``, ``machines.csv``, ``figures/rate_miou_<dataset>.png`` and
    ``metrics.json`` (per method and output: its BD-rate on mIoU; DVC metrics) under ``out_dir``."""
    import json

    from .fileio import atomic_write_bytes, atomic_write_text, write_parquet

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_parquet(rows, out / "rows.parquet")
    table = task_summary(rows)
    table.to_csv(out / "summary.csv", index=False, float_format="%.6g")
    machines = task_table(table)
    machines.to_csv(out / "machines.csv", index=False, float_format="%.6g")
    for dataset in sorted(table["dataset"].unique()):
        atomic_write_bytes(out / "figures" / f"rate_miou_{dataset}.png", rate_miou_figure(table, dataset))
    bd_rates: dict = {}
    for r in machines.itertuples():
        if r.bd_rate_miou_pct == r.bd_rate_miou_pct:
            bd_rates.setdefault(r.dataset, {})[f"{r.method}:{r.output}"] = round(float(r.bd_rate_miou_pct), 2)
    headline = {"bd_rate_miou_pct": bd_rates,
                "original_miou": {d: round(float(v), 4) for d, v in
                                  table[table["method"] == ORIGINAL].set_index("dataset")["miou"].items()}}
    atomic_write_text(out / "metrics.json", json.dumps(headline, indent=2, sort_keys=True) + "\n")
    return headline
