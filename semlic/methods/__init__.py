"""The coding methods: one subpackage per system, registered by name (:mod:`semlic.registry`).

A method is a :class:`~semlic.methods.base.Method` subclass registered under its paper's name
with :func:`register_method`; each system lives in its own subpackage here (``dsslic``,
``edms``, ...), and every subpackage is imported the first time the registry is read, so a
new system is a new folder: nothing else lists it. A package imports its codec (which registers
its methods) and declares its networks (:func:`semlic.model_files.declare_models`); the networks,
and torch with them, are imported when a network is first used (:mod:`semlic.lazy`), so reading
the registry or a file's header needs neither. Code outside a method's package asks the
registry (:func:`get_method`, :func:`method_names`, :func:`method_by_format_id`) and never
branches on a method's name. A method package imports the core and, where it extends another
system's networks, that system's public model module; nothing else crosses between them
(import-linter contracts in pyproject.toml, tests/test_architecture.py).
"""

from __future__ import annotations

from ..registry import (all_methods, external_modules, find, get_method, load_builtin, method_by_format_id,
                        method_names, method_packages, register_method, unregister_method)
from .base import DecoderMap, EncodeResult, Method, ModelSet, Option, PaperPoint

__all__ = ["DecoderMap", "EncodeResult", "Method", "ModelSet", "Option", "PaperPoint", "register_method", "get_method",
           "method_names", "method_by_format_id", "all_methods", "unregister_method", "method_packages",
           "external_modules", "find", "load_builtin"]
