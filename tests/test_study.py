"""The GPU study's report (semlic.study) on a synthetic rows table with known answers."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from semlic import reporting, results, study
from semlic.cli import main as cli_main

RATES = np.array([0.1, 0.2, 0.4, 0.8, 1.6, 3.2])   # bpp of the anchor at its 6 qualities
SLOPE = 4.0                                         # dB per natural-log unit of rate
H, W = 64, 96                                       # small images: MS-SSIM is NaN below 161 px


def anchor_psnr(rate):
    return 30.0 + SLOPE * np.log(rate / 0.1)


def _row(dataset, image_id, method, quality, bpp, psnr, layers=None, ms_ssim=0.9):
    nbytes = int(round(bpp * H * W / 8))
    if layers is not None:  # split the file's bits as given (fractions), the remainder to the residual
        bits = {name: int(8 * nbytes * share) for name, share in layers.items()}
        bits["residual"] = 8 * nbytes - sum(bits.values())
        layers = bits
    return results.make_row(dataset=dataset, image_id=image_id, method=method, quality=float(quality),
                            quality_name="qp", height=H, width=W, bytes_total=nbytes, layer_bits=layers,
                            psnr_rgb=psnr, psnr_channel_mean=psnr + 0.1, ms_ssim=ms_ssim, enc_s=0.1, dec_s=0.05,
                            device="cpu", git_rev="test", params_hash="test")


def synthetic_rows(dataset="kodak"):
    """hevc: the anchor; dsslic: +1 dB at the same rates; edms: the same PSNR at 0.8x the rate."""
    rows = []
    layers = {"header": 0.01, "segmentation": 0.09, "compact": 0.2}
    for image in ("a", "b"):
        for q, rate in enumerate(RATES):
            psnr = float(anchor_psnr(rate))
            # bytes are whole numbers: use the rate the rounded byte count gives, for every method
            rows.append(_row(dataset, image, "hevc", 47 - 5 * q, rate, psnr))
            rows.append(_row(dataset, image, "dsslic", 32 - 3 * q, rate, psnr + 1.0, layers))
            rows.append(_row(dataset, image, "edms", 32 - 3 * q, 0.8 * rate, psnr,
                             {"header": 0.01, "compact": 0.29}))
    return rows


def _exact(rows):
    """The curves the rows really describe (bytes are rounded): (rate, psnr) per method."""
    frame = pd.DataFrame(rows)
    return {m: g.groupby("quality")[["bpp", "psnr_rgb"]].mean() for m, g in frame.groupby("method")}


@pytest.fixture()
def results_dir(tmp_path):
    root = tmp_path / "study_results"
    results.write_partitioned(synthetic_rows("kodak") + synthetic_rows("camvid"), root / "rows")
    speed = pd.DataFrame([
        {"method": m, "image_id": "kodim01", "device": d, "enc_s": 0.5, "enc_network_s": 0.2, "enc_entropy_s": 0.3,
         "dec_s": 0.2, "dec_network_s": 0.15, "dec_entropy_s": 0.05, "matches_encoder": True}
        for m in ("dsslic", "edms") for d in ("cuda", "cpu (16 threads)")])
    (root / "speed").mkdir(parents=True)
    speed.to_parquet(root / "speed" / "speed.parquet")
    (root / "logs").mkdir()
    chunk = {"step": "base", "start_iteration": 0, "end_iteration": 100, "iterations": 100, "batch_size": 8,
             "train_s": 10.0, "wall_s": 20.0, "images_per_s": 80.0, "steady_images_per_s": 90.0, "gpu_busy_share": 0.9}
    (root / "logs" / "base_chunks.jsonl").write_text(json.dumps(chunk) + "\n")
    (root / "logs" / "base_plan.json").write_text(json.dumps({"epochs": 2.0, "epochs_wanted": 150.0}))
    (root / "provenance.json").write_text(json.dumps({"git_rev": "abc", "gpu": "NVIDIA H100", "torch": "2.11"}))
    (root / "status.json").write_text(json.dumps({"steps": {
        "base": {"done": True, "wall_s": 30.0}, "smic": {"done": False, "wall_s": 290.0, "stopped": "no time"},
        "auto": {"complete": False}}}))
    pd.DataFrame({"t": [0.0, 1.0, 2.0, 3.0], "utilisation_pct": [80, 100, 20, 40],
                  "phase": ["lanes", "lanes", "final", "final"]}).to_parquet(root / "speed" / "gpu_utilisation.parquet")
    return root


def test_bd_against_hand_made_curves(results_dir, tmp_path):
    summary = study.study_report(results_dir, tmp_path / "report", anchors_dir=None, dry_run=True)
    bd = pd.read_csv(tmp_path / "report" / "bd.csv")
    main = bd[bd["distortion"] == "psnr_rgb"].set_index(["dataset", "method"])
    exact = _exact(synthetic_rows())
    for dataset in ("kodak", "camvid"):
        # dsslic: 1 dB above the anchor at (almost exactly) its rates
        assert main.loc[(dataset, "dsslic"), "bd_psnr_db"] == pytest.approx(1.0, abs=0.02)
        # log-linear anchor, 1 dB up: ln R needs 1/SLOPE less at equal PSNR
        assert main.loc[(dataset, "dsslic"), "bd_rate_pct"] == pytest.approx((math.exp(-1 / SLOPE) - 1) * 100, abs=0.5)
        # edms: the same PSNR at 0.8x the rate: BD-rate -20 %, BD-PSNR SLOPE * ln(1 / 0.8)
        assert main.loc[(dataset, "edms"), "bd_rate_pct"] == pytest.approx(-20.0, abs=0.3)
        assert main.loc[(dataset, "edms"), "bd_psnr_db"] == pytest.approx(SLOPE * math.log(1 / 0.8), abs=0.03)
    # the report's numbers are semlic.bd's on the curves the rows describe
    from semlic import bd as bjontegaard

    expected = bjontegaard.bd_rate(exact["hevc"]["bpp"], exact["hevc"]["psnr_rgb"], exact["edms"]["bpp"],
                                   exact["edms"]["psnr_rgb"])
    assert main.loc[("kodak", "edms"), "bd_rate_pct"] == pytest.approx(expected, rel=1e-5)
    # the papers' channel-mean PSNR is 0.1 dB above PSNR-RGB for every method: same BD-rate
    papers = bd[bd["distortion"] == "psnr_channel_mean"].set_index(["dataset", "method"])
    assert papers.loc[("kodak", "edms"), "bd_rate_pct"] == pytest.approx(main.loc[("kodak", "edms"), "bd_rate_pct"])
    assert any("kodak: EDMS beats HEVC" in line for line in summary["answer"])
    assert any("kodak: DSSLIC beats HEVC" in line for line in summary["answer"])


def test_layer_shares_and_report_files(results_dir, tmp_path):
    out = tmp_path / "report"
    study.study_report(results_dir, out, anchors_dir=None, dry_run=True, command="semlic study-report test")
    shares = pd.read_csv(out / "layer_share.csv")
    dsslic = shares[(shares["dataset"] == "kodak") & (shares["method"] == "dsslic")]
    assert dsslic.groupby("quality")["share"].sum().to_numpy() == pytest.approx(1.0)
    seg = dsslic[dsslic["layer"] == "segmentation"]["share"]
    assert seg.to_numpy() == pytest.approx(0.09, abs=0.01)
    assert set(shares[shares["method"] == "hevc"]["layer"]) == {"hevc"}
    # a layer's bpp: its bits over all pixels; the layers add up to the curve's bpp
    curves = pd.read_csv(out / "curves.csv")
    total = dsslic.groupby("quality")["bpp"].sum()
    mean_bpp = curves[(curves["dataset"] == "kodak") & (curves["method"] == "dsslic")].set_index("quality")["bpp"]
    assert total.to_numpy() == pytest.approx(mean_bpp.loc[total.index].to_numpy(), rel=1e-4)
    for name in ("study.md", "bd.csv", "curves.csv", "speed.csv", "training.csv", "rd_kodak.png",
                 "rd_kodak_subpixel.png", "rd_camvid.png", "rd_camvid_subpixel.png"):
        assert (out / name).is_file(), name
    text = (out / "study.md").read_text()
    assert "DRY RUN" in text and "not results" in text and "semlic study-report test" in text
    assert "| smic | no | 290 | no time |" in text and "| base | yes | 30 |" in text   # the call's steps
    assert "lanes 90% over 2 s, final 30% over 2 s" in text
    speed = pd.read_csv(out / "speed.csv").set_index(["method", "device"])
    assert speed.loc[("edms", "cuda"), "paper_enc_s_gpu"] == 0.745
    assert speed.loc[("dsslic", "cpu (16 threads)"), "paper_dec_s"] == 44.0
    training = pd.read_csv(out / "training.csv").set_index("step")
    assert training.loc["base", "images_per_s"] == pytest.approx(80.0)
    assert training.loc["base", "gpu_busy_share"] == pytest.approx(0.9)


def test_extra_rows_fill_only_missing_pairs(results_dir, tmp_path):
    extra = [_row("kodak", "a", "hevc", 12, 9.0, 99.0), _row("kodak", "a", "jpeg", 50, 1.0, 30.0)]
    path = results.write_rows(extra, tmp_path / "extra.parquet")
    rows = reporting.merge_rows([results_dir / "rows", path])
    assert not (rows["psnr_rgb"] == 99.0).any()                 # hevc/kodak came from the run
    assert len(rows[(rows["method"] == "jpeg") & (rows["dataset"] == "kodak")]) == 1


def test_cli_and_published_anchors(results_dir, tmp_path, shared_data):
    anchors = shared_data.parent / "anchors" / "kodak"
    args = ["study-report", "--results", str(results_dir), "--out", str(tmp_path / "cli")]
    args += ["--anchors", str(anchors)] if anchors.is_dir() else ["--no-anchors"]
    assert cli_main(args) == 0
    text = (tmp_path / "cli" / "study.md").read_text()
    assert "DRY RUN" not in text and "## Answer" in text
    if anchors.is_dir():
        loaded = reporting.load_anchors(anchors)
        assert "BPG 4:4:4 x265 (CompressAI)" in loaded and loaded["BPG 4:4:4 x265 (CompressAI)"]["ms_ssim"] is not None
