"""What every stage shares, without Ray or Prefect running: params, shards, staged outputs,
addresses (semlic.pipeline.params, semlic.pipeline.staging, flows.ray_cluster), dvc.yaml and
prefect.yaml against the stage registry, and the stage modules' imports."""

from __future__ import annotations

import pytest
import yaml

from flows import ray_cluster
from semlic.pipeline import params as flow_params
from semlic.pipeline.staging import content_signature, staged_dir
from tests.test_flows_support import REPO


def test_shards_keep_order_and_cover_everything():
    assert flow_params.shards(list(range(7)), 3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert flow_params.shards([], 4) == []
    assert flow_params.shards([1, 2], 0) == [[1], [2]]


def test_params_sections_and_overrides(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"base": {"seed": 0}, "code": {"shard_size": 2,
                                                                  "methods": {"dsslic": {"qualities": [1]}}}}))
    params = flow_params.load_params(path, ["base", "code"],
                                     ["code.shard_size=5", "code.methods.dsslic.qualities=[40, 30]", "base.cluster=auto"])
    assert params == {"base": {"seed": 0, "cluster": "auto"},
                      "code": {"shard_size": 5, "methods": {"dsslic": {"qualities": [40, 30]}}}}
    with pytest.raises(SystemExit, match="missing params sections"):
        flow_params.load_params(path, ["base", "prepare"])
    with pytest.raises(SystemExit, match="'paths' section"):
        flow_params.stage_paths(params)
    paths = flow_params.stage_paths({"paths": {"models": "data/models"}})
    assert paths["models"].is_absolute() and paths["models"].parts[-2:] == ("data", "models")


STAGES = ["weights", "prepare", "train_segnet", "segment", "train_dsslic", "train_dsslic_rd", "smap_pairs", "train_smapnet",
          "train_sgfilter", "train_smic", "train_hyperprior", "train_latent_seg", "eval_latent_seg", "code", "machines", "aggregate"]
OUTSIDE_STAGES = {"profile", "pipeline", "session"}   # `dvc exp run`; the deployments; `make repro`'s wrapper
PIPELINE_SHARED = {"semlic/pipeline/__init__.py", "semlic/pipeline/stages/__init__.py", "semlic/pipeline/executor.py",
                   "semlic/pipeline/params.py", "semlic/pipeline/stage.py", "semlic/pipeline/staging.py"}


def _stages() -> dict:
    """dvc.yaml's stages with ${paths.*} filled in from params.yaml, as DVC does."""
    paths = yaml.safe_load((REPO / "params.yaml").read_text())["paths"]
    text = (REPO / "dvc.yaml").read_text()
    for key, value in paths.items():
        text = text.replace("${paths.%s}" % key, value)
    stages = yaml.safe_load(text)["stages"]
    assert "${" not in yaml.safe_dump(stages)  # every placeholder a stage uses is a path of params.yaml
    return stages


def test_repository_params_have_a_section_per_stage():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert {"base", "paths", *STAGES} - {"smap_pairs"} <= set(params) and "smap_pairs" in params
    assert params["base"]["dataset"] == "synthetic" and params["base"]["cluster"] is None
    stages = _stages()
    assert list(stages) == STAGES
    shared = {f"flows/{p.name}" for p in (REPO / "flows").glob("*.py")   # every stage runs these
              if p.stem not in OUTSIDE_STAGES} | PIPELINE_SHARED
    assert {"flows/__init__.py", "flows/__main__.py", "flows/stage.py", "flows/executor.py", "flows/runner.py",
            "flows/_private.py", "semlic/pipeline/executor.py", "semlic/pipeline/staging.py"} <= shared
    for name, stage in stages.items():
        assert stage["cmd"] == f"python -m flows {name}"
        assert {f"semlic/pipeline/stages/{name}.py"} | shared <= set(stage["deps"])
        # the code it runs, not all of it: no other stage's module
        assert "semlic" not in stage["deps"] and "semlic/pipeline" not in stage["deps"]
        assert not [d for d in stage["deps"] if d.startswith("semlic/pipeline/stages/")
                    and d != f"semlic/pipeline/stages/{name}.py" and d != "semlic/pipeline/stages/__init__.py"]
        assert all(p.split(".")[0] in ("base", name) or p == "code.split" and name == "machines"
                   for p in stage["params"])
    for name in ("prepare", "train_segnet", "segment", "train_dsslic", "train_smic", "train_hyperprior",
                 "train_latent_seg", "eval_latent_seg"):  # none of them runs EDMS
        assert not any(d.startswith("semlic/methods/edms") or d == "semlic/methods" for d in stages[name]["deps"])


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_depends_on_the_code_it_imports(stage):
    """Importing the runner, the stage's module and every module its functions import (the units
    import the library functions they call when they run), and loading the method registry where
    the stage uses it, every module of the repository that is loaded lies under one of the stage's
    dvc.yaml deps."""
    import ast
    import subprocess
    import sys

    deps = _stages()[stage]["deps"]
    tree = ast.parse((REPO / "semlic" / "pipeline" / "stages" / f"{stage}.py").read_text())
    used = sorted({node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
                  | {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names})
    used = [m for m in used if m.split(".")[0] in ("semlic", "flows")]
    if "training_section(" in ast.unparse(tree):   # semlic.pipeline.params reads the data set's classes
        used.append("semlic.data.datasets")
    assert "semlic.pipeline.stage" in used
    registry = "from semlic.methods import all_methods; all_methods(); " if "semlic/methods" in deps else ""
    code = (f"import sys, flows.stage, flows.executor, semlic.pipeline.stages.{stage}, {', '.join(used)}; {registry}"
            "from pathlib import Path; root = Path.cwd().resolve(); "
            "print('\\n'.join(sorted(str(Path(m.__file__).resolve().relative_to(root)) for m in list(sys.modules.values()) "
            "if getattr(m, '__file__', None) and Path(m.__file__).resolve().is_relative_to(root) "
            "and '.venv' not in m.__file__)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    loaded = [line for line in out.stdout.split() if line.startswith(("semlic/", "flows/"))]
    uncovered = [m for m in loaded if not any(m == d or m.startswith(d.rstrip("/") + "/") for d in deps)]
    assert loaded and not uncovered, f"{stage} imports code its dvc.yaml deps do not name: {uncovered}"


def test_staged_dir_replaces_the_output_only_on_success(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    final = tmp_path / "data" / "coded"
    with staged_dir("data/coded") as staging:
        (staging / "a.txt").write_text("one")
    assert (final / "a.txt").read_text() == "one"
    with pytest.raises(RuntimeError):
        with staged_dir("data/coded") as staging:
            (staging / "b.txt").write_text("half")
            raise RuntimeError("killed")
    assert sorted(p.name for p in final.iterdir()) == ["a.txt"]  # the old output, untouched
    with staged_dir("data/coded") as staging:  # no fingerprint: the leftover is discarded
        assert not (staging / "b.txt").exists()
        (staging / "c.txt").write_text("two")
    assert sorted(p.name for p in final.iterdir()) == ["c.txt"]


def test_staged_dir_takes_an_output_outside_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    final = tmp_path / "elsewhere" / "machines"
    with pytest.raises(KeyboardInterrupt):
        with staged_dir(final, fingerprint={"shard_size": 6}) as staging:
            (staging / "part-0.parquet").write_text("done")
            raise KeyboardInterrupt
    assert not final.exists() and not (tmp_path / "work" / "data").exists()
    with staged_dir(str(final), fingerprint={"shard_size": 6}) as staging:
        assert (staging / "part-0.parquet").is_file()  # resumed
        assert staging.parent.parent == final.parent  # the output's file system
    assert (final / "part-0.parquet").read_text() == "done"
    assert not (final.parent / ".staging" / "machines").exists()


def test_staged_dir_keeps_work_of_a_run_with_the_same_fingerprint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        with staged_dir("data/segments", fingerprint={"shard_size": 2}) as staging:
            (staging / "part-0.parquet").write_text("done")
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        with staged_dir("data/segments", fingerprint={"shard_size": 2}) as staging:
            assert (staging / "part-0.parquet").is_file()  # resumed
            raise KeyboardInterrupt
    with staged_dir("data/segments", fingerprint={"shard_size": 3}) as staging:
        assert not (staging / "part-0.parquet").exists()  # other params: start over
    assert not (tmp_path / "data" / "segments" / ".fingerprint.json").exists()


def test_content_signature_follows_content(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_text("1")
    first = content_signature(tmp_path / "d")
    assert first == content_signature(tmp_path / "d")
    (tmp_path / "d" / "x").write_text("2")
    assert content_signature(tmp_path / "d") != first


def test_cluster_address_precedence(monkeypatch):
    monkeypatch.delenv("SEMLIC_RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert ray_cluster.cluster_address({"cluster": None}) is None
    assert ray_cluster.cluster_address({"cluster": "auto"}) == "auto"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert ray_cluster.cluster_address({"cluster": "auto"}) == "10.0.0.1:6379"
    monkeypatch.setenv("SEMLIC_RAY_ADDRESS", "127.0.0.1:6380")
    assert ray_cluster.cluster_address({"cluster": "auto"}) == "127.0.0.1:6380"


def test_flow_modules_start_without_importing_torch_or_the_server():
    """Every stage's flow (flows.pipeline makes them all) is built without torch or Prefect's server."""
    import subprocess
    import sys

    code = ("import sys, flows.pipeline; print(sorted(m for m in ('torch', 'prefect.server.api.server') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_ray_workers_get_the_api_the_repository_and_the_setup_hook(monkeypatch):
    import importlib

    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    env = ray_cluster.worker_env("http://127.0.0.1:8123/api")
    assert env["PREFECT_API_URL"] == "http://127.0.0.1:8123/api"
    assert env["PYTHONPATH"].split(":") == [str(REPO), "/elsewhere"]
    module, _, name = ray_cluster.WORKER_SETUP_HOOK.rpartition(".")  # Ray imports it by name in each worker
    assert callable(getattr(importlib.import_module(module), name))


def test_prefect_yaml_has_one_deployment_per_stage_derived_from_the_registry():
    from flows.pipeline import deployments

    written = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    assert [{k: d[k] for k in ("name", "entrypoint", "description", "parameters")} for d in written] == deployments()
    assert [d["entrypoint"] for d in written] == [f"flows.pipeline.{name}" for name in STAGES]
    assert all(d["work_pool"]["name"] == "semlic-process" for d in written)


def test_every_stage_module_is_a_dvc_stage_and_has_its_flow():
    import flows.pipeline
    from semlic.pipeline.stage import get_stage, plan, stage_modules

    assert sorted(stage_modules()) == sorted(STAGES) and plan() == STAGES
    for name in STAGES:
        flow = getattr(flows.pipeline, name)
        assert flow.name == name and get_stage(name).description.startswith(f"Stage {name}:")
