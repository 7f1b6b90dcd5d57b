"""``semlic report``: the offline HTML page, its viewer's decoded files, and the page in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest

from semlic import aggregate, results
from semlic.imageio import load_image, save_png

from .conftest import make_image

CHECK = """
const figs = [...document.querySelectorAll('#v-grid figure')];
return {plots: document.querySelectorAll('.plot svg').length,
        lines: document.querySelectorAll('.plot svg path').length,
        tables: document.querySelectorAll('table').length,
        figures: figs.map(f => ({method: f.dataset.method || 'original', bpp: Number(f.dataset.bpp || 0),
                                 loaded: f.querySelector('img').complete && f.querySelector('img').naturalWidth > 0,
                                 caption: f.querySelector('figcaption').textContent})),
        images: document.getElementById('v-image').options.length,
        target: document.getElementById('v-bpp-out').textContent};
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model, tiny_model_path):
    """Two images coded by JPEG, HEVC and DSSLIC (tiny model) into the code stage's layout, aggregated."""
    from semlic.baselines import run_baselines
    from semlic.code_stage import CodingSample, MethodPlan, code_method

    root = tmp_path_factory.mktemp("report_run")
    images_dir = root / "prepared" / "synthetic" / "test" / "images"
    samples = []
    for i in range(2):
        image, seg = make_image(96, 128, seed=i)
        save_png(images_dir / f"img{i}.png", image)
        save_png(root / "seg" / f"img{i}.png", seg)
        samples.append(CodingSample(f"img{i}", images_dir / f"img{i}.png", root / "seg" / f"img{i}.png"))
    files = root / "coded" / "files" / "synthetic"
    rows = run_baselines(sorted(images_dir.glob("*.png")), ["jpeg", "hevc"], out_dir=files,
                         sweep={"jpeg": [20, 50, 80, 95], "hevc": [42, 34, 26, 18]}, dataset="synthetic",
                         progress=False, with_lpips=False)
    plan = MethodPlan.from_section("dsslic", {"qualities": [40, 30, 20, 12], "segmentation": "precomputed"})
    rows += code_method(samples, plan, {"dsslic": tiny_model}, dataset="synthetic", out_dir=files, progress=False,
                        with_lpips=False)
    results.write_partitioned(rows, root / "coded" / "rows")
    aggregate.aggregate(root / "coded" / "rows", root / "results")
    (root / "models").mkdir()
    shutil.copy(tiny_model_path, root / "models" / "dsslic.safetensors")
    return root, pd.DataFrame(rows)


def build(run, out, **kwargs):
    from semlic.html_report import build_report

    root, _ = run
    options = dict(coded_dir=root / "coded", prepared_dir=root / "prepared", models_dir=root / "models",
                   viewer_images=2, progress=False)
    options.update(kwargs)
    return build_report(root / "results", out, **options)


def viewer_json(page: str) -> dict:
    match = re.search(r'<script id="viewer-data" type="application/json">(.*?)</script>', page, re.S)
    return json.loads(match.group(1))


def test_report_is_offline_and_its_viewer_shows_the_files_as_decoded(run, tmp_path):
    from semlic.html_report import external_references

    root, rows = run
    summary = build(run, tmp_path / "report")
    page = (tmp_path / "report" / "index.html").read_text()
    assert external_references(page) == [] and "<svg" in page
    assert summary["methods"] == ["dsslic", "hevc", "jpeg"] and summary["notes"] == []
    assert summary["viewer_images"] == 2 and summary["viewer_files"] == len(rows)  # every file of both images
    data = viewer_json(page)["synthetic"]
    assert [im["id"] for im in data] == ["img0", "img1"]
    for im in data:
        original = load_image(tmp_path / "report" / im["original"])
        source = root / "prepared" / "synthetic" / "test" / "images" / f"{im['id']}.png"
        assert np.array_equal(original, load_image(source))
        for method, points in im["methods"].items():
            mine = rows[(rows.method == method) & (rows.image_id == im["id"])].sort_values("bpp")
            # bpp: every byte of the file; PSNR of the decoded picture = the code stage's row
            assert [p["bpp"] for p in points] == pytest.approx(mine.bpp.tolist())
            assert [p["psnr"] for p in points] == pytest.approx(mine.psnr_rgb.tolist(), abs=1e-3)
            assert all(np.array_equal(load_image(tmp_path / "report" / p["src"]).shape, original.shape)
                       for p in points)
    assert "BD-rate" in page and "Layer shares" in page and "segmentation" in page  # DSSLIC's layers


def test_report_names_files_it_cannot_decode(run, tmp_path):
    root, rows = run
    (tmp_path / "empty").mkdir()
    summary = build(run, tmp_path / "report", models_dir=tmp_path / "empty")
    dsslic_files = int((rows.method == "dsslic").sum())
    assert len(summary["notes"]) == dsslic_files and all("dsslic" in n and "not decoded" in n for n in summary["notes"])
    page = (tmp_path / "report" / "index.html").read_text()
    assert "Left out of the viewer" in page and "dsslic" not in viewer_json(page)["synthetic"][0]["methods"]


def test_report_refuses_a_folder_without_results(tmp_path):
    from semlic.errors import ConfigError
    from semlic.html_report import build_report

    with pytest.raises(ConfigError, match="rd.parquet"):
        build_report(tmp_path, tmp_path / "out")


def test_report_in_headless_chromium(run, tmp_path):
    """The page loads with no console error, shows the plot and the viewer, and the slider picks the nearest files."""
    from semlic.browser import check_page

    root, rows = run
    build(run, tmp_path / "report")
    page = tmp_path / "report" / "index.html"
    check = check_page(page, script=CHECK, screenshot=tmp_path / "shot.png")
    assert check.errors == [], check.errors
    state = check.result
    assert state["plots"] == 1 and state["lines"] > 20 and state["tables"] >= 3 and state["images"] == 2
    assert [f["method"] for f in state["figures"]] == ["original", "dsslic", "hevc", "jpeg"]
    assert all(f["loaded"] for f in state["figures"])
    assert (tmp_path / "shot.png").stat().st_size > 20_000
    # the slider at its low end: every method shows its lowest-rate file of img0
    low = check_page(page, script=CHECK, actions="const s = document.getElementById('v-bpp'); s.value = s.min; "
                                                 "s.dispatchEvent(new Event('input'));").result
    for figure in low["figures"][1:]:
        mine = rows[(rows.method == figure["method"]) & (rows.image_id == "img0")]
        assert figure["bpp"] == pytest.approx(mine.bpp.min())
        assert f"{mine.bpp.min():.3f} bpp" in figure["caption"]


def test_browser_check_reports_console_errors(tmp_path):
    """The check the report's tests rely on does see a broken page (script error, missing picture)."""
    from semlic.browser import check_page

    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><body><img src='missing.png'><script>undefinedFunction();</script>"
                    "</body></html>")
    check = check_page(page)
    assert any("undefinedFunction" in e for e in check.errors)
    assert any("missing.png" in e for e in check.errors)


def test_report_cli(run, tmp_path, capsys):
    from semlic.cli import main

    root, _ = run
    code = main(["report", "--results", str(root / "results"), "--out", str(tmp_path / "r"), "--coded",
                 str(root / "coded"), "--prepared", str(root / "prepared"), "--models-dir", str(root / "models"),
                 "--images", "1", "--quiet", "--screenshot", str(tmp_path / "r.png")])
    out = capsys.readouterr().out
    assert code == 0 and "viewer 1 images" in out and "0 console errors" in out
    assert (tmp_path / "r" / "index.html").is_file() and (tmp_path / "r.png").is_file()
