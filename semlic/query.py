"""``semlic results "SQL"``: DuckDB over the result Parquet, in place (docs/DESIGN.md section 6).

Views (each one only where its file exists):

* ``rd``: every result row (section-6 schema). Source: ``data/results/rd.parquet`` (what
  the aggregate stage writes), or ``--source`` naming another file, or a hive tree such as
  the code stage's ``data/coded/rows`` (``method=<m>/dataset=<d>/*.parquet``).
* ``bd``: BD-rate / BD-PSNR against the anchor (``bd.parquet`` beside rd.parquet).
* ``curves``: the mean RD point of each (dataset, method, quality) (``curves.parquet``).
* ``latent_seg``: the rate-mIoU rows of segmentation in the pixel and compressed domains
  (``../latent_seg/rows.parquet`` from the results folder, i.e. ``data/latent_seg``: what the
  eval_latent_seg stage writes).
* ``task``: coding for machines, the segmentation every coded file delivers at the receiver and
  the bytes it reads (``../machines/rows.parquet``: the machines stage, semlic.machines).

Examples::

    semlic results "select method, avg(bpp), avg(psnr_rgb) from rd group by method"
    semlic results "select * from bd order by bd_rate_pct" --format csv
    semlic results --source data/coded/rows "select count(*) from rd"

From Python, :func:`query` returns a pandas DataFrame; pandas alone reads the same files
(``pandas.read_parquet("data/results/rd.parquet")``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .errors import ConfigError, import_extra

#: The commands this module adds to ``semlic`` (read by semlic.cli without importing it).
COMMANDS = {
    "results": "query the result Parquet with DuckDB SQL (views rd, bd, curves, latent_seg)",
}

DEFAULT_SOURCE = Path("data/results/rd.parquet")
SIDE_VIEWS = {"bd": "bd.parquet", "curves": "curves.parquet"}
OTHER_VIEWS = {"latent_seg": Path("..") / "latent_seg" / "rows.parquet",   # relative to the results folder
               "task": Path("..") / "machines" / "rows.parquet"}
FORMATS = ("table", "csv", "json", "markdown")


def _sql_string(path: Path | str) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _scan(path: Path) -> str:
    """The DuckDB table function that reads ``path`` (a file, or a hive tree of Parquet files)."""
    if path.is_dir():
        if not any(path.rglob("*.parquet")):
            raise ConfigError(f"{path}: no Parquet files below it")
        return f"read_parquet({_sql_string(path / '**' / '*.parquet')}, hive_partitioning = true)"
    if not path.is_file():
        raise ConfigError(f"{path}: no such result file; run the pipeline (dvc repro) or give --source")
    return f"read_parquet({_sql_string(path)})"


def connect(source: str | os.PathLike = DEFAULT_SOURCE):
    """An in-memory DuckDB connection with the views of the module docstring."""
    duckdb = import_extra("duckdb", "pipeline", "semlic results")

    source = Path(source)
    con = duckdb.connect(":memory:")
    con.execute(f"create view rd as select * from {_scan(source)}")
    folder = source if source.is_dir() else source.parent
    for view, name in SIDE_VIEWS.items():
        if (folder / name).is_file() and source.name != name:
            con.execute(f"create view {view} as select * from {_scan(folder / name)}")
    for view, relative in OTHER_VIEWS.items():
        if (folder / relative).is_file():
            con.execute(f"create view {view} as select * from {_scan(folder / relative)}")
    return con


def _run(sql: str, source: str | os.PathLike, fetch):
    duckdb = import_extra("duckdb", "pipeline", "semlic results")

    con = connect(source)
    try:
        return fetch(con.execute(sql))
    except duckdb.Error as exc:
        raise ConfigError(f"DuckDB could not run the query: {exc}") from exc
    finally:
        con.close()


def query(sql: str, source: str | os.PathLike = DEFAULT_SOURCE):
    """Run ``sql`` over the views; return a pandas DataFrame."""
    return _run(sql, source, lambda result: result.df())


def query_rows(sql: str, source: str | os.PathLike = DEFAULT_SOURCE) -> tuple[list[str], list[tuple]]:
    """Run ``sql`` over the views; return (column names, rows) without pandas (what the command prints)."""
    return _run(sql, source, lambda result: ([d[0] for d in result.description], result.fetchall()))


def _cell(value, fmt: str):
    """A value as the output format writes it: NaN and NULL empty in CSV, null in JSON, as they are
    in a table."""
    import math

    if value is None or (isinstance(value, float) and math.isnan(value)):
        return {"json": None, "csv": ""}.get(fmt, "NULL" if value is None else "NaN")
    if fmt == "json":
        return value if isinstance(value, (int, float, str, bool, list, dict)) else str(value)
    if isinstance(value, float) and fmt == "table":
        return f"{value:.6g}"
    return str(value)


def format_rows(columns: list[str], rows: list[tuple], fmt: str = "table") -> str:
    """``rows`` under ``columns`` as a text table (right-aligned, as pandas prints one), CSV, JSON
    records or a Markdown table."""
    if fmt == "json":
        import json

        return json.dumps([dict(zip(columns, (_cell(v, fmt) for v in row))) for row in rows], indent=2) + "\n"
    cells = [[_cell(v, fmt) for v in row] for row in rows]
    if fmt == "csv":
        import csv
        import io

        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(cells)
        return out.getvalue()
    if fmt == "markdown":
        header = "| " + " | ".join(map(str, columns)) + " |"
        rule = "|" + "|".join("---" for _ in columns) + "|"
        return "\n".join([header, rule, *("| " + " | ".join(row) + " |" for row in cells)]) + "\n"
    widths = [max([len(str(c)), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    lines = [" ".join(str(c).rjust(w) for c, w in zip(columns, widths))]
    lines += [" ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines) + "\n"


def _cli(args: argparse.Namespace) -> int:
    columns, rows = query_rows(args.sql, args.source)   # without pandas: the command answers in a fraction of a second
    sys.stdout.write(format_rows(columns, rows, args.format))
    return 0


def register_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "results", help=COMMANDS["results"],
        description="Run a DuckDB SQL query over the results. View rd: every result row; bd: BD-rate/BD-PSNR "
                    "against the anchor; curves: mean RD points. Example: semlic results "
                    "\"select method, avg(bpp), avg(psnr_rgb) from rd group by method\"",
    )
    parser.add_argument("sql", help="the query (DuckDB SQL)")
    parser.add_argument("--source", default=str(DEFAULT_SOURCE),
                        help=f"rd.parquet, another result file, or a hive tree of them (default: {DEFAULT_SOURCE})")
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    parser.set_defaults(func=_cli)
