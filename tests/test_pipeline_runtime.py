"""What every stage shares, without Ray or Prefect running: params, shards, staged outputs,
addresses (flows.params, flows.staging, flows.ray_cluster), and the flow modules' imports."""

from __future__ import annotations

import pytest
import yaml

from flows import params as flow_params
from flows import ray_cluster
from flows.staging import content_signature, staged_dir
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
TASK_MODULES = {"weights": "weights", "prepare": "data", "train_segnet": "segnet", "segment": "segnet", "train_dsslic": "training",
                "train_dsslic_rd": "training",
                "smap_pairs": "edms", "train_smapnet": "edms", "train_sgfilter": "sgfilter", "train_smic": "smic", "code": "coding",
                "train_hyperprior": "latent_seg", "train_latent_seg": "latent_seg", "eval_latent_seg": "latent_seg",
                "machines": "machines", "aggregate": "aggregate"}


OUTSIDE_STAGES = {"profile"}   # flows/profile.py runs `dvc exp run`; no stage imports it


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
              if p.stem not in stages and p.stem not in OUTSIDE_STAGES}
    assert {"flows/__init__.py", "flows/params.py", "flows/staging.py", "flows/runner.py", "flows/_private.py"} <= shared
    for name, stage in stages.items():
        assert stage["cmd"] == f"python -m flows.{name}"
        assert {f"flows/{name}.py", f"tasks/{TASK_MODULES[name]}.py", "tasks/common.py"} | shared <= set(stage["deps"])
        assert "semlic" not in stage["deps"] and "tasks" not in stage["deps"]  # the code it runs, not all of it
        assert all(p.split(".")[0] in ("base", name) or p == "code.split" and name == "machines"
                   for p in stage["params"])
    for name in ("prepare", "train_segnet", "segment", "train_dsslic", "train_smic", "train_hyperprior",
                 "train_latent_seg", "eval_latent_seg"):  # none of them runs EDMS
        assert not any(d.startswith("semlic/methods/edms") or d == "semlic/methods" for d in stages[name]["deps"])


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_depends_on_the_code_it_imports(stage):
    """Importing a stage's flow and task module (tasks import the library functions they call) and
    loading the method registry where the stage uses it, every module of the repository that is
    loaded lies under one of the stage's dvc.yaml deps."""
    import subprocess
    import sys

    deps = _stages()[stage]["deps"]
    registry = "from semlic.methods import all_methods; all_methods(); " if "semlic/methods" in deps else ""
    code = (f"import sys, flows.{stage}, tasks.{TASK_MODULES[stage]}; {registry}"
            "from pathlib import Path; root = Path.cwd().resolve(); "
            "print('\\n'.join(sorted(str(Path(m.__file__).resolve().relative_to(root)) for m in list(sys.modules.values()) "
            "if getattr(m, '__file__', None) and Path(m.__file__).resolve().is_relative_to(root) "
            "and '.venv' not in m.__file__)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    loaded = [line for line in out.stdout.split() if line.startswith(("semlic/", "flows/", "tasks/"))]
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
    import subprocess
    import sys

    code = ("import sys, flows.code, flows.prepare, flows.segment, flows.train_dsslic, flows.train_segnet, "
            "flows.smap_pairs, flows.train_smapnet, flows.train_smic, flows.train_hyperprior, flows.train_latent_seg, "
            "flows.eval_latent_seg, flows.aggregate; print(sorted(m for m in ('torch', 'prefect.server.api.server') "
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
