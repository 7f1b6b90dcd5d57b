"""Model files: one format, one loader (CompressAI's ``zoo`` in spirit: the file says what to build).

A model file is safetensors: the weights (no pickle) and, in the metadata, ``format`` =
``semlic/1``, ``model`` = the registered model name (``dsslic``, ``smapnet``, ``pspnet``, ...),
``config`` = the JSON of the network's config and ``fingerprint`` = the 8-byte SHA-256 of the
weights (:func:`state_fingerprint`: names, dtypes, shapes and bytes in sorted order; a ``.sem``
file records it and decoding refuses other weights). :func:`load_model` reads the name, builds
the registered network from its config and loads the weights strictly.

Networks register with :func:`register_model` (a class decorator), by the paper's name, with a
config class that has ``from_dict`` / ``to_dict``. Files written before this format was shared
still load: PSPNet files of format ``semlic-segnet`` (version 1) are read as ``pspnet``
(``semlic convert-model`` rewrites any readable file in the current format).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from .errors import CheckpointError, ConfigError
from .fileio import atomic_write_bytes
from .lazy import lazy_module

torch = lazy_module("torch")
safetensors_torch = lazy_module("safetensors.torch")

FORMAT = "semlic/1"
LEGACY_SEGNET_FORMAT = "semlic-segnet"   # PSPNet files written before the shared format
_MAX_LISTED = 5
_MAX_HEADER = 100 << 20


@dataclass(frozen=True)
class ModelSpec:
    """A registered network: its class, its config class, and how to build a preset."""

    name: str
    cls: type
    config_cls: type
    preset: Callable[..., Any] | None = None   # preset(name, num_classes, **overrides) -> config


_MODELS: dict[str, ModelSpec] = {}
_DECLARED: dict[str, str] = {}   # model name -> the module that registers it, imported when the model is used


def declare_models(package: str, modules: dict[str, str]) -> None:
    """Declare the networks a package registers in its modules, without importing them (and torch):
    ``{model name: module}``, a module name relative to ``package`` when it starts with a dot. The
    module is imported the first time the model is built, loaded or its config read
    (:func:`model_spec`); :func:`model_names` lists declared models with the registered ones."""
    import importlib.util

    for name, module in modules.items():
        _DECLARED[name] = importlib.util.resolve_name(module, package)


def register_model(name: str, config_cls: type, preset: Callable[..., Any] | None = None):
    """Class decorator: register an ``nn.Module`` built as ``cls(config)`` under ``name``."""

    def wrap(cls):
        existing = _MODELS.get(name)
        if existing is not None and existing.cls.__qualname__ != cls.__qualname__:
            raise ConfigError(f"model name {name!r} is registered already ({existing.cls.__qualname__})")
        _MODELS[name] = ModelSpec(name, cls, config_cls, preset)
        cls.registry_name = name
        return cls

    return wrap


def _ensure_registered() -> None:
    """Import the packages that register networks (the segmenter's, every method's: the registry finds them)."""
    from .registry import load_builtin

    load_builtin()


def declared_models() -> dict[str, str]:
    """{model name: the module that registers it} of every network a loaded package declared."""
    _ensure_registered()
    return dict(_DECLARED)


def model_spec(name: str) -> ModelSpec:
    if name not in _MODELS:  # a network not imported yet: load the registering packages
        _ensure_registered()
    if name not in _MODELS and name in _DECLARED:   # declared by its package: import the module that registers it
        import importlib

        importlib.import_module(_DECLARED[name])
    try:
        return _MODELS[name]
    except KeyError:
        raise CheckpointError(f"unknown model {name!r}; registered: {', '.join(sorted(set(_MODELS) | set(_DECLARED)))}") from None


def model_names() -> tuple[str, ...]:
    _ensure_registered()
    return tuple(sorted(set(_MODELS) | set(_DECLARED)))


def build_model(name: str, preset: str, num_classes: int, **overrides) -> torch.nn.Module:
    """A randomly initialised network of a registered preset (for timing and tests)."""
    spec = model_spec(name)
    if spec.preset is None:
        raise ConfigError(f"model {name} has no presets")
    return spec.cls(spec.preset(preset, num_classes, **overrides))


# --- fingerprints ------------------------------------------------------------------------------
def state_fingerprint(state: dict[str, torch.Tensor]) -> bytes:
    """8-byte SHA-256 fingerprint of a state dict (device and memory layout independent)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.digest()[:8]


# --- raw safetensors ---------------------------------------------------------------------------
def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata of a safetensors file, reading only its header."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            length = int.from_bytes(fh.read(8), "little")
            if not 0 < length <= _MAX_HEADER:
                raise ValueError(f"header length {length} is not plausible")
            header = json.loads(fh.read(length))
    except FileNotFoundError:
        raise CheckpointError(f"model file {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from exc
    return dict(header.get("__metadata__") or {}) if isinstance(header, dict) else {}


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write tensors and metadata as safetensors, atomically (never half a file)."""
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write_bytes(path, safetensors_torch.save(cpu, metadata={"format": FORMAT, **metadata}))


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file; :class:`CheckpointError` if it is unreadable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model file {path} does not exist")
    data = path.read_bytes()
    try:
        length = int.from_bytes(data[:8], "little")
        if len(data) < 8 + length:
            raise ValueError(f"header declares {length} bytes but the file has {len(data)}")
        header = json.loads(data[8: 8 + length])
        metadata = dict(header.get("__metadata__") or {})
        tensors = safetensors_torch.load(data)
    except Exception as exc:  # safetensors raises its own untyped errors
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from exc
    return tensors, metadata


# --- model files -----------------------------------------------------------------------------
def model_name_of(metadata: dict[str, str], path: str | os.PathLike = "") -> str:
    """The registered model name a file's metadata declares (current and earlier formats)."""
    kind = metadata.get("format")
    if kind == FORMAT and metadata.get("model"):
        return metadata["model"]
    if kind == LEGACY_SEGNET_FORMAT:
        if metadata.get("format_version") != "1" or metadata.get("architecture") != "pspnet":
            raise CheckpointError(f"{path}: a {LEGACY_SEGNET_FORMAT} file of version "
                                  f"{metadata.get('format_version')!r} / architecture "
                                  f"{metadata.get('architecture')!r} is not readable by this build")
        return "pspnet"
    if kind == FORMAT:
        raise CheckpointError(f"{path}: a semlic file without a model name (a training state?), not a model file")
    raise CheckpointError(f"{path}: expected a semlic model file ({FORMAT}), found format {kind!r}")


def save_model(path: str | os.PathLike, model: torch.nn.Module, extra: dict | None = None) -> bytes:
    """Save a registered network with its name and config; return its fingerprint.

    ``extra``: more metadata (JSON values), e.g. how many iterations trained it.
    """
    name = getattr(type(model), "registry_name", None)
    if name is None or name not in _MODELS:
        raise ConfigError(f"{type(model).__name__} is not a registered model (semlic.model_files.register_model)")
    state = model.state_dict()
    fingerprint = state_fingerprint(state)
    meta = {"model": name, "config": json.dumps(model.config.to_dict(), sort_keys=True),
            "fingerprint": fingerprint.hex()}
    meta.update({k: json.dumps(v, sort_keys=True) for k, v in (extra or {}).items()})
    save_tensors(path, state, meta)
    return fingerprint


def written_model(path: str | os.PathLike) -> dict | None:
    """What a training wrote to ``path``, TrainResult-like (completed, stopped_by, iteration,
    total_iterations, model_path, last, reused), from the model file's metadata; None when there is
    no file. A stage that keeps a part already trained reports it with this."""
    path = Path(path)
    if not path.is_file():
        return None
    meta = read_metadata(path)
    iterations, planned = (int(json.loads(meta.get(k, "0"))) for k in ("iterations", "planned_iterations"))
    return {"completed": iterations >= planned, "stopped_by": None if iterations >= planned else "budget",
            "iteration": iterations, "total_iterations": planned, "model_path": str(path), "last": {}, "reused": True}


def assign_state(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str,
                 source_name: Callable[[str], str] | None = None) -> None:
    """Load ``state`` into ``module`` after checking keys and shapes exactly.

    ``source_name`` maps the module's key to its name in a converted file's layout, so errors
    name both. BatchNorm ``num_batches_tracked`` counters may be absent; everything else must
    be present with the expected shape and nothing may be left over.
    """
    name_of = source_name or (lambda key: key)
    expected = module.state_dict()
    problems = []
    for key, target in expected.items():
        label = f"'{name_of(key)}' (for '{key}')" if name_of(key) != key else f"'{key}'"
        if key not in state:
            if not key.endswith("num_batches_tracked"):
                problems.append(f"missing tensor {label}, expected shape {tuple(target.shape)}")
        elif tuple(state[key].shape) != tuple(target.shape):
            problems.append(f"tensor {label} has shape {tuple(state[key].shape)}, expected {tuple(target.shape)}")
    for key in sorted(set(state) - set(expected)):
        problems.append(f"unexpected tensor '{name_of(key)}' of shape {tuple(state[key].shape)}")
    if problems:
        more = f" (and {len(problems) - _MAX_LISTED} more)" if len(problems) > _MAX_LISTED else ""
        raise CheckpointError(f"{source}: does not fit the model: " + "; ".join(problems[:_MAX_LISTED]) + more)
    module.load_state_dict({key: state.get(key, value) for key, value in expected.items()}, strict=True)


def config_of(path: str | os.PathLike, metadata: dict[str, str] | None = None):
    """(registered name, config object) stored in a model file, without reading its weights."""
    metadata = read_metadata(path) if metadata is None else metadata
    name = model_name_of(metadata, path)
    spec = model_spec(name)
    try:
        return name, spec.config_cls.from_dict(json.loads(metadata["config"]))
    except (KeyError, json.JSONDecodeError, TypeError, ValueError, ConfigError) as exc:
        raise CheckpointError(f"{path}: the stored {name} config is missing or invalid ({exc})") from exc


def stored_config(path: str | os.PathLike, metadata: dict[str, str] | None = None) -> tuple[str, dict]:
    """(registered name, config as stored) of a model file, read from its header without building the
    network's config class (so without importing the network or torch): what ``semlic model-info``
    shows. The name must be a declared or registered model and the config a JSON object; the fields
    are checked against the network when it is built (:func:`config_of`, :func:`load_model`). A file of
    an earlier format goes through :func:`config_of` (its config is converted)."""
    metadata = read_metadata(path) if metadata is None else metadata
    name = model_name_of(metadata, path)
    if metadata.get("format") != FORMAT:
        name, config = config_of(path, metadata)
        return name, config.to_dict()
    _ensure_registered()
    if name not in _MODELS and name not in _DECLARED:
        raise CheckpointError(f"unknown model {name!r}; registered: {', '.join(sorted(set(_MODELS) | set(_DECLARED)))}")
    try:
        config = json.loads(metadata["config"])
    except (KeyError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: the stored {name} config is missing or invalid ({exc})") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: the stored {name} config is not a JSON object")
    return name, config


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu", expect: str | None = None) -> torch.nn.Module:
    """Build the network a model file names, load its weights, move it to ``device``, eval mode.

    ``expect``: refuse a file of another model (a :class:`CheckpointError` naming both).
    ``model.fingerprint`` identifies the weights (what a ``.sem`` header records).
    """
    tensors, metadata = load_tensors(path)
    name, config = config_of(path, metadata)
    if expect is not None and name != expect:
        raise CheckpointError(f"{path}: expected a {expect!r} model, found {name!r}")
    model = model_spec(name).cls(config)
    assign_state(model, tensors, str(path))
    model.fingerprint = state_fingerprint(model.state_dict())
    return model.to(device).eval()


def convert_model_file(source: str | os.PathLike, target: str | os.PathLike) -> str:
    """Rewrite a readable model file (any supported format) in the current format; return its name."""
    model = load_model(source)
    save_model(target, model)
    return model.registry_name


# --- finding the models a method needs ---------------------------------------------------------
class ModelStore:
    """Model files found in directories or given one by one, indexed by their registered name.

    Only the metadata is read when indexing; a model is loaded the first time it is asked for.
    Two files of the same name are refused when that name is asked for (give the file itself).
    """

    def __init__(self, files: Iterable[str | os.PathLike] = (), dirs: Iterable[str | os.PathLike] = (),
                 device: str | torch.device = "cpu"):
        self.device = device
        self._paths: dict[str, list[Path]] = {}
        self._loaded: dict[str, torch.nn.Module] = {}
        for path in files:
            self._add(Path(path), strict=True)
        for directory in dirs:
            directory = Path(directory)
            if not directory.is_dir():
                raise CheckpointError(f"models directory {directory} does not exist")
            for path in sorted(directory.rglob("*.safetensors")):
                self._add(path, strict=False)

    def _add(self, path: Path, strict: bool) -> None:
        try:
            name = model_name_of(read_metadata(path), path)
        except CheckpointError:
            if strict:
                raise
            return  # training states and other safetensors files beside the models
        self._paths.setdefault(name, [])
        if path not in self._paths[name]:
            self._paths[name].append(path)

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._paths))

    def paths(self, name: str) -> tuple[Path, ...]:
        """Every file of model ``name`` (several: e.g. one student per folder)."""
        return tuple(self._paths.get(name, ()))

    def path(self, name: str) -> Path | None:
        paths = self._paths.get(name, [])
        if len(paths) > 1:
            raise CheckpointError(f"several {name} model files: {', '.join(map(str, paths))}; give the one to use")
        return paths[0] if paths else None

    def get(self, name: str, default=None):
        if name not in self._loaded:
            path = self.path(name)
            if path is None:
                return default
            self._loaded[name] = load_model(path, self.device, expect=name)
        return self._loaded[name]

    def __getitem__(self, name: str) -> torch.nn.Module:
        model = self.get(name)
        if model is None:
            raise KeyError(name)
        return model

    def __contains__(self, name: object) -> bool:
        return name in self._paths

    def models(self, names: Iterable[str]) -> dict[str, torch.nn.Module]:
        """The loaded models of ``names`` that are present (missing ones are left to the method)."""
        return {name: self.get(name) for name in names if name in self._paths}
