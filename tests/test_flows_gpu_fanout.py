"""GPU fan-out over Ray, without a GPU: a stage with ``base.device: cuda`` runs its GPU tasks
two at once, each on the GPU Ray gave it.

Ray is told the machine has two GPUs (``num_gpus=2``; none is there, Ray only accounts for
them and sets ``CUDA_VISIBLE_DEVICES`` in each task's worker). A small stage (registered here),
run the way ``python -m flows <stage>`` runs a stage (:func:`flows.stage.run_stage`: one Prefect
API and one private local Ray, the project's RayTaskRunner and executor), submits two probe units
under the resources the stages use: ``training_resources(base, concurrent=2)`` (the hyperprior's
qualities, the ablation models, SMIC's parts) and ``shard_resources(base)`` (segment and code
shards). The probes meet at a rendezvous (each waits for the other's file), so they pass
only if both run at once, and report their ``CUDA_VISIBLE_DEVICES``, Ray's GPU ids and
:func:`semlic.pipeline.executor.unit_device`'s answer, which every GPU unit routes its device through.

The stage runs in its own process (``python -m tests.test_flows_gpu_fanout``, its own
Prefect home), as a stage does; the stage session shuts its Ray and Prefect server down
at the end, and the process tree is killed if it overruns.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.ray_cluster import ray_options
from semlic.pipeline.executor import shard_resources, timed, training_resources, unit_device, wait_all, where
from semlic.pipeline.stage import stage

STAGE = "gpu_fanout"
FAKE_GPUS = 2
HOLD_S = 1.0          # each probe keeps its GPU this long after meeting the other
RENDEZVOUS_S = 60.0   # a probe gives up waiting for the other after this long


# --- the stage (run in a child process by the test below) ------------------------------------

def gpu_probe(name: str, rendezvous: str, peers: list[str]) -> dict:
    """Report the GPU Ray gave this task; wait until every peer runs too, then hold it a while."""
    import os

    import ray

    with timed({"name": name}) as record:
        record.update(device=unit_device("cuda"), cpu_device=unit_device("cpu"),
                      env_cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
                      ray_gpu_ids=[str(i) for i in ray.get_gpu_ids()])
        folder = Path(rendezvous)
        (folder / name).touch()
        record["start"] = time.time()
        deadline = time.monotonic() + RENDEZVOUS_S
        while not all((folder / peer).exists() for peer in peers) and time.monotonic() < deadline:
            time.sleep(0.05)
        record["met"] = all((folder / peer).exists() for peer in peers)
        time.sleep(HOLD_S)
        record["end"] = time.time()
    return record


@stage(STAGE, sections=("base",))
def gpu_fanout(params: dict, executor) -> dict:
    """Two probes under each of the stages' GPU resources; one probe on CPU resources."""
    base = params["base"]
    root = Path.cwd() / "rendezvous"
    out = {}
    for kind, resources, count in (("training", training_resources(base, concurrent=2), 2),
                                   ("shard", shard_resources(base), 2),
                                   ("cpu_shard", shard_resources(base, gpu=False), 1)):
        folder = root / kind
        folder.mkdir(parents=True)
        names = [f"{kind}-{i}" for i in range(count)]
        records = wait_all([executor.submit(gpu_probe, name, str(folder), names, resources=resources)
                            for name in names])
        options = ray_options(base, resources)
        out[kind] = {"options": {k: v for k, v in options.items() if k != "scheduling_strategy"},
                     "records": records}
    out["driver"] = where()
    return out


def declare_gpus(count: int) -> None:
    """Make the stage's private local Ray declare ``count`` GPUs (Ray's ``num_gpus``).

    :func:`flows.ray_cluster.connect_ray` starts the local Ray with CPUs only (a real GPU is
    detected by Ray itself); this adds ``num_gpus`` to that one ``ray.init`` call.
    """
    import ray

    real_init = ray.init

    def init(*args, **kwargs):
        if kwargs.get("address") == "local":
            kwargs.setdefault("num_gpus", count)
        return real_init(*args, **kwargs)

    ray.init = init


def main(argv: list[str] | None = None) -> int:
    from flows.stage import run_stage

    declare_gpus(FAKE_GPUS)
    run_stage([STAGE, *(argv if argv is not None else sys.argv[1:])])
    return 0


# --- the tests ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fanout_record(tmp_path_factory) -> dict:
    """Run the flow as a stage, base.device cuda and 4 CPUs (CPUs are not the limit); its record."""
    from tests.test_flows_support import PYTHON, kill_tree, make_project, stage_env

    project = make_project(tmp_path_factory.mktemp("gpu_fanout"), {"base": {"device": "cuda", "workers": 4}})
    record_path = project / f"record-{STAGE}.json"
    proc = subprocess.Popen([PYTHON, "-m", "tests.test_flows_gpu_fanout", "--record", str(record_path)],
                            cwd=project, env=stage_env(project), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        output, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        kill_tree(proc)  # the driver and its Ray and Prefect server processes
        raise
    if proc.returncode != 0:
        raise AssertionError(f"{STAGE} exited {proc.returncode}:\n{output[-6000:]}")
    return json.loads(record_path.read_text())["result"]


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", ["training", "shard"])
def test_gpu_tasks_run_two_at_once_each_on_its_own_gpu(fanout_record, kind):
    fanout = fanout_record[kind]
    assert fanout["options"]["num_gpus"] == 1
    records = fanout["records"]
    assert len(records) == 2
    assert all(r["met"] for r in records), f"the two {kind} tasks did not run at once: {records}"
    first, second = sorted(records, key=lambda r: r["start"])
    assert second["start"] < first["end"], "the tasks' time spans do not overlap"
    assert first["pid"] != second["pid"]

    visible = [r["cuda_visible_devices"] for r in records]
    assert sorted(visible) == ["0", "1"], f"each task should see one of the two GPUs, its own: {visible}"
    for r in records:
        assert r["env_cuda_visible_devices"] == r["cuda_visible_devices"]
        assert [str(i) for i in r["gpu_ids"]] == r["ray_gpu_ids"] == [r["cuda_visible_devices"]]
        assert r["device"] == "cuda:0"  # the one visible device: the GPU Ray assigned
        assert r["cpu_device"] == "cpu"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_cpu_tasks_get_no_gpu_and_keep_the_device(fanout_record):
    fanout = fanout_record["cpu_shard"]
    assert "num_gpus" not in fanout["options"]
    (record,) = fanout["records"]
    assert record["gpu_ids"] == [] and record["ray_gpu_ids"] == []
    assert record["device"] == "cuda"  # no GPU from Ray: the device is left as configured


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_driver_has_no_gpu_of_its_own(fanout_record):
    assert fanout_record["driver"]["gpu_ids"] == []


# Each GPU stage submits its units with the resources tested above.
STAGE_RESOURCES = {
    "segment": r"resources=shard_resources\(base\)",
    "code": r"resources=shard_resources\(base\)",
    "smap_pairs": r"resources=shard_resources\(base\)",
    "eval_latent_seg": r"resources=shard_resources\(base\)",
    "train_hyperprior": r"resources = training_resources\(base, concurrent=len\(qualities\)\)",
    "train_latent_seg": r"resources = training_resources\(base, concurrent=len\(qualities\)\)",
    "train_dsslic": r"resources = training_resources\(base, concurrent=len\(runs\)\)",
    "train_dsslic_rd": r"resources = training_resources\(base, concurrent=len\(plan\)\)",
    "train_smic": r"resources = training_resources\(base, concurrent=2 if parallel else 1\)",
}


@pytest.mark.parametrize("stage", sorted(STAGE_RESOURCES))
def test_gpu_stages_submit_with_these_resources(stage):
    source = (Path(__file__).resolve().parent.parent / "semlic" / "pipeline" / "stages" / f"{stage}.py").read_text()
    assert re.search(STAGE_RESOURCES[stage], source), \
        f"semlic/pipeline/stages/{stage}.py no longer submits with {STAGE_RESOURCES[stage]}"


def test_gpu_options_ask_for_one_gpu_only_on_cuda_with_a_gpu_in_the_cluster(monkeypatch):
    import ray

    from flows.ray_cluster import gpu_options

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 4.0, "GPU": 2.0})
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 4.0, "GPU": 2.0}}])
    cuda = {"device": "cuda", "workers": 4}
    assert gpu_options(cuda) == {"num_gpus": 1}
    shard, cpu_shard = ray_options(cuda, shard_resources(cuda)), ray_options(cuda, shard_resources(cuda, gpu=False))
    assert shard["num_gpus"] == 1 and "num_gpus" not in cpu_shard
    assert shard["scheduling_strategy"] == "SPREAD" and shard["num_cpus"] == 1
    assert ray_options(cuda, training_resources(cuda, concurrent=2)) == {"num_cpus": 2, "num_gpus": 1}
    assert ray_options(cuda, training_resources(cuda, concurrent=8)) == {"num_cpus": 0.5, "num_gpus": 1}
    cpu = {"device": "cpu"}
    assert gpu_options(cpu) == {} and "num_gpus" not in ray_options(cpu, training_resources(cpu))
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 3.0}}])
    assert ray_options(cuda, training_resources(cuda)) == {"num_cpus": 3, "num_gpus": 1}  # at most a node's CPUs
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 4.0})
    assert gpu_options(cuda) == {}


# --- unit_device and where(), without Ray ---------------------------------------------------

@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:1", "mps"])
def test_unit_device_without_assigned_gpus_is_the_device_unchanged(device, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert unit_device(device) == device


@pytest.mark.parametrize("visible, ids, expected", [
    ("1", [1], "cuda:0"),              # Ray's own CUDA_VISIBLE_DEVICES: renumbered from 0
    ("2,3", [3], "cuda:1"),            # the assigned GPU's position among the visible ones
    (None, [1], "cuda:1"),             # RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES: Ray's id
    ("GPU-ab12", ["GPU-ab12"], "cuda:0"),
])
def test_unit_device_is_the_gpu_the_executor_assigned(visible, ids, expected, monkeypatch):
    from semlic.pipeline.executor import UnitContext, unit_context

    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    with unit_context(UnitContext(gpu_ids=ids)):
        assert unit_device("cuda") == expected
        assert unit_device("cuda:5") == expected  # the params cannot name another unit's GPU
        assert unit_device("cpu") == "cpu"
    assert unit_device("cuda") == "cuda"  # outside the unit: nothing assigned


def test_where_records_gpus(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    record = where()
    assert record["cuda_visible_devices"] == "1"
    assert record["gpu_ids"] == []  # not a unit given GPUs
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert where()["cuda_visible_devices"] is None


if __name__ == "__main__":
    # by its module name, so that Ray workers import the same stage and unit (pickled by reference)
    from tests.test_flows_gpu_fanout import main as _main

    sys.exit(_main())
