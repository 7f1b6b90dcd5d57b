"""Heavy modules imported on first use, so that a command that reads metadata starts without them.

``torch = lazy_module("torch")`` at the top of a module binds a stand-in that imports torch the
first time one of its attributes is read (``torch.zeros``, ``torch.Tensor``); nothing is put in
``sys.modules`` until then, and after that the stand-in only forwards. ``@inference_mode`` is
``@torch.inference_mode()`` for a function, importing torch when the function first runs. Type
annotations stay strings (``from __future__ import annotations``), so they import nothing.
``semlic methods``, ``semlic info`` and ``semlic model-info`` run without torch this way
(tests/test_cli_startup.py; benchmarks/cli_startup.py measures them).
"""

from __future__ import annotations

import functools
import importlib
from types import ModuleType
from typing import Any, Callable, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class LazyModule:
    """A module imported when one of its attributes is first read."""

    __slots__ = ("_name", "_module")

    def __init__(self, name: str):
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attr: str) -> Any:
        module = self._module
        if module is None:
            module = self._module = importlib.import_module(self._name)
        return getattr(module, attr)

    def __repr__(self) -> str:
        state = "imported" if self._module is not None else "not imported yet"
        return f"<lazy module {self._name!r} ({state})>"


def lazy_module(name: str) -> LazyModule:
    """A stand-in for ``import name`` that imports on first attribute access."""
    return LazyModule(name)


def inference_mode(fn: F) -> F:
    """``@torch.inference_mode()`` that imports torch when ``fn`` first runs, not when it is defined."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import torch

        with torch.inference_mode():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def lazy_exports(package: str, names: dict[str, str]):
    """``(__getattr__, __dir__)`` for a package whose public names live in submodules imported on
    first use (PEP 562): ``{name: submodule}``, relative to ``package`` when it starts with a dot.
    ``from package import Name`` and ``package.Name`` import the submodule then, and only then."""
    import sys

    def __getattr__(name: str) -> Any:
        try:
            module = names[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        value = getattr(importlib.import_module(module, package), name)
        setattr(sys.modules[package], name, value)   # found once: later reads are plain attributes
        return value

    def __dir__() -> list[str]:
        return sorted(set(names) | set(vars(sys.modules[package])))

    return __getattr__, __dir__
