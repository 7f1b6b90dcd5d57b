"""Prefect flows, one per DVC stage (DESIGN.md section 3); run as ``python -m flows.<stage>``.

Shared wiring (params, shards, staged outputs, the Prefect API, Ray) is in :mod:`flows.runtime`.
"""

from flows import _env  # noqa: F401,E402  (before anything imports Prefect or Ray)
