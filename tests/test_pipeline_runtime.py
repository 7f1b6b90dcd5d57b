"""flows.runtime without Ray or Prefect running: params, shards, staged outputs, addresses."""

from __future__ import annotations

import pytest
import yaml

from flows import runtime
from tests.test_flows_support import REPO


def test_shards_keep_order_and_cover_everything():
    assert runtime.shards(list(range(7)), 3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert runtime.shards([], 4) == []
    assert runtime.shards([1, 2], 0) == [[1], [2]]


def test_params_sections_and_overrides(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"base": {"seed": 0}, "code": {"shard_size": 2, "dsslic": {"residual_qps": [1]}}}))
    params = runtime.load_params(path, ["base", "code"],
                                 ["code.shard_size=5", "code.dsslic.residual_qps=[40, 30]", "base.cluster=auto"])
    assert params == {"base": {"seed": 0, "cluster": "auto"},
                      "code": {"shard_size": 5, "dsslic": {"residual_qps": [40, 30]}}}
    with pytest.raises(SystemExit, match="missing params sections"):
        runtime.load_params(path, ["base", "prepare"])


def test_repository_params_have_a_section_per_stage():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert {"base", "prepare", "train_segnet", "segment", "train_base", "smap_pairs", "train_smapnet", "code",
            "aggregate"} <= set(params)
    assert params["base"]["dataset"] == "synthetic" and params["base"]["cluster"] is None
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert list(stages) == ["prepare", "train_segnet", "segment", "train_base", "smap_pairs", "train_smapnet", "code",
                            "aggregate"]
    for name, stage in stages.items():
        assert stage["cmd"] == f"python -m flows.{name}"
        assert {f"flows/{name}.py", "tasks", "semlic"} <= set(stage["deps"])
        assert all(p.split(".")[0] in ("base", name) for p in stage["params"])


def test_staged_dir_replaces_the_output_only_on_success(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    final = tmp_path / "data" / "coded"
    with runtime.staged_dir("data/coded") as staging:
        (staging / "a.txt").write_text("one")
    assert (final / "a.txt").read_text() == "one"
    with pytest.raises(RuntimeError):
        with runtime.staged_dir("data/coded") as staging:
            (staging / "b.txt").write_text("half")
            raise RuntimeError("killed")
    assert sorted(p.name for p in final.iterdir()) == ["a.txt"]  # the old output, untouched
    with runtime.staged_dir("data/coded") as staging:  # no fingerprint: the leftover is discarded
        assert not (staging / "b.txt").exists()
        (staging / "c.txt").write_text("two")
    assert sorted(p.name for p in final.iterdir()) == ["c.txt"]


def test_staged_dir_keeps_work_of_a_run_with_the_same_fingerprint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        with runtime.staged_dir("data/segments", fingerprint={"shard_size": 2}) as staging:
            (staging / "part-0.parquet").write_text("done")
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        with runtime.staged_dir("data/segments", fingerprint={"shard_size": 2}) as staging:
            assert (staging / "part-0.parquet").is_file()  # resumed
            raise KeyboardInterrupt
    with runtime.staged_dir("data/segments", fingerprint={"shard_size": 3}) as staging:
        assert not (staging / "part-0.parquet").exists()  # other params: start over
    assert not (tmp_path / "data" / "segments" / ".fingerprint.json").exists()


def test_content_signature_follows_content(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_text("1")
    first = runtime.content_signature(tmp_path / "d")
    assert first == runtime.content_signature(tmp_path / "d")
    (tmp_path / "d" / "x").write_text("2")
    assert runtime.content_signature(tmp_path / "d") != first


def test_cluster_address_precedence(monkeypatch):
    monkeypatch.delenv("SEMLIC_RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert runtime.cluster_address({"cluster": None}) is None
    assert runtime.cluster_address({"cluster": "auto"}) == "auto"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert runtime.cluster_address({"cluster": "auto"}) == "10.0.0.1:6379"
    monkeypatch.setenv("SEMLIC_RAY_ADDRESS", "127.0.0.1:6380")
    assert runtime.cluster_address({"cluster": "auto"}) == "127.0.0.1:6380"


def test_flow_modules_start_without_importing_torch_or_the_server():
    import subprocess
    import sys

    code = ("import sys, flows.code, flows.prepare, flows.segment, flows.train_base, flows.train_segnet, "
            "flows.smap_pairs, flows.train_smapnet, flows.aggregate; print(sorted(m for m in ('torch', 'prefect.server.api.server') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
