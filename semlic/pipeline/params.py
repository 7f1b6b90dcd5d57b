"""A stage's parameters: sections of a params file, ``--set`` overrides, shards of work items.

A stage reads ``base``, ``paths`` (where the stages read and write) and its own section of
``params.yaml`` (``dvc.yaml`` names the keys that change its outputs); ``--set section.key=value``
overrides a key (values parsed as YAML, like ``dvc exp run -S``). A stage maps its items (images, ids) in :func:`shards` of
``<stage>.shard_size``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

PARAMS_FILE = "params.yaml"


def _parse_value(text: str) -> Any:
    return yaml.safe_load(text)


def apply_overrides(params: dict, overrides: Iterable[str]) -> dict:
    """Apply ``section.key=value`` overrides (values parsed as YAML), like ``dvc exp run -S``."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set takes section.key=value, got {item!r}")
        node = params
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = _parse_value(value)
    return params


def load_params(path: str | os.PathLike = PARAMS_FILE, sections: Sequence[str] = ("base",),
                overrides: Iterable[str] = ()) -> dict:
    """The named sections of a params file (``{section: {...}}``) after overrides."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise SystemExit(f"{path}: no such params file") from None
    data = apply_overrides(data, overrides)
    missing = [s for s in sections if s not in data]
    if missing:
        raise SystemExit(f"{path}: missing params sections {missing}")
    return {s: data[s] for s in sections}


def base_from_file(path: str | os.PathLike = PARAMS_FILE) -> dict:
    """The ``base`` section of the params file in the working directory, ``{}`` without one
    (a flow run by a deployment's worker, given its params as a parameter)."""
    try:
        return load_params(path, ["base"])["base"]
    except SystemExit:
        return {}


def shards(items: Sequence, size: int) -> list[list]:
    """Consecutive chunks of at most ``size`` items (the items' order is kept)."""
    size = max(1, int(size))
    items = list(items)
    return [items[i:i + size] for i in range(0, len(items), size)]


def seeded_section(params: dict, stage: str) -> dict:
    """A stage's section with ``seed`` from ``base`` unless the section sets one."""
    config = dict(params[stage])
    config.setdefault("seed", params["base"]["seed"])
    return config


def training_section(params: dict, stage: str) -> dict:
    """A training stage's section: ``seed`` from ``base`` unless it has its own, ``num_classes`` null
    (or absent) -> the data set's number of classes."""
    from semlic.data.datasets import get_spec

    config = seeded_section(params, stage)
    if config.get("num_classes") is None:
        config["num_classes"] = get_spec(params["base"]["dataset"]).num_classes
    return config


def stage_paths(params: dict) -> dict[str, Path]:
    """The ``paths`` section as absolute paths (tasks may run on other nodes of a shared file system).

    params.yaml is the one place these live: dvc.yaml names the same folders as ``${paths.*}``.
    """
    paths = params.get("paths")
    if not isinstance(paths, dict):
        raise SystemExit("params: a 'paths' section (prepared, segments, models, pairs, coded, results) is required")
    return {key: Path(value).absolute() for key, value in paths.items()}
