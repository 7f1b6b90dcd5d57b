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


# --- time budgets (semlic.train_loop: a pause and a budget are two things) ---------------------
def seconds(minutes: float | None) -> float | None:
    """Minutes (a config's ``minutes``, a command's ``--pause-after``) as the loop's seconds; None stays None."""
    return None if minutes is None else 60.0 * float(minutes)


def add_pause_argument(parser) -> None:
    """``--pause-after M``: a training command's resumable pause (this call stops after M minutes, the
    state saved; rerun to continue). Not the config's ``minutes``, the budget after which the model is
    written as it is."""
    parser.add_argument("--pause-after", type=float, metavar="MINUTES",
                        help="pause after this many minutes of this call, the state saved (rerun to continue); "
                             "the config's minutes is the training budget instead")
