"""The Prefect + Ray runner of the pipeline's stages (docs/DESIGN.md section 3): ``python -m flows <stage>``.

The stages are library functions (:mod:`semlic.pipeline`); this package runs them as Prefect flows
whose units of work are Prefect tasks on Ray, one concept per module:

* :mod:`flows.stage` - ``python -m flows <stage>``: a stage bound to Prefect and Ray (:func:`~flows.stage.stage_flow`);
* :mod:`flows.pipeline` - every stage's flow by name (prefect.yaml's entrypoints) and the deployments;
* :mod:`flows.session` - ``python -m flows.session dvc repro`` (``make repro``): one Prefect server and one Ray for all stages;
* :mod:`flows.executor` - the executor a stage is given: its units as Prefect tasks on Ray;
* :mod:`flows.prefect_api` - one Prefect API per stage (its server) and the stage's session;
* :mod:`flows.ray_cluster` - connecting to Ray, the workers' environment, remote options;
* :mod:`flows.runner` - the task runner (driver side) and the Ray workers' start-up hook;
* :mod:`flows._private` - the only code that uses Prefect's, prefect-ray's or Ray's internals.
"""

from pathlib import Path

from flows import _env  # noqa: F401,E402  (before anything imports Prefect or Ray)

# The real Ray package, before prefect-ray's lazy_import("ray") puts a lazy stand-in in
# sys.modules: with that one, importing one of Ray's submodules (flows._private does, and so
# do Ray's own cluster utilities) skips Ray's __init__ and leaves Ray half imported.
import ray  # noqa: F401,E402

REPO = Path(__file__).resolve().parent.parent
"""The repository root: what the Ray workers import ``flows`` and ``semlic`` from."""
