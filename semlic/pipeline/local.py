"""``python -m semlic.pipeline STAGE...``: stages run by local processes, without Prefect, Ray or DVC.

The same stage functions as ``dvc repro`` runs, given a :class:`~semlic.pipeline.executor.LocalExecutor`
of ``base.workers`` processes (``--workers 0``: in this process, one unit at a time). Outputs
are staged and resumable as under DVC, and a stage whose params, dvc.yaml deps and outputs are as
when it last finished here is skipped (``--force`` runs it); what DVC adds beyond that (the cache,
the lock, experiments) is not done here. ``--upstream`` also runs the stages a target needs, in
dvc.yaml's order (:func:`semlic.pipeline.stage.plan`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from semlic.errors import SemlicError
from semlic.pipeline.executor import LocalExecutor
from semlic.pipeline.params import PARAMS_FILE, load_params
from semlic.fileio import atomic_write_text
from semlic.pipeline.stage import DVC_YAML, dvc_stages, get_stage, plan
from semlic.pipeline.staging import storage_error, storage_message


def run_stage(name: str, params: dict, workers: int | None = None) -> dict:
    """Run stage ``name`` on ``params`` (its sections) with local processes; its record. A full or
    read-only disk stops it with a message saying what is kept (SystemExit)."""
    spec = get_stage(name)
    workers = int(params.get("base", {}).get("workers", 2)) if workers is None else workers
    try:
        with LocalExecutor(workers) as executor:
            return spec.run(params, executor)
    except Exception as exc:
        found = storage_error(exc)
        if found is not None:
            raise SystemExit(storage_message(name, found)) from exc
        raise


def stage_fingerprint(params: dict, deps: Sequence[str | Path]) -> str:
    """What a stage's outputs are made from: its params sections and the content of its dvc.yaml deps
    (the code it runs and the data it reads; a missing one counts as missing)."""
    import hashlib

    from semlic.pipeline.staging import content_signature

    text = json.dumps(params, sort_keys=True, default=str) + content_signature(*deps)
    return hashlib.sha256(text.encode()).hexdigest()


def run_local(names: Sequence[str], params_file: str | Path = PARAMS_FILE, overrides: Sequence[str] = (),
              workers: int | None = None, upstream: bool = False, force: bool = False,
              report: Callable[[str], None] | None = None) -> dict[str, dict]:
    """Run the stages ``names`` (with ``upstream``, and what they need) in dvc.yaml's order; their
    records by name. ``report`` gets one line per stage.

    As ``dvc repro`` does, a stage whose params and deps are what they were when it last finished
    here, and whose outputs are all there, is skipped (its record: ``{"skipped": True}``) unless
    ``force``. What a finished stage was made from is kept in ``data/.pipeline/<stage>.json`` beside
    the params file (``stage_fingerprint``)."""
    report = report or (lambda line: print(line, file=sys.stderr))
    root = Path(params_file).absolute().parent
    beside = root / "dvc.yaml"   # a project's own dvc.yaml, else the repository's
    graph = dvc_stages(beside) if beside.is_file() else dvc_stages()
    base_dir = beside.parent if beside.is_file() else DVC_YAML.parent
    order = plan(names, graph, upstream=upstream) if all(n in graph for n in names) else list(names)
    records = {}
    for name in order:
        params = load_params(params_file, get_stage(name).sections, overrides)
        spec = graph.get(name, {"deps": [], "outs": []})
        # a dep not in the project (the code, when the project is a folder of params and data) is the repository's
        deps = [base_dir / d if (base_dir / d).exists() or not (DVC_YAML.parent / d).exists() else DVC_YAML.parent / d
                for d in spec["deps"]]
        fingerprint = stage_fingerprint(params, deps)
        done = root / "data" / ".pipeline" / f"{name}.json"
        if not force and done.is_file() and json.loads(done.read_text()).get("fingerprint") == fingerprint \
                and all((base_dir / out).exists() for out in spec["outs"]):
            records[name] = {"skipped": True}
            report(f"{name}: up to date, skipped (--force reruns it)")
            continue
        start = time.perf_counter()
        records[name] = run_stage(name, params, workers)
        report(f"{name}: done in {time.perf_counter() - start:.1f} s (local processes)")
        atomic_write_text(done, json.dumps({"stage": name, "fingerprint": fingerprint}, indent=2) + "\n")
    return records


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m semlic.pipeline",
                                     description="Run pipeline stages with local processes (no Prefect, Ray or DVC).")
    parser.add_argument("stages", nargs="*", metavar="STAGE", help="stages to run (dvc.yaml names)")
    parser.add_argument("--params", default=PARAMS_FILE, help="params file (default: params.yaml)")
    parser.add_argument("--set", "-S", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a parameter (YAML value), e.g. -S code.shard_size=4")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes at once (default: base.workers; 0: in this process, one unit at a time)")
    parser.add_argument("--upstream", action="store_true", help="also run the stages the targets need")
    parser.add_argument("--force", action="store_true",
                        help="run every named stage even where its params, deps and outputs are as when it last finished")
    parser.add_argument("--list", action="store_true", help="list the stages in dvc.yaml's order and exit")
    parser.add_argument("--record", default=None, metavar="JSON", help="also write the stages' records to this file")
    args = parser.parse_args(argv)
    if args.list or not args.stages:
        for name in plan():
            print(f"{name:18s} {get_stage(name).description}")
        return 0
    try:
        records = run_local(args.stages, args.params, args.set, args.workers, args.upstream, args.force)
    except SemlicError as exc:   # a bad stage name or configuration: its message, not a traceback
        raise SystemExit(f"python -m semlic.pipeline: {exc}") from exc
    if args.record:
        Path(args.record).write_text(json.dumps(records, indent=2, sort_keys=True, default=str) + "\n")
    return 0
