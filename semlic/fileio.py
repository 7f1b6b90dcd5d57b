"""Writing files so that a reader never sees half of one: the one atomic write, and Parquet.

:func:`atomic_write_bytes` writes to a temporary file beside the target (same file system),
flushes it to disk and renames it over the target; a process killed at any moment leaves
either the old file or the new one. :func:`write_parquet` turns a DataFrame or an Arrow table
into Parquet bytes with fixed writer options (the same data gives the same bytes: DVC hashes
stay stable) and writes them with it.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import pyarrow as pa

PARQUET_OPTIONS = dict(compression="zstd", compression_level=3, use_dictionary=True, write_statistics=True,
                       data_page_version="1.0", version="2.6")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename: never half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def parquet_bytes(data: "pd.DataFrame | pa.Table", schema: "pa.Schema | None" = None) -> bytes:
    """Parquet bytes of a DataFrame (its index dropped) or a table, without pandas metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = data if isinstance(data, pa.Table) else pa.Table.from_pandas(data, schema=schema, preserve_index=False)
    buffer = io.BytesIO()
    pq.write_table(table.replace_schema_metadata(None), buffer, **PARQUET_OPTIONS)
    return buffer.getvalue()


def write_parquet(data: "pd.DataFrame | pa.Table", path: str | os.PathLike, schema: "pa.Schema | None" = None) -> Path:
    """Write a DataFrame or table as Parquet, atomically, the same data giving the same bytes."""
    return atomic_write_bytes(path, parquet_bytes(data, schema))


def canonical_safetensors(blob: bytes) -> bytes:
    """The same safetensors file with its JSON header's keys sorted: the same weights give the same bytes
    (safetensors writes the metadata in hash order, which changes from one process to the next)."""
    length = int.from_bytes(blob[:8], "little")
    header = json.dumps(json.loads(blob[8: 8 + length]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header + blob[8 + length:]
