"""``import semlic.pillow``: Pillow opens .sem files, ``Image.open("photo.sem")``.

A .sem file names its method and the fingerprints of the models that made it; decoding it needs
those models. They are found by their registered names below a models directory: the one given
to :func:`set_models_dir`, else the environment variable ``SEMLIC_MODELS_DIR`` (every model file
below it, as ``semlic decode --models-dir``). ``SEMLIC_DEVICE`` picks the device (default
``cpu``). Opening reads and checks the whole file (header, layers, checksum) and sets ``size``,
``mode`` ("RGB") and ``info`` (``semlic_method``, ``bpp``); the networks run on the first access
to the pixels (``load()``, ``np.asarray(image)``, ``image.save``...). A file that is not a valid
.sem file raises its :class:`semlic.errors.FormatError` from ``Image.open``; missing models
raise :class:`semlic.errors.MissingModelError` and models other than the file's
:class:`semlic.errors.FingerprintMismatchError` from ``load()``, each naming the directory.

    import semlic.pillow
    from PIL import Image

    semlic.pillow.set_models_dir("models")      # or SEMLIC_MODELS_DIR=models
    Image.open("photo.sem").save("photo.png")
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

from . import format as fmt
from .errors import FingerprintMismatchError, MissingModelError

FORMAT = "SEMLIC"
EXTENSION = ".sem"
MODELS_ENV = "SEMLIC_MODELS_DIR"
DEVICE_ENV = "SEMLIC_DEVICE"

_models_dir: Path | None = None
_stores: dict = {}   # (directory, device) -> ModelStore: each model loaded once per process


def set_models_dir(path: str | os.PathLike | None) -> None:
    """The directory whose model files decode .sem files (None: back to ``SEMLIC_MODELS_DIR``)."""
    global _models_dir
    _models_dir = Path(path) if path is not None else None
    _stores.clear()


def models_dir() -> Path | None:
    """The models directory in use: :func:`set_models_dir`'s, else ``SEMLIC_MODELS_DIR``'s, else None."""
    if _models_dir is not None:
        return _models_dir
    value = os.environ.get(MODELS_ENV)
    return Path(value) if value else None


def _store(directory: Path, device: str):
    from .model_files import ModelStore

    key = (directory.resolve(), device)
    if key not in _stores:
        _stores[key] = ModelStore(dirs=[directory], device=device)
    return _stores[key]


def decode(data: bytes, directory: str | os.PathLike | None = None, device: str | None = None) -> np.ndarray:
    """The RGB image (H, W, 3 uint8) of a .sem file's bytes, with the models found below ``directory``
    (default :func:`models_dir`)."""
    from .methods import get_method

    sem = fmt.unpack(data)
    method = get_method(sem.method)
    where = Path(directory) if directory is not None else models_dir()
    how = f"call semlic.pillow.set_models_dir(DIR) or set {MODELS_ENV}"
    if method.models and where is None:
        raise MissingModelError(f"this {sem.method} file decodes with the models {', '.join(method.models)}: "
                                f"no models directory is set ({how})")
    if where is not None and not where.is_dir():
        raise MissingModelError(f"models directory {where} does not exist ({how})")
    store = _store(where, device or os.environ.get(DEVICE_ENV, "cpu")) if where is not None else None
    missing = [name for name in method.models if store is None or name not in store]
    if missing:
        raise MissingModelError(f"this {sem.method} file decodes with the models {', '.join(method.models)}: "
                                f"no model file of {', '.join(missing)} below {where}")
    try:
        return method.decode(data, store.models(method.models) if store is not None else {})
    except FingerprintMismatchError as exc:
        raise FingerprintMismatchError(f"{exc} (the models below {where})") from exc


def _accept(prefix: bytes) -> bool:
    return prefix[: len(fmt.MAGIC)] == fmt.MAGIC


class SemImageFile(ImageFile.ImageFile):
    """A .sem file as a Pillow image: parsed on open, decoded by its method on the first load."""

    format = FORMAT
    format_description = "semlic semantic image file"

    def _open(self) -> None:
        data = self.fp.read()
        sem = fmt.unpack(data)   # FormatError (truncated, corrupt, unknown method...) propagates
        self._sem_data = data
        self._size = (sem.width, sem.height)
        self._mode = "RGB"
        self.info.update(semlic_method=sem.method, bpp=8 * len(data) / (sem.width * sem.height))
        self.tile = []

    def load(self):
        if getattr(self, "_sem_data", None) is not None:
            pixels = decode(self._sem_data)
            self._sem_data = None
            self.load_prepare()
            self.frombytes(np.ascontiguousarray(pixels).tobytes())
        return Image.Image.load(self)


def register() -> None:
    """Register the format with Pillow (done on import; idempotent)."""
    Image.register_open(FORMAT, SemImageFile, _accept)
    Image.register_extension(FORMAT, EXTENSION)
    Image.register_mime(FORMAT, "image/x-semlic")


register()
