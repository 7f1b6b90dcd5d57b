"""Prefect tasks: thin wrappers over the library's stage functions (docs/DESIGN.md section 3).

Each task does one unit of work (a whole stage, or a shard of image ids), calls ``semlic``,
writes files, and returns paths or small records, never arrays. Transient failures (I/O,
lost workers) are retried; a :class:`semlic.errors.SemlicError` (bad input or config) is not.
"""
