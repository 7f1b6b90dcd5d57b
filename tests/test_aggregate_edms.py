"""semlic.reporting.comparisons (EDMS against DSSLIC, as the registry pairs them) on a hand-made rows table."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from semlic import aggregate as agg
from semlic import reporting
from semlic import bd, results

QPS = (40, 34, 28, 22, 16)
BITS = {"dsslic": 1.0, "edms": 0.95, "edms_noenh": 0.98}   # edms saves 5% of the bits at equal PSNR
ENC_S = {"dsslic": 1.0, "edms": 0.76, "edms_noenh": 0.70}  # and 24% of the encoding time
DEC_S = {"dsslic": 0.5, "edms": 0.6, "edms_noenh": 0.55}


def make_rows(methods=("dsslic", "edms", "edms_noenh", "hevc"), dataset="synthetic"):
    rows = []
    for method in methods:
        for k, qp in enumerate(QPS):
            for i, image in enumerate(("a", "b")):
                nbytes = int(1000 * 2 ** k * BITS.get(method, 1.2))
                psnr = 30 + 6 * math.log2(1000 * 2 ** k * 8 / (64 * 64)) + i  # PSNR of the dsslic bits
                rows.append(results.make_row(
                    dataset=dataset, image_id=image, method=method, quality=float(qp), quality_name="qp",
                    height=64, width=64, bytes_total=nbytes, psnr_rgb=psnr, psnr_channel_mean=psnr, ms_ssim=0.9,
                    enc_s=ENC_S.get(method, 0.1) * (1 + i), dec_s=DEC_S.get(method, 0.1) * (1 + i), device="cpu",
                    git_rev="test", params_hash="x"))
    return rows


def test_the_registry_pairs_edms_and_the_ablations_with_dsslic():
    assert reporting.reference_pairs() == {"edms": "dsslic", "edms_noenh": "dsslic", "dsslic_noseg": "dsslic",
                                     "dsslic_upcomp": "dsslic", "dsslic_rd": "dsslic", "dsslic_rd_lossy": "dsslic",
                                     "dsslic_rd_derived": "dsslic", "sgfilter_nomap": "sgfilter", "sgfilter_sent": "sgfilter"}


def test_edms_vs_dsslic_bd_against_dsslic_and_time_ratios():
    rows = pd.DataFrame(make_rows())
    curves = reporting.rd_curves(rows)
    table = reporting.comparisons(curves, rows=rows).set_index("method")
    assert list(table.columns) == [c for c in reporting.COMPARISON_COLUMNS if c != "method"]
    assert sorted(table.index) == ["edms", "edms_noenh"] and set(table.anchor) == {"dsslic"}
    anchor, test = curves[curves.method == "dsslic"], curves[curves.method == "edms"]
    assert table.at["edms", "bd_rate_pct"] == pytest.approx(bd.bd_rate(anchor.bpp, anchor.psnr_rgb, test.bpp,
                                                                         test.psnr_rgb))
    assert table.at["edms", "bd_rate_pct"] == pytest.approx(-5, abs=0.3)
    assert table.at["edms_noenh", "bd_rate_pct"] == pytest.approx(-2, abs=0.3)
    assert table.at["edms", "bd_psnr_db"] > 0
    assert table.at["edms", "enc_time_ratio"] == pytest.approx(0.76)
    assert table.at["edms", "dec_time_ratio"] == pytest.approx(1.2)
    assert table.at["edms_noenh", "enc_time_ratio"] == pytest.approx(0.70)


def test_edms_vs_dsslic_is_empty_without_dsslic_or_edms():
    for methods in (("edms", "hevc"), ("dsslic", "hevc")):
        curves = reporting.rd_curves(pd.DataFrame(make_rows(methods)))
        table = reporting.comparisons(curves)
        assert table.empty and list(table.columns) == list(reporting.COMPARISON_COLUMNS)


def test_aggregate_writes_edms_vs_dsslic_csv_and_metrics(tmp_path):
    results.write_partitioned(make_rows() + make_rows(("dsslic", "hevc"), dataset="other"), tmp_path / "rows")
    doc = agg.aggregate(tmp_path / "rows", tmp_path / "out")
    csv = pd.read_csv(tmp_path / "out" / "comparisons.csv")
    assert list(csv.columns) == list(reporting.COMPARISON_COLUMNS)
    assert csv[["dataset", "method"]].values.tolist() == [["synthetic", "edms"], ["synthetic", "edms_noenh"]]
    figures = doc["comparisons"]["synthetic"]["edms"]
    assert figures["bd_rate_pct"] == pytest.approx(csv.bd_rate_pct[0], rel=1e-5)
    assert figures["enc_time_ratio"] == pytest.approx(0.76) and figures["anchor"] == "dsslic"
    assert "other" not in doc["comparisons"]
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == agg.headline_metrics(doc)
    assert set(doc["bd"]["synthetic"]) == {"dsslic", "edms", "edms_noenh"}  # all against hevc as well
