"""Stages: library functions that declare their params and submit their work to an executor.

A stage is a function ``run(params, executor) -> record`` registered under its dvc.yaml name::

    @stage("train_smapnet")
    def train_smapnet(params: dict, executor: Executor) -> dict:
        ...
        future = executor.submit(train_unit, config, str(pairs), str(out), device,
                                 resources=training_resources(base))
        return future.result()

``params`` holds the sections the stage reads (``base``, ``paths`` and its own, by default); the
stage writes its outputs through :func:`semlic.pipeline.staging.staged_dir` (whole or not at all,
resumable) and returns a small record. It knows nothing of the runner: ``python -m flows <stage>``
(what ``dvc repro`` runs) gives it ``flows.executor.PrefectRayExecutor``, ``python -m
semlic.pipeline <stage>`` a :class:`~semlic.pipeline.executor.LocalExecutor`.

The stage graph is dvc.yaml's: :func:`dvc_stages` reads it and :func:`plan` orders what a
target needs from it. A stage of the repository lives in ``semlic/pipeline/stages/<name>.py``
(found by name, imported when first used); adding one takes that module, its params.yaml section
and its dvc.yaml entry.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from semlic.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
DVC_YAML = REPO / "dvc.yaml"


@dataclass(frozen=True)
class Stage:
    name: str
    sections: tuple[str, ...]
    run: Callable[[dict, Any], dict]

    @property
    def description(self) -> str:
        doc = (self.run.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else f"Stage {self.name}"


_STAGES: dict[str, Stage] = {}


def stage(name: str, sections: Sequence[str] | None = None) -> Callable:
    """Register ``run(params, executor)`` as stage ``name``, reading ``sections`` of the params
    (default: ``base``, ``paths`` and ``name``)."""

    def register(run: Callable[[dict, Any], dict]) -> Callable[[dict, Any], dict]:
        _STAGES[name] = Stage(name, tuple(sections or ("base", "paths", name)), run)
        return run

    return register


def stage_modules() -> list[str]:
    """The stages of the repository: the modules of ``semlic.pipeline.stages``."""
    from semlic.pipeline import stages

    return sorted(m.name for m in pkgutil.iter_modules(stages.__path__))


def get_stage(name: str) -> Stage:
    """The stage registered as ``name`` (its module in ``semlic.pipeline.stages`` imported on first use)."""
    if name not in _STAGES and name in stage_modules():
        importlib.import_module(f"semlic.pipeline.stages.{name}")
    try:
        return _STAGES[name]
    except KeyError:
        known = sorted(set(stage_modules()) | set(_STAGES))
        raise ConfigError(f"no stage {name!r} (known: {', '.join(known)})") from None


# --- the graph: dvc.yaml ---------------------------------------------------------------------------

def dvc_stages(path: str | Path = DVC_YAML, params: dict | None = None) -> dict[str, dict]:
    """dvc.yaml's stages in file order: ``{name: {"cmd", "deps", "outs", "params"}}``, ``${a.b}``
    resolved from ``params`` (the params file's mapping; params.yaml beside dvc.yaml by default)."""
    import yaml

    path = Path(path)
    if params is None:
        params_file = path.with_name("params.yaml")
        params = yaml.safe_load(params_file.read_text()) if params_file.is_file() else {}

    def resolve(text: str) -> str:
        def value(match: re.Match) -> str:
            node: Any = params
            for key in match.group(1).split("."):
                if not isinstance(node, dict) or key not in node:
                    raise ConfigError(f"{path}: ${{{match.group(1)}}} is not in the params")
                node = node[key]
            return str(node)

        return re.sub(r"\$\{([^}]+)\}", value, str(text))

    def names(entries: list | None) -> list[str]:
        out = []
        for entry in entries or []:
            out += [resolve(k) for k in entry] if isinstance(entry, dict) else [resolve(entry)]
        return out

    stages = (yaml.safe_load(path.read_text()) or {}).get("stages") or {}
    return {name: {"cmd": spec.get("cmd"), "deps": names(spec.get("deps")), "outs": names(spec.get("outs")),
                   "params": names(spec.get("params"))} for name, spec in stages.items()}


def _under(path: str, folder: str) -> bool:
    path, folder = path.rstrip("/"), folder.rstrip("/")
    return path == folder or path.startswith(folder + "/")


def plan(targets: Sequence[str] | None = None, graph: dict[str, dict] | None = None,
         upstream: bool = True) -> list[str]:
    """The stages that make ``targets`` (every stage when None), in dvc.yaml's order: each target and,
    with ``upstream``, every stage whose outputs it depends on, transitively."""
    graph = dvc_stages() if graph is None else graph
    unknown = [t for t in targets or [] if t not in graph]
    if unknown:
        raise ConfigError(f"no stage {', '.join(unknown)} in dvc.yaml (stages: {', '.join(graph)})")
    if not targets:
        return list(graph)
    wanted = set(targets)
    if upstream:
        todo = list(targets)
        while todo:
            deps = graph[todo.pop()]["deps"]
            for name, spec in graph.items():
                if name not in wanted and any(_under(d, o) or _under(o, d) for d in deps for o in spec["outs"]):
                    wanted.add(name)
                    todo.append(name)
    return [name for name in graph if name in wanted]
