"""The whole study, offline, as a user runs it: ``make repro`` (``python -m flows.session dvc repro``) on the
builtin default.

In a scratch copy of the project (params.yaml, dvc.yaml, .dvcignore and the code) with a
fresh git and DVC, without weights/ and with no package index (PIP_NO_INDEX): every stage runs,
the weights stage among them (it says the LPIPS weights are missing and the stages run without them), rd.parquet holds rows for DSSLIC, EDMS (edms,
edms_noenh), SMIC, the hyperprior and every baseline, the compressed-domain rows are queryable, EDMS is compared with DSSLIC (comparisons.csv, metrics.json),
``dvc metrics show`` reads the headline figures and every training stage's DVCLive summary, the
HTML report opens in headless Chromium with no console error, its plot and its viewer,
the whole run fits in 15 minutes on this 2-core machine, a second ``dvc repro`` finds
everything up to date, and after an edit of the EDMS package only the EDMS stages and those
below them are out of date.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.test_flows_support import PYTHON, REPO, stage_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

DVC = str(Path(PYTHON).parent / "dvc")
BUDGET_S = 15 * 60


def test_dvc_repro_end_to_end_then_up_to_date(tmp_path):
    project = tmp_path / "study"
    project.mkdir()
    for name in ("flows", "semlic"):  # a snapshot of the code, as a fresh clone has
        shutil.copytree(REPO / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("params.yaml", "dvc.yaml", ".dvcignore"):
        shutil.copy(REPO / name, project / name)
    # no weights/: as a fresh clone; no package index: the weights stage must not need one
    env = stage_env(project, PYTHONPATH=str(project), PIP_NO_INDEX="1", SEMLIC_LPIPS_WEIGHTS="")
    env.pop("OMP_NUM_THREADS")  # as a user runs it
    for command in (["git", "init", "-q"], [DVC, "init", "-q"], [DVC, "config", "core.analytics", "false"]):
        subprocess.run(command, cwd=project, env=env, check=True)

    start = time.perf_counter()
    # as `make repro` runs it: one Prefect server and one local Ray that every stage joins (flows.session)
    first = subprocess.run([PYTHON, "-m", "flows.session", DVC, "repro"], cwd=project, env=env, capture_output=True,
                           text=True)
    elapsed = time.perf_counter() - start
    assert first.returncode == 0, f"{first.stdout[-6000:]}\n{first.stderr[-6000:]}"
    for stage in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]:
        assert f"Running stage '{stage}'" in first.stdout
    assert "flows.session: Prefect API http://127.0.0.1:" in first.stderr   # the stages shared them
    assert elapsed < BUDGET_S, f"dvc repro took {elapsed:.0f} s"
    manifest = json.loads((project / "weights" / "manifest.json").read_text())
    assert "missing" in manifest["lpips_alex"]
    assert "missing (the stages run without them): lpips_alex" in first.stderr + first.stdout

    from semlic import query

    methods = query.query("select method, count(*) as n, min(bpp) as bpp from rd group by method",
                          project / "data" / "results" / "rd.parquet").set_index("method")
    assert set(methods.index) == {"dsslic", "dsslic_rd", "edms", "edms_noenh", "smic", "hyperprior", "jpeg",
                                  "jpeg2000", "webp", "avif", "jxl", "hevc", "sgfilter", "sgfilter_nomap", "sgfilter_sent"}
    assert (methods.n > 0).all() and (methods.bpp > 0).all()
    bd = query.query("select method from bd where anchor = 'hevc'", project / "data" / "results" / "rd.parquet")
    assert set(bd.method) == set(methods.index) - {"hevc"}
    assert (project / "data" / "results" / "metrics.json").is_file()
    import pandas as pd

    latent = query.query("select method, count(*) as n, avg(bpp) as bpp from latent_seg group by method",
                         project / "data" / "results" / "rd.parquet").set_index("method")
    assert {"pixel", "no_gate", "dynamic", "static8"} <= set(latent.index) and (latent.bpp > 0).all()
    task = query.query("select method, output, count(*) as n, avg(bpp) as bpp from task group by method, output",
                       project / "data" / "results" / "rd.parquet").set_index(["method", "output"])
    assert {(m, "decoded") for m in methods.index} | {("original", "decoded"), ("dsslic", "map"), ("edms", "derived"),
                                                      ("edms_noenh", "derived"), ("smic", "map"), ("dsslic_rd", "map"),
                                                      ("hyperprior", "decoded+teacher"),
                                                      ("hyperprior", "student:static8"), ("sgfilter", "derived"),
                                                      ("sgfilter_sent", "map")} <= set(task.index)
    machines_table = pd.read_csv(project / "data" / "machines" / "machines.csv").set_index(["method", "output"])
    assert machines_table.loc[("hevc", "decoded"), "bd_note"] == "anchor"
    assert (project / "data" / "machines" / "figures" / "rate_miou_synthetic.png").is_file()
    edms = pd.read_csv(project / "data" / "results" / "comparisons.csv")
    assert edms[["dataset", "method", "anchor"]].values.tolist() == [["synthetic", "dsslic_rd", "dsslic"],
                                                                     ["synthetic", "edms", "dsslic"],
                                                                     ["synthetic", "edms_noenh", "dsslic"],
                                                                     ["synthetic", "sgfilter_nomap", "sgfilter"],
                                                                     ["synthetic", "sgfilter_sent", "sgfilter"]]
    assert (edms.enc_time_ratio > 0).all() and (edms.dec_time_ratio > 0).all()  # timings joined
    metrics = json.loads((project / "data" / "results" / "metrics.json").read_text())
    assert set(metrics) == {"bd_rate_vs_hevc", "bd_rate_vs_reference", "miou"}   # a handful of columns
    assert set(metrics["bd_rate_vs_reference"]["synthetic"]) == {"edms_vs_dsslic", "edms_noenh_vs_dsslic",
                                                                 "dsslic_rd_vs_dsslic", "sgfilter_nomap_vs_sgfilter",
                                                                 "sgfilter_sent_vs_sgfilter"}
    assert set(metrics["bd_rate_vs_hevc"]["synthetic"]) == set(methods.index) - {"hevc"}
    assert set(metrics["miou"]["synthetic"]) == {"train", "val", "test"}

    shown = subprocess.run([DVC, "metrics", "show", "--json"], cwd=project, env=env, capture_output=True, text=True,
                           check=True).stdout
    trainings = [s for s in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"] if s.startswith("train_")]
    for stage in trainings:   # DVCLive's summary of every training stage, read by dvc
        assert f"data/live/{stage}/metrics.json" in shown, shown[:3000]
        assert list((project / "data" / "live" / stage / "plots" / "metrics").rglob("*.tsv")), stage
    segnet = json.loads((project / "data" / "live" / "train_segnet" / "metrics.json").read_text())["segnet"]
    assert segnet["loss"] > 0 and 0 < segnet["eval_miou"] < 1

    from semlic.browser import check_page

    page = project / "data" / "results" / "report" / "index.html"
    check = check_page(page, script="return {plots: document.querySelectorAll('.plot svg').length, "
                                    "figures: [...document.querySelectorAll('#v-grid figure img')]"
                                    ".filter(i => i.complete && i.naturalWidth > 0).length}")
    assert check.errors == [] and check.result["plots"] == 2, check.errors   # RD and rate-mIoU
    assert check.result["figures"] == len(methods) + 1   # the original and every method, decoded

    second = subprocess.run([DVC, "repro"], cwd=project, env=env, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-4000:]
    assert "Running stage" not in second.stdout, second.stdout
    status = subprocess.run([DVC, "status"], cwd=project, env=env, capture_output=True, text=True, check=True)
    assert "up to date" in status.stdout, status.stdout

    matched = project / "semlic" / "methods" / "edms" / "matched.py"
    matched.write_text(matched.read_text() + "\n# an edit of EDMS's code\n")
    status = subprocess.run([DVC, "status", "--json"], cwd=project, env=env, capture_output=True, text=True,
                            check=True)
    assert set(json.loads(status.stdout)) == {"smap_pairs", "train_smapnet", "code", "machines", "aggregate"}, \
        status.stdout
