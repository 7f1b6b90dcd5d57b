"""Prefect flows, one per DVC stage (docs/DESIGN.md section 3); run as ``python -m flows.<stage>``.

What every stage shares, one concept per module:

* :mod:`flows.params` - the params file, ``--set`` overrides, shards of work items;
* :mod:`flows.staging` - staged outputs and the content signatures that let a rerun resume;
* :mod:`flows.prefect_api` - one Prefect API per stage (its server) and the stage's session;
* :mod:`flows.ray_cluster` - connecting to Ray, the workers' environment, remote options;
* :mod:`flows.runner` - the task runner (driver side) and the Ray workers' start-up hook;
* :mod:`flows.stage` - ``python -m flows.<stage>``: the argument parser and :func:`run_stage`;
* :mod:`flows._private` - the only code that uses Prefect's, prefect-ray's or Ray's internals.
"""

from pathlib import Path

from flows import _env  # noqa: F401,E402  (before anything imports Prefect or Ray)

# The real Ray package, before prefect-ray's lazy_import("ray") puts a lazy stand-in in
# sys.modules: with that one, importing one of Ray's submodules (flows._private does, and so
# do Ray's own cluster utilities) skips Ray's __init__ and leaves Ray half imported.
import ray  # noqa: F401,E402

REPO = Path(__file__).resolve().parent.parent
"""The repository root: what the Ray workers import ``flows``, ``tasks`` and ``semlic`` from."""
