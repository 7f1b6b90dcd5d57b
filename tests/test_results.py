"""Result rows and their deterministic Parquet files."""

import math
import re
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from semlic import results
from semlic.errors import ConfigError


def _row(method="hevc", image_id="kodim01", quality=32.0, dataset="kodak", bytes_total=1000, **overrides):
    fields = dict(
        dataset=dataset, image_id=image_id, method=method, quality=quality, quality_name="qp",
        height=40, width=50, bytes_total=bytes_total, layer_bits=None, psnr_rgb=33.5, psnr_channel_mean=34.0,
        ms_ssim=math.nan, enc_s=0.5, dec_s=0.05, device="cpu", git_rev="abc1234", params_hash="0123456789ab",
    )
    fields.update(overrides)
    return results.make_row(**fields)


def _rows():
    rows = []
    for method in ("jpeg", "hevc"):
        for dataset in ("kodak", "camvid"):
            for image_id in ("b", "a"):
                for quality in (40.0, 12.0, 27.0):
                    rows.append(_row(method, image_id, quality, dataset, bytes_total=int(quality) * 10 + len(image_id)))
    return rows


def _without_nan(rows):
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]


def test_make_row_derives_rates_and_checks_layers():
    row = _row(bytes_total=1000, layer_bits={"heif_container": 3000, "hevc_mdat": 5000})
    assert row["bits_total"] == 8000
    assert row["bpp"] == pytest.approx(8000 / (40 * 50))
    assert row["bits_per_subpixel"] == pytest.approx(8000 / (40 * 50 * 3))
    assert list(row) == list(results.COLUMNS)
    assert _row()["layer_bits"] == {"hevc": 8000}
    with pytest.raises(ConfigError, match="add up"):
        _row(bytes_total=1000, layer_bits={"hevc_mdat": 7999})
    for bad in ("", "a/b", "x=y", "../up"):
        with pytest.raises(ConfigError):
            _row(dataset=bad)
    with pytest.raises(ConfigError):
        _row(quality=math.inf)


def test_write_rows_is_deterministic_sorted_and_without_pandas_metadata(tmp_path):
    rows = _rows()
    first = results.write_rows(rows, tmp_path / "one.parquet")
    second = results.write_rows(list(reversed(rows)), tmp_path / "two.parquet")
    assert first.read_bytes() == second.read_bytes()
    assert pq.read_schema(first).remove_metadata() == results.SCHEMA
    assert b"pandas" not in b"".join(pq.read_metadata(first).metadata or {})
    back = results.read_rows(first)
    keys = [tuple(r[k] for k in results.SORT_KEY) for r in back]
    assert keys == sorted(keys) and len(back) == len(rows)
    assert _without_nan(back) == _without_nan(sorted(rows, key=lambda r: tuple(r[k] for k in results.SORT_KEY)))
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary file left behind


def test_write_rows_refuses_duplicates_and_foreign_columns(tmp_path):
    with pytest.raises(ConfigError, match="share"):
        results.write_rows([_row(), _row()], tmp_path / "dup.parquet")
    row = _row()
    row["vmaf"] = 90.0  # not a schema column
    with pytest.raises(ConfigError, match="unexpected"):
        results.write_rows([row], tmp_path / "extra.parquet")
    assert not (tmp_path / "dup.parquet").exists()


def test_partitioned_tree_is_read_by_duckdb_and_read_rows(tmp_path):
    rows = _rows()
    written = results.write_partitioned(rows, tmp_path / "rd")
    assert sorted(p.relative_to(tmp_path / "rd").as_posix() for p in written) == [
        f"method={m}/dataset={d}/part-0.parquet" for m in ("hevc", "jpeg") for d in ("camvid", "kodak")]
    before = [p.read_bytes() for p in written]
    results.write_partitioned(list(reversed(rows)), tmp_path / "rd")
    assert [p.read_bytes() for p in written] == before
    query = duckdb.sql(
        f"select method, dataset, count(*) as n, sum(bits_total) as bits, sum(layer_bits[method]) as layer "
        f"from read_parquet('{tmp_path / 'rd'}/**/*.parquet', hive_partitioning=true) "
        f"group by method, dataset order by method, dataset").fetchall()
    expected = {}
    for r in rows:
        n, bits = expected.get((r["method"], r["dataset"]), (0, 0))
        expected[(r["method"], r["dataset"])] = (n + 1, bits + r["bits_total"])
    assert [(m, d, n, bits, bits) for (m, d), (n, bits) in sorted(expected.items())] == query
    assert _without_nan(results.read_rows(tmp_path / "rd")) == _without_nan(results.read_rows(
        results.write_rows(rows, tmp_path / "flat.parquet")))


def test_params_hash_is_canonical():
    digest = results.params_hash({"qp": 32, "chroma": "444"})
    assert re.fullmatch(r"[0-9a-f]{12}", digest)
    assert digest == results.params_hash({"chroma": "444", "qp": 32})
    assert digest != results.params_hash({"chroma": "420", "qp": 32})
    with pytest.raises(ConfigError):
        results.params_hash({"values": {1, 2}})


def test_git_revision(tmp_path):
    if not (Path(results.__file__).resolve().parents[1] / ".git").exists():
        pytest.skip("not a git checkout")
    assert re.fullmatch(r"[0-9a-f]{4,40}", results.git_revision())
    assert results.git_revision(tmp_path) == "unknown"


def test_merged_parts_write_the_same_bytes_as_the_rows_and_refuse_duplicates(tmp_path):
    rows = _rows()
    parts = [results.write_rows(rows[i::3], tmp_path / f"part-{i}.parquet") for i in range(3)]
    merged = results.merge_tables(reversed(parts))
    assert merged.num_rows == len(rows)
    direct = results.write_partitioned(rows, tmp_path / "direct")
    columnar = results.write_partitioned_table(merged, tmp_path / "columnar")
    assert [p.relative_to(tmp_path / "direct") for p in direct] == \
        [p.relative_to(tmp_path / "columnar") for p in columnar]
    assert [p.read_bytes() for p in direct] == [p.read_bytes() for p in columnar]
    with pytest.raises(ConfigError, match="share"):
        results.merge_tables([parts[0], parts[0]])
    assert results.merge_tables([]).num_rows == 0
    # one partition at a time: the same files, partitions in the order asked, each yielded once written
    streamed = tmp_path / "streamed"
    seen = [(t["dataset"][0].as_py(), t["method"][0].as_py(), t.num_rows)
            for t in results.merge_partitioned(parts, streamed, order=("dataset", "method"))]
    assert seen == [("camvid", "hevc", 6), ("camvid", "jpeg", 6), ("kodak", "hevc", 6), ("kodak", "jpeg", 6)]
    assert [p.read_bytes() for p in direct] == [(streamed / p.relative_to(tmp_path / "direct")).read_bytes()
                                                 for p in direct]
    with pytest.raises(ConfigError, match="share"):
        list(results.merge_partitioned([parts[0], parts[0]], tmp_path / "twice"))


def test_partitions_in_order_are_written_piece_by_piece_in_row_groups(tmp_path, monkeypatch):
    rows = [_row(method, f"img{i:02d}", q, "kodak") for method in ("hevc", "jpeg") for i in range(10)
            for q in (12.0, 27.0)]
    parts = [results.write_rows([r for r in rows if int(r["image_id"][3:]) // 3 == shard],
                                tmp_path / f"part-{shard}.parquet") for shard in range(4)]   # shards of sorted images
    monkeypatch.setattr(results, "ROW_GROUP_ROWS", 5)
    pieces = list(results.merge_partitioned(parts, tmp_path / "streamed"))
    assert [t.num_rows for t in pieces] == [6, 6, 6, 2] * 2          # flushed at >= 5 rows, file by file
    written = tmp_path / "streamed" / "method=hevc" / "dataset=kodak" / results.PART_FILE
    assert pq.ParquetFile(written).metadata.num_row_groups > 1
    direct = results.write_partitioned(rows, tmp_path / "direct")
    streamed_rows = _without_nan(results.read_rows(tmp_path / "streamed"))
    assert streamed_rows == _without_nan(results.read_rows(tmp_path / "direct"))
    assert len(direct) == 2
    again = list(results.merge_partitioned(parts, tmp_path / "again"))
    assert written.read_bytes() == (tmp_path / "again" / written.relative_to(tmp_path / "streamed")).read_bytes()
    # a repeated key across files is not in order: merged whole, and refused
    with pytest.raises(ConfigError, match="share"):
        list(results.merge_partitioned([parts[0], parts[0]], tmp_path / "twice"))
    assert len(again) == len(pieces)
