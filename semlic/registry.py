"""The registries' core: coding methods by name and by format id, loaded on first use.

A method is a :class:`~semlic.methods.base.Method` subclass registered under its paper's name
with :func:`register_method` (CompressAI's ``registry`` in spirit); each system is a subpackage of
:mod:`semlic.methods`, found by listing that package (nothing names it), and imported the first
time the registry is read. The core reaches methods only through here: :mod:`semlic.format` maps a
header's id to a name, :mod:`semlic.model_files` finds a network's class, and neither imports a
method. :func:`load_builtin` also imports :mod:`semlic.segnet`, which registers the pipeline's
segmenter.

Methods defined outside semlic register the same way from their own module, which the registry
imports when it first loads if the module is named by an entry point of the group
``semlic.methods`` (an installed package) or listed, comma-separated, in the environment variable
``SEMLIC_METHODS`` (pipeline workers inherit it).
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import threading
from typing import TYPE_CHECKING, Callable, TypeVar

from .errors import ConfigError, UnknownMethodError

if TYPE_CHECKING:
    from .methods.base import Method

__all__ = ["register_method", "get_method", "method_names", "method_by_format_id", "all_methods", "unregister_method",
           "method_packages", "load_builtin", "find"]

_METHODS: dict[str, "Method"] = {}
_BY_FORMAT_ID: dict[int, "Method"] = {}
_LOADED = False
_LOADING = False   # True while the lock's holder imports the method packages
_LOCK = threading.RLock()        # the registry's mappings (register, unregister)
_LOAD_LOCK = threading.RLock()   # loading the method packages, once; never held by ``register``: a
                                 # thread importing a method package itself registers while another loads
M = TypeVar("M", bound=type)
#: The package whose subpackages are the built-in methods, and the one that registers the segmenter.
METHODS_PACKAGE, SEGMENTER_PACKAGE = "semlic.methods", "semlic.segnet"


def register_method(cls: M) -> M:
    """Class decorator: register one instance of ``cls`` under ``cls.name``.

    Names are hive-partition values (letters, digits, ``_.+-``); ``format_id`` is the
    header's method byte (1..255) and must be unique.
    """
    from .results import check_partition_value

    check_partition_value("method", cls.name)
    if not 1 <= int(cls.format_id) <= 255:
        raise ConfigError(f"method {cls.name}: format_id must be in 1..255, got {cls.format_id}")
    with _LOCK:
        for other in (_METHODS.get(cls.name), _BY_FORMAT_ID.get(cls.format_id)):
            if other is not None and type(other).__qualname__ != cls.__qualname__:
                raise ConfigError(f"method {cls.name} (format id {cls.format_id}) clashes with the registered "
                                  f"{other.name} (format id {other.format_id})")
        instance = cls()
        _METHODS[cls.name] = instance
        _BY_FORMAT_ID[cls.format_id] = instance
    return cls


def unregister_method(name: str) -> None:
    """Remove a method (tests that register a toy method clean up with it)."""
    with _LOCK:
        method = _METHODS.pop(name, None)
        if method is not None:
            _BY_FORMAT_ID.pop(method.format_id, None)


def method_packages() -> list:
    """Every subpackage of semlic.methods (one system each), imported: registering their methods.

    A package may define ``register_cli(subparsers)`` to add its own commands (training and the
    like) to ``semlic``.
    """
    package = importlib.import_module(METHODS_PACKAGE)
    return [importlib.import_module(f"{METHODS_PACKAGE}.{info.name}")
            for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name) if info.ispkg]


def external_modules() -> list[str]:
    """Modules outside semlic that register methods: entry points ``semlic.methods``, then ``SEMLIC_METHODS``."""
    from importlib.metadata import entry_points

    names = [ep.value.split(":")[0] for ep in entry_points(group="semlic.methods")]
    names += [n.strip() for n in os.environ.get("SEMLIC_METHODS", "").split(",") if n.strip()]
    return list(dict.fromkeys(names))


def load_builtin() -> None:
    """Import the segmenter's package, every subpackage of semlic.methods and the external modules, once.

    Other threads wait on the lock until the registry is complete (``_LOADED`` is set only then);
    the loading thread itself re-enters (a method module asking the registry while it is
    imported) and finds ``_LOADING``.
    """
    global _LOADED, _LOADING
    if _LOADED:
        return
    with _LOAD_LOCK:
        if _LOADED or _LOADING:
            return
        _LOADING = True
        try:
            importlib.import_module(SEGMENTER_PACKAGE)
            method_packages()
            for name in external_modules():
                try:
                    importlib.import_module(name)
                except ImportError as exc:
                    raise ConfigError(f"cannot import the method module {name!r} (SEMLIC_METHODS or an "
                                      f"entry point of semlic.methods): {exc}") from exc
            _LOADED = True
        finally:
            _LOADING = False


def all_methods() -> list["Method"]:
    """Every registered method, by name."""
    load_builtin()
    return [_METHODS[name] for name in sorted(_METHODS)]


def method_names() -> tuple[str, ...]:
    load_builtin()
    return tuple(sorted(_METHODS))


def get_method(name: str) -> "Method":
    load_builtin()
    try:
        return _METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown method {name!r}; registered: {', '.join(sorted(_METHODS))}") from None


def method_by_format_id(format_id: int) -> "Method":
    load_builtin()
    try:
        return _BY_FORMAT_ID[format_id]
    except KeyError:
        raise UnknownMethodError(f"method id {format_id} is unknown to this build "
                                 f"(registered: {', '.join(f'{m.name}={i}' for i, m in sorted(_BY_FORMAT_ID.items()))})"
                                 ) from None


def find(predicate: Callable[["Method"], bool]) -> list["Method"]:
    """Registered methods for which ``predicate`` holds."""
    return [m for m in all_methods() if predicate(m)]
