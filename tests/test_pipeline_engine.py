"""Stages are library functions that any runner executes: a toy stage, defined here only, run by
the local runner (process pool and in-process) and by the Prefect + Ray runner, with the same
outputs; the local executor's scheduling; the graph read from dvc.yaml.

The Prefect + Ray run is a child process (``python -m tests.test_pipeline_engine toy_squares``,
its own Prefect home), as ``dvc repro`` runs a stage: ``python -m flows <stage>`` with the stage
registered by importing this module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from semlic.pipeline.executor import LocalExecutor, Resources, current_unit, timed, wait_all
from semlic.pipeline.params import stage_paths
from semlic.pipeline.stage import dvc_stages, get_stage, plan, stage
from semlic.pipeline.staging import staged_dir

STAGE = "toy_squares"


# --- the toy stage --------------------------------------------------------------------------------

def square_unit(value: int, out_dir: str, hold_s: float = 0.0, fail_on: int | None = None) -> dict:
    """Write value**2 to ``<out_dir>/<value>.txt``; hold a while (to see what runs at once)."""
    with timed({"value": value}) as record:
        if value == fail_on:
            raise ValueError(f"unit {value} fails")
        record["start"] = time.time()
        time.sleep(hold_s)
        (Path(out_dir) / f"{value}.txt").write_text(str(value * value))
        record.update(end=time.time(), threads=current_unit().cpus)
    return record


@stage(STAGE, sections=("base", "paths", STAGE))
def toy_squares(params: dict, executor) -> dict:
    """Stage toy_squares: the squares of toy_squares.values -> <paths.toy>"""
    cfg, out = params[STAGE], stage_paths(params)["toy"]
    with staged_dir(out, fingerprint=cfg) as staging:
        resources = Resources(cpus=cfg.get("cpus", 1))
        records = wait_all([executor.submit(square_unit, value, str(staging), cfg.get("hold_s", 0.0),
                                            cfg.get("fail_on"), resources=resources) for value in cfg["values"]])
        (staging / "sum.txt").write_text(str(sum(int((staging / f"{v}.txt").read_text()) for v in cfg["values"])))
    return {"records": records}


def toy_params(tmp_path: Path, **section) -> dict:
    return {"base": {"workers": 2}, "paths": {"toy": str(tmp_path / "toy")},
            STAGE: {"values": [1, 2, 3, 4], **section}}


def outputs(folder: Path) -> dict:
    return {p.name: p.read_text() for p in sorted(folder.iterdir())}


EXPECTED = {"1.txt": "1", "2.txt": "4", "3.txt": "9", "4.txt": "16", "sum.txt": "30"}


# --- the local runner -----------------------------------------------------------------------------

@pytest.mark.parametrize("workers", [0, 2])
def test_the_toy_stage_runs_with_local_processes_or_in_process(tmp_path, workers):
    from semlic.pipeline.local import run_stage

    record = run_stage(STAGE, toy_params(tmp_path), workers=workers)
    assert outputs(tmp_path / "toy") == EXPECTED
    pids = {r["pid"] for r in record["records"]}
    if workers == 0:
        assert pids == {os.getpid()}                     # one at a time, in this process
    else:
        assert os.getpid() not in pids and 1 <= len(pids) <= 2
    assert all(r["threads"] == 1 and r["prefect_api"] is None and r["node"] is None for r in record["records"])


def test_a_failing_unit_fails_the_stage_and_leaves_the_output_as_it_was(tmp_path):
    from semlic.pipeline.local import run_stage

    run_stage(STAGE, toy_params(tmp_path), workers=2)
    with pytest.raises(ValueError, match="unit 3 fails"):
        run_stage(STAGE, toy_params(tmp_path, values=[1, 3, 5], fail_on=3), workers=2)
    assert outputs(tmp_path / "toy") == EXPECTED        # the previous output, whole


def meet_unit(name: str, folder: str, peers: list[str], hold_s: float) -> dict:
    """Mark this unit as running, wait (up to 60 s) until every peer runs too, hold ``hold_s``."""
    record = {"name": name, "start": time.time(), "threads": current_unit().cpus}
    (Path(folder) / name).touch()
    deadline = time.monotonic() + 60
    while not all((Path(folder) / peer).exists() for peer in peers) and time.monotonic() < deadline:
        time.sleep(0.02)
    record["met"] = all((Path(folder) / peer).exists() for peer in peers)
    time.sleep(hold_s)
    record["end"] = time.time()
    return record


def run_meeting(tmp_path: Path, workers: int, cpus: float, count: int, met: int) -> list[dict]:
    """``count`` units that each wait for the first ``met`` of them to run."""
    folder = tmp_path / f"meet-{workers}-{cpus}"
    folder.mkdir()
    names = [f"u{i}" for i in range(count)]
    with LocalExecutor(workers=workers) as executor:
        return wait_all([executor.submit(meet_unit, name, str(folder), names[:met], 0.3, resources=Resources(cpus=cpus))
                         for name in names])


def test_the_local_executor_runs_as_many_units_as_their_cpus_fit(tmp_path):
    # two CPUs, units of one: the first two run at once (they meet), the third only after one ended
    first, second, third = run_meeting(tmp_path, workers=2, cpus=1, count=3, met=2)
    assert first["met"] and second["met"]
    assert third["start"] >= min(first["end"], second["end"])
    # fractions share a CPU: four quarter units run at once on one
    quarters = run_meeting(tmp_path, workers=1, cpus=0.25, count=4, met=4)
    assert all(r["met"] for r in quarters) and {r["threads"] for r in quarters} == {1}
    # a unit of two CPUs gets two threads
    (two,) = run_meeting(tmp_path, workers=4, cpus=2, count=1, met=1)
    assert two["threads"] == 2


def test_leaving_the_local_executor_runs_what_is_queued_first(tmp_path):
    with LocalExecutor(workers=1) as executor:    # one at a time: three are still queued when the block ends
        futures = [executor.submit(square_unit, v, str(tmp_path), 0.2) for v in range(4)]
    assert [f.result()["value"] for f in futures] == [0, 1, 2, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.txt", "1.txt", "2.txt", "3.txt"]


def test_local_command_line_lists_and_runs_stages(tmp_path):
    from semlic.pipeline import local

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(toy_params(tmp_path)))
    assert local.main([STAGE, "--params", str(params), "--workers", "0", "--record", str(tmp_path / "r.json"),
                       "-S", "toy_squares.values=[2, 3]"]) == 0
    assert outputs(tmp_path / "toy") == {"2.txt": "4", "3.txt": "9", "sum.txt": "13"}
    assert [r["value"] for r in json.loads((tmp_path / "r.json").read_text())[STAGE]["records"]] == [2, 3]
    with pytest.raises(SystemExit, match="python -m semlic.pipeline: no stage 'nope'"):
        local.main(["nope", "--params", str(params)])
    listing = subprocess.run([sys.executable, "-m", "semlic.pipeline", "--list"], capture_output=True, text=True,
                             check=True, cwd=Path(__file__).resolve().parents[1]).stdout.splitlines()
    assert [line.split()[0] for line in listing] == plan()
    assert listing[0].startswith("weights") and "Stage weights:" in listing[0]


def test_the_local_runner_skips_a_stage_whose_params_are_as_when_it_finished(tmp_path):
    from semlic.pipeline.local import run_local

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(toy_params(tmp_path)))
    lines = []
    first = run_local([STAGE], params, workers=0, report=lines.append)
    assert len(first[STAGE]["records"]) == 4 and lines[-1].startswith(f"{STAGE}: done in")
    again = run_local([STAGE], params, workers=0, report=lines.append)
    assert again == {STAGE: {"skipped": True}} and "up to date, skipped" in lines[-1]
    changed = run_local([STAGE], params, ["toy_squares.values=[5]"], workers=0, report=lines.append)
    assert [r["value"] for r in changed[STAGE]["records"]] == [5]
    assert outputs(tmp_path / "toy") == {"5.txt": "25", "sum.txt": "25"}
    forced = run_local([STAGE], params, ["toy_squares.values=[5]"], workers=0, force=True, report=lines.append)
    assert [r["value"] for r in forced[STAGE]["records"]] == [5]


def test_either_runner_refuses_an_unknown_stage_or_runner_by_name(monkeypatch):
    from flows.stage import main as flows_main

    with pytest.raises(SystemExit, match="python -m flows: no stage 'nope' \\(known: .*code.*toy_squares"):
        flows_main(["nope"])
    monkeypatch.setenv("SEMLIC_RUNNER", "threads")
    with pytest.raises(SystemExit, match="SEMLIC_RUNNER='threads': the runners are prefect-ray, local"):
        flows_main([STAGE])


# --- the graph ------------------------------------------------------------------------------------

def test_plan_orders_what_a_target_needs_from_dvc_yaml(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"paths": {"a": "data/a", "b": "data/b"}}))
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "first": {"cmd": "x", "deps": ["src"], "outs": ["${paths.a}"]},
        "other": {"cmd": "x", "deps": ["src"], "outs": ["data/other"]},
        "second": {"cmd": "x", "deps": ["${paths.a}/part"], "outs": ["${paths.b}"]},
        "third": {"cmd": "x", "deps": ["data"], "outs": ["data/c"]},
    }}, sort_keys=False))
    graph = dvc_stages(tmp_path / "dvc.yaml")
    assert graph["second"]["deps"] == ["data/a/part"] and graph["second"]["outs"] == ["data/b"]
    assert plan(["second"], graph) == ["first", "second"]
    assert plan(["second"], graph, upstream=False) == ["second"]
    assert plan(["third"], graph) == ["first", "other", "second", "third"]   # a folder holding their outputs
    assert plan(None, graph) == list(graph)
    from semlic.errors import ConfigError

    with pytest.raises(ConfigError, match="no stage nope"):
        plan(["nope"], graph)
    with pytest.raises(ConfigError, match="no stage 'nope'.*known: .*toy_squares"):
        get_stage("nope")


def test_the_repository_graph_runs_training_before_what_reads_its_models():
    order = plan(["code"])
    assert order.index("train_segnet") < order.index("segment") < order.index("train_dsslic") < order.index("code")
    assert "aggregate" not in order and "machines" not in order
    assert plan(["aggregate"])[-1] == "aggregate" and "machines" in plan(["aggregate"])


# --- the Prefect + Ray runner ---------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(400)
def test_the_toy_stage_runs_on_prefect_and_ray_with_the_same_outputs(tmp_path):
    from semlic.pipeline.local import run_stage
    from tests.test_flows_support import PYTHON, kill_tree, stage_env

    run_stage(STAGE, toy_params(tmp_path / "local"), workers=2)
    project = tmp_path / "project"
    project.mkdir()
    (project / "params.yaml").write_text(yaml.safe_dump(toy_params(project)))
    record_path = project / "record.json"
    proc = subprocess.Popen([PYTHON, "-m", "tests.test_pipeline_engine", STAGE, "--record", str(record_path)],
                            cwd=project, env=stage_env(project), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        output, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        kill_tree(proc)
        raise
    assert proc.returncode == 0, output[-6000:]
    assert outputs(project / "toy") == outputs(tmp_path / "local" / "toy") == EXPECTED
    records = json.loads(record_path.read_text())["result"]["records"]
    assert [r["value"] for r in records] == [1, 2, 3, 4]
    assert all(r["prefect_api"] and r["node"] for r in records)   # Prefect task runs on a Ray node
    assert os.getpid() not in {r["pid"] for r in records}


if __name__ == "__main__":
    # by its module name, so that Ray workers import the same stage and unit (pickled by reference)
    from flows.stage import main as _main
    from tests import test_pipeline_engine  # noqa: F401  (registers the toy stage)

    sys.exit(_main())
