"""Reading a command's settings from a YAML (or JSON) file: a named section or top-level keys."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import yaml

from .errors import ConfigError


def read_section(path: str | None, section: str, known: Iterable[str] | None = None) -> dict:
    """The ``section`` mapping of a YAML file (or its top-level keys when it has no such section).

    ``known``: keep only these keys (a params.yaml section may hold keys meant for the stage).
    An unreadable file or a non-mapping is a :class:`ConfigError`; no path gives ``{}``.
    """
    if not path:
        return {}
    try:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the config ({exc})") from exc
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping, found {type(loaded).__name__}")
    values = loaded.get(section, loaded)
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: section {section!r} is not a mapping")
    values = dict(values)
    if known is not None:
        known = set(known)
        values = {k: v for k, v in values.items() if k in known}
    return values


def dataclass_from_dict(cls, data: dict, what: str):
    """``cls(**data)`` for a dataclass, refusing unknown keys by name (``unknown <what> keys``)."""
    from dataclasses import fields

    if not isinstance(data, dict):
        raise ConfigError(f"{what}: expected a mapping, found {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown {what} keys: {unknown}; known: {sorted(known)}")
    return cls(**data)
