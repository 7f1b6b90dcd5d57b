"""Result rows (docs/DESIGN.md section 6) and their deterministic Parquet files.

Long format: one row per (dataset, image_id, method, quality). The columns are
:data:`SCHEMA`; ``layer_bits`` is a ``map<string, int64>`` from layer name to its bits
(a baseline has one layer named after its codec, HEVC splits its HEIF file into
``hevc_mdat`` and ``heif_container``; a .sem file names its header and layers). The layer
bits always add up to ``bits_total = 8 * bytes_total``: every byte of the file is counted.
``lpips`` (LPIPS v0.1 AlexNet, :mod:`semlic.lpips`) is NaN where no LPIPS weights were
available; files written before that column existed read with NaN in it (:data:`LATER_COLUMNS`).

Files are reproducible byte for byte, so DVC hashes stay stable across reruns:
rows sorted by (dataset, method, image_id, quality), duplicates refused, one fixed schema
built without pandas (no index metadata), fixed writer options, written to a temporary file
and renamed. :func:`write_partitioned` writes a hive tree
``root/method=<m>/dataset=<d>/part-0.parquet`` that DuckDB reads in place::

    duckdb.sql("select method, avg(bpp) from read_parquet('root/**/*.parquet', "
               "hive_partitioning=true) group by method")
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import metrics
from .errors import ConfigError

SCHEMA = pa.schema([
    pa.field("dataset", pa.string(), nullable=False),
    pa.field("image_id", pa.string(), nullable=False),
    pa.field("method", pa.string(), nullable=False),
    pa.field("quality", pa.float64(), nullable=False),   # the codec's knob: QP, quality or ratio
    pa.field("quality_name", pa.string(), nullable=False),
    pa.field("height", pa.int32(), nullable=False),
    pa.field("width", pa.int32(), nullable=False),
    pa.field("bytes_total", pa.int64(), nullable=False),
    pa.field("bits_total", pa.int64(), nullable=False),
    pa.field("layer_bits", pa.map_(pa.string(), pa.int64()), nullable=False),
    pa.field("bpp", pa.float64(), nullable=False),
    pa.field("bits_per_subpixel", pa.float64(), nullable=False),
    pa.field("psnr_rgb", pa.float64(), nullable=False),
    pa.field("psnr_channel_mean", pa.float64(), nullable=False),
    pa.field("ms_ssim", pa.float64(), nullable=False),    # NaN below 161 px (semlic.metrics)
    pa.field("lpips", pa.float64(), nullable=False),      # NaN without LPIPS weights (semlic.lpips)
    pa.field("enc_s", pa.float64(), nullable=False),
    pa.field("dec_s", pa.float64(), nullable=False),
    pa.field("device", pa.string(), nullable=False),
    pa.field("git_rev", pa.string(), nullable=False),
    pa.field("params_hash", pa.string(), nullable=False),
])
COLUMNS = tuple(SCHEMA.names)
SORT_KEY = ("dataset", "method", "image_id", "quality")
PARTITION_KEYS = ("method", "dataset")
PART_FILE = "part-0.parquet"
#: Columns added after result files were first written: an older file without one reads as this value.
LATER_COLUMNS = {"lpips": math.nan}
_PARTITION_VALUE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_WRITE_OPTIONS = dict(compression="zstd", compression_level=3, use_dictionary=True,
                      write_statistics=True, data_page_version="1.0", version="2.6")


def check_partition_value(name: str, value: str) -> None:
    """Refuse a dataset or method name that cannot be a hive partition folder (``a/b``, ``x=y``)."""
    if not isinstance(value, str) or not _PARTITION_VALUE.match(value):
        raise ConfigError(f"{name} must be a name of letters, digits and _.+- (a hive partition value), "
                          f"got {value!r}")


def make_row(*, dataset: str, image_id: str, method: str, quality: float, quality_name: str,
             height: int, width: int, bytes_total: int, layer_bits: Mapping[str, int] | None = None,
             psnr_rgb: float, psnr_channel_mean: float, ms_ssim: float, enc_s: float, dec_s: float,
             device: str, git_rev: str, params_hash: str, lpips: float = math.nan) -> dict:
    """One result row; bpp and bits per sub-pixel are derived from ``bytes_total``.

    ``layer_bits`` defaults to a single layer named ``method`` holding the whole file.
    ``lpips`` is NaN when it was not measured (no LPIPS weights: :mod:`semlic.lpips`).
    """
    check_partition_value("dataset", dataset)
    check_partition_value("method", method)
    if not isinstance(image_id, str) or not image_id:
        raise ConfigError(f"image_id must be a non-empty string, got {image_id!r}")
    if not math.isfinite(float(quality)):
        raise ConfigError(f"quality must be finite, got {quality!r}")
    bits_total = 8 * int(bytes_total)
    layers = {method: bits_total} if layer_bits is None else {str(k): int(v) for k, v in layer_bits.items()}
    if sum(layers.values()) != bits_total:
        raise ConfigError(f"layer bits {layers} add up to {sum(layers.values())}, "
                          f"expected bits_total = 8 * {bytes_total} = {bits_total}")
    return {
        "dataset": dataset, "image_id": image_id, "method": method,
        "quality": float(quality), "quality_name": quality_name,
        "height": int(height), "width": int(width),
        "bytes_total": int(bytes_total), "bits_total": bits_total,
        "layer_bits": dict(sorted(layers.items())),
        "bpp": metrics.bpp(bytes_total, height, width),
        "bits_per_subpixel": metrics.bits_per_subpixel(bytes_total, height, width),
        "psnr_rgb": float(psnr_rgb), "psnr_channel_mean": float(psnr_channel_mean), "ms_ssim": float(ms_ssim),
        "lpips": float(lpips),
        "enc_s": float(enc_s), "dec_s": float(dec_s),
        "device": device, "git_rev": git_rev, "params_hash": params_hash,
    }


def _sort_key(row: Mapping) -> tuple:
    return tuple(row[k] for k in SORT_KEY)


def rows_to_table(rows: Iterable[Mapping]) -> pa.Table:
    """Rows -> one sorted :data:`SCHEMA` table; refuses wrong columns and duplicate keys."""
    rows = list(rows)
    for row in rows:
        if set(row) != set(COLUMNS):
            missing, extra = set(COLUMNS) - set(row), set(row) - set(COLUMNS)
            raise ConfigError(f"a result row must have exactly the schema's columns; "
                              f"missing {sorted(missing)}, unexpected {sorted(extra)}")
    rows.sort(key=_sort_key)
    for previous, current in zip(rows, rows[1:]):
        if _sort_key(previous) == _sort_key(current):
            raise ConfigError(f"two rows share (dataset, method, image_id, quality) = {_sort_key(current)}")
    ordered = [{c: row[c] for c in COLUMNS} for row in rows]
    for row in ordered:  # maps are written in key order
        row["layer_bits"] = sorted(dict(row["layer_bits"]).items())
    try:
        return pa.Table.from_pylist(ordered, schema=SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
        raise ConfigError(f"result rows do not fit the schema: {exc}") from exc


def _write_table(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        pq.write_table(table, tmp, **_WRITE_OPTIONS)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_rows(rows: Iterable[Mapping], path: str | os.PathLike) -> Path:
    """Write rows to one Parquet file, sorted, atomically; the same rows give the same bytes."""
    path = Path(path)
    _write_table(rows_to_table(rows), path)
    return path


def write_partitioned(rows: Iterable[Mapping], root: str | os.PathLike) -> list[Path]:
    """Write ``root/method=<m>/dataset=<d>/part-0.parquet``, one file per partition in ``rows``.

    Each file holds the partition's rows without the two partition columns (they are in the
    path). Partitions under ``root`` that ``rows`` does not touch are left as they are.
    """
    return write_partitioned_table(rows_to_table(rows), root)


def check_unique_keys(table: pa.Table) -> None:
    """Refuse two rows of ``table`` with the same (dataset, method, image_id, quality)."""
    counts = table.group_by(list(SORT_KEY)).aggregate([([], "count_all")])
    repeated = counts.filter(pc.greater(counts["count_all"], 1))
    if repeated.num_rows:
        key = tuple(repeated.slice(0, 1).select(list(SORT_KEY)).to_pylist()[0].values())
        raise ConfigError(f"two rows share (dataset, method, image_id, quality) = {key}")


def merge_tables(paths: Iterable[str | os.PathLike], partition: tuple[str, str] | None = None) -> pa.Table:
    """The rows of several files of :func:`write_rows` as one sorted table, duplicates refused;
    ``partition`` = (method, dataset): only that partition's rows."""
    tables = []
    for path in paths:
        table = read_table(path)
        if partition is not None:
            table = table.filter(pc.and_(pc.equal(table["method"], partition[0]),
                                         pc.equal(table["dataset"], partition[1])))
        tables.append(table)
    if not tables:
        return SCHEMA.empty_table()
    table = pa.concat_tables(tables).sort_by([(k, "ascending") for k in SORT_KEY]).combine_chunks()
    check_unique_keys(table)
    return table


def partition_index(paths: Iterable[str | os.PathLike]) -> dict[tuple[str, str], list[Path]]:
    """(method, dataset) -> the files of :func:`write_rows` that hold rows of it (reading only those two columns)."""
    index: dict[tuple[str, str], list[Path]] = {}
    for path in paths:
        pairs = pq.read_table(path, columns=list(PARTITION_KEYS)).group_by(list(PARTITION_KEYS)).aggregate([])
        for pair in pairs.to_pylist():
            index.setdefault((pair["method"], pair["dataset"]), []).append(Path(path))
    return dict(sorted(index.items()))


#: rows per row group when a partition is written piece by piece (:func:`merge_partitioned`)
ROW_GROUP_ROWS = 65536


def _key_range(path: Path, partition: tuple[str, str]) -> tuple[tuple, tuple] | None:
    """(first, last) (image_id, quality) of a file's rows of ``partition``, None if it has none."""
    table = pq.read_table(path, columns=list(PARTITION_KEYS) + ["image_id", "quality"])
    table = table.filter(pc.and_(pc.equal(table["method"], partition[0]), pc.equal(table["dataset"], partition[1])))
    if not table.num_rows:
        return None
    table = table.sort_by([("image_id", "ascending"), ("quality", "ascending")])
    ends = table.take([0, table.num_rows - 1]).select(["image_id", "quality"]).to_pylist()
    return tuple(ends[0].values()), tuple(ends[1].values())


def _in_order(files: list[Path], partition: tuple[str, str]) -> bool:
    """Do the files' rows of ``partition``, file after file, come in key order with no key twice?"""
    last = None
    for path in files:
        span = _key_range(path, partition)
        if span is None:
            continue
        if last is not None and not last < span[0]:
            return False
        last = span[1]
    return True


def merge_partitioned(paths: Iterable[str | os.PathLike], root: str | os.PathLike,
                      order: tuple[str, ...] = PARTITION_KEYS, split=None) -> Iterator[pa.Table]:
    """:func:`write_partitioned` of the rows of many files of :func:`write_rows`, a piece at a time.

    Partitions come in the order of the ``order`` columns; ``split(table) -> (rows, other)``, if
    given, turns each piece of sorted rows into the rows written and another table; yields that
    other table (or the rows) of each piece, in key order, once it is written. When the files
    hold each partition's rows in key order, file after file (a stage's shards of sorted images),
    a partition is written in row groups of :data:`ROW_GROUP_ROWS` as its files are read: memory
    holds one row group, so a driver merging 10,000 images' parts stays as small as one merging
    ten (reports/load.md). Otherwise the partition is merged whole and sorted. Either way the
    rows are :func:`write_partitioned`'s, and the same files give the same bytes.
    """
    root = Path(root)
    index = partition_index(paths)
    for method, dataset in sorted(index, key=lambda key: tuple(dict(zip(PARTITION_KEYS, key))[k] for k in order)):
        files, partition = index[(method, dataset)], (method, dataset)
        path = root / f"method={method}" / f"dataset={dataset}" / PART_FILE
        if not _in_order(files, partition):
            table = other = merge_tables(files, partition)
            if split is not None:
                table, other = split(table)
            _write_table(table.drop_columns(list(PARTITION_KEYS)), path)
            yield other
            continue
        yield from _write_in_pieces(files, partition, path, split)


def _write_in_pieces(files: list[Path], partition: tuple[str, str], path: Path, split) -> Iterator[pa.Table]:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pending: list[pa.Table] = []
    writer = None
    try:
        def flush() -> pa.Table:
            nonlocal writer
            table = other = pa.concat_tables(pending).combine_chunks()
            pending.clear()
            if split is not None:
                table, other = split(table)
            table = table.drop_columns(list(PARTITION_KEYS))
            if writer is None:   # the schema of what is written (split may change a column)
                writer = pq.ParquetWriter(tmp, table.schema, **_WRITE_OPTIONS)
            writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
            return other

        for file in files:
            piece = merge_tables([file], partition)
            if piece.num_rows:
                pending.append(piece)
            if sum(t.num_rows for t in pending) >= ROW_GROUP_ROWS:
                yield flush()
        if pending:
            yield flush()
        if writer is not None:
            writer.close()
            writer = None
            os.replace(tmp, path)
    finally:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)


def write_partitioned_table(table: pa.Table, root: str | os.PathLike) -> list[Path]:
    """:func:`write_partitioned` of a sorted :data:`SCHEMA` table (from :func:`merge_tables`)."""
    root = Path(root)
    written = []
    pairs = table.group_by(list(PARTITION_KEYS)).aggregate([]).to_pylist()
    keys = sorted(tuple(pair[k] for k in PARTITION_KEYS) for pair in pairs)
    for method, dataset in keys:
        mask = pc.and_(pc.equal(table["method"], method), pc.equal(table["dataset"], dataset))
        part = table.filter(mask).drop_columns(list(PARTITION_KEYS))
        path = root / f"method={method}" / f"dataset={dataset}" / PART_FILE
        _write_table(part, path)
        written.append(path)
    return written


def _partition_values(path: Path, root: Path) -> dict[str, str]:
    values = {}
    for segment in path.relative_to(root).parts[:-1]:
        key, sep, value = segment.partition("=")
        if sep and key in PARTITION_KEYS:
            values[key] = value
    return values


def read_table(root: str | os.PathLike) -> pa.Table:
    """Read a file from :func:`write_rows` or a tree from :func:`write_partitioned`, sorted."""
    root = Path(root)
    files = [root] if root.is_file() else sorted(root.glob("**/*.parquet"))
    if not files:
        raise ConfigError(f"{root}: no Parquet result files found")
    tables = []
    for path in files:
        table = pq.read_table(path)
        for key, value in _partition_values(path, root).items() if root.is_dir() else ():
            if key not in table.column_names:
                table = table.append_column(key, pa.array([value] * table.num_rows, pa.string()))
        for column, value in LATER_COLUMNS.items():  # a file written before the column existed
            if column not in table.column_names:
                table = table.append_column(column, pa.array([value] * table.num_rows, SCHEMA.field(column).type))
        missing = set(COLUMNS) - set(table.column_names)
        if missing:
            raise ConfigError(f"{path}: not a semlic result file, missing columns {sorted(missing)}")
        tables.append(table.select(list(COLUMNS)).cast(SCHEMA))
    table = pa.concat_tables(tables)
    return table.sort_by([(k, "ascending") for k in SORT_KEY])


def read_rows(root: str | os.PathLike) -> list[dict]:
    """Rows as dicts (``layer_bits`` as a dict), in the file order (sorted)."""
    rows = read_table(root).to_pylist()
    for row in rows:
        row["layer_bits"] = dict(row["layer_bits"])
    return rows


def git_revision(repo: str | os.PathLike | None = None) -> str:
    """Short git revision of ``repo`` (default: the checkout holding semlic), or "unknown"."""
    repo = Path(repo) if repo is not None else Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def params_hash(params: Mapping) -> str:
    """First 12 hex digits of the SHA-256 of ``params`` as canonical JSON (sorted keys, no spaces)."""
    try:
        text = json.dumps(params, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"parameters must be JSON data (str, numbers, lists, dicts): {exc}") from exc
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:12]
