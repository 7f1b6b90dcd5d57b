"""The aggregate stage's library function and the ``semlic results`` DuckDB command."""

from __future__ import annotations

import argparse
import json
import math

import pandas as pd
import pytest

from semlic import aggregate as agg
from semlic import reporting
from semlic import bd, query, results

QUALITIES = {"hevc": [47, 37, 27, 17], "jpeg": [20, 40, 60, 80, 95]}


def make_rows(dataset="synthetic", images=("a", "b")):
    """Plausible rows: PSNR grows with log-rate; jpeg needs 1.5x the bits of hevc."""
    rows = []
    for method, qualities in QUALITIES.items():
        for k, quality in enumerate(qualities):
            for i, image in enumerate(images):
                nbytes = int(1000 * 2 ** k * (1.5 if method == "jpeg" else 1.0)) + 17 * i
                bpp = nbytes * 8 / (64 * 64)
                psnr = 30 + 6 * math.log2(bpp) + i
                rows.append(results.make_row(
                    dataset=dataset, image_id=image, method=method, quality=quality, quality_name="q",
                    height=64, width=64, bytes_total=nbytes, psnr_rgb=psnr, psnr_channel_mean=psnr + 0.1,
                    ms_ssim=0.9, enc_s=0.01 * (k + 1), dec_s=0.005, device="cpu", git_rev="test", params_hash="x"))
    return rows


@pytest.fixture
def coded(tmp_path):
    root = tmp_path / "coded" / "rows"
    rows = make_rows()
    results.write_partitioned(rows, root)
    return root, rows


def test_aggregate_writes_every_file_and_bd_matches_semlic_bd(coded, tmp_path):
    root, rows = coded
    out = tmp_path / "results"
    doc = agg.aggregate(root, out, anchor="hevc")
    for name in ("rd.parquet", "curves.parquet", "bd.parquet", "metrics.json", "plots/hevc.csv",
                 "plots/jpeg.csv", "figures/rd_synthetic.png"):
        assert (out / name).is_file(), name
    assert len(results.read_rows(out / "rd.parquet")) == len(rows)

    frame = pd.DataFrame(rows)
    curve = frame.groupby(["method", "quality"])[["bpp", "psnr_rgb"]].mean().reset_index()
    anchor, test = curve[curve.method == "hevc"], curve[curve.method == "jpeg"]
    expected_rate = bd.bd_rate(anchor.bpp, anchor.psnr_rgb, test.bpp, test.psnr_rgb)
    expected_psnr = bd.bd_psnr(anchor.bpp, anchor.psnr_rgb, test.bpp, test.psnr_rgb)
    table = pd.read_parquet(out / "bd.parquet")
    assert table[["dataset", "method", "anchor"]].values.tolist() == [["synthetic", "jpeg", "hevc"]]
    assert table.bd_rate_pct[0] == pytest.approx(expected_rate)
    assert table.bd_psnr_db[0] == pytest.approx(expected_psnr)
    assert table.bd_rate_pct[0] > 0 and table.bd_psnr_db[0] < 0  # jpeg spends more bits here
    assert json.loads((out / "metrics.json").read_text()) == agg.headline_metrics(doc)
    assert doc["bd"]["synthetic"]["jpeg"]["bd_rate_pct"] == pytest.approx(expected_rate)
    csv = pd.read_csv(out / "plots" / "jpeg.csv")
    assert list(csv.columns) == list(agg.PLOT_COLUMNS) and len(csv) == len(QUALITIES["jpeg"])


def test_aggregate_is_deterministic_and_joins_timings(coded, tmp_path):
    root, rows = coded
    timings = pd.DataFrame([{**{k: r[k] for k in reporting.KEY_COLUMNS}, "enc_s": 1.5, "dec_s": 2.5} for r in rows])
    timings.to_parquet(tmp_path / "timings.parquet")
    first, second = tmp_path / "r1", tmp_path / "r2"
    agg.aggregate(root, first, timings=tmp_path / "timings.parquet")
    agg.aggregate(root, second, timings=tmp_path / "timings.parquet")
    for name in ("rd.parquet", "curves.parquet", "bd.parquet", "metrics.json", "plots/jpeg.csv"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    merged = results.read_rows(first / "rd.parquet")
    assert {r["enc_s"] for r in merged} == {1.5} and {r["dec_s"] for r in merged} == {2.5}


def test_bd_is_nan_with_a_reason_when_a_curve_is_too_short(tmp_path):
    rows = [r for r in make_rows() if not (r["method"] == "jpeg" and r["quality"] > 40)]  # 2 points
    results.write_partitioned(rows, tmp_path / "rows")
    agg.aggregate(tmp_path / "rows", tmp_path / "out")
    table = pd.read_parquet(tmp_path / "out" / "bd.parquet")
    assert math.isnan(table.bd_rate_pct[0]) and "at least 4 points" in table.note[0]


def run_results_command(argv, capsys) -> tuple[int, str]:
    """``semlic results ...`` through the main CLI when it lists semlic.query, else its own parser."""
    from semlic import cli

    if "semlic.query" in cli.COMMAND_MODULES:
        code = cli.main(["results", *argv])
    else:
        parser = argparse.ArgumentParser(prog="semlic")
        query.register_cli(parser.add_subparsers(dest="command"))
        args = parser.parse_args(["results", *argv])
        code = args.func(args)
    return code, capsys.readouterr().out


def test_semlic_results_aggregates_match_pandas(coded, tmp_path, capsys):
    root, rows = coded
    agg.aggregate(root, tmp_path / "results")
    code, out = run_results_command(
        ["select method, avg(bpp) as bpp, avg(psnr_rgb) as psnr from rd group by method order by method",
         "--source", str(tmp_path / "results" / "rd.parquet"), "--format", "csv"], capsys)
    assert code == 0
    got = pd.read_csv(pd.io.common.StringIO(out)).set_index("method")
    expected = pd.DataFrame(rows).groupby("method")[["bpp", "psnr_rgb"]].mean()
    assert list(got.index) == ["hevc", "jpeg"]
    assert got.bpp.to_numpy() == pytest.approx(expected.bpp.to_numpy())
    assert got.psnr.to_numpy() == pytest.approx(expected.psnr_rgb.to_numpy())

    code, out = run_results_command(["select method, bd_rate_pct from bd", "--source",
                                     str(tmp_path / "results" / "rd.parquet"), "--format", "json"], capsys)
    assert code == 0 and json.loads(out)[0]["method"] == "jpeg"


def test_semlic_results_reads_a_hive_tree_in_place(coded):
    root, rows = coded
    frame = query.query("select dataset, method, count(*) as n from rd group by all order by method", root)
    assert frame.values.tolist() == [["synthetic", "hevc", 8], ["synthetic", "jpeg", 10]]


def test_semlic_results_says_what_is_missing(tmp_path):
    from semlic.errors import ConfigError

    with pytest.raises(ConfigError, match="no such result file"):
        query.query("select 1", tmp_path / "nothing.parquet")
    results.write_rows(make_rows(), tmp_path / "rd.parquet")
    with pytest.raises(ConfigError, match="DuckDB could not run"):
        query.query("select no_such_column from rd", tmp_path / "rd.parquet")
