"""Every stage's Prefect flow, by stage name: ``flows.pipeline.<stage>`` (prefect.yaml's entrypoints).

The flows are made from the stage registry (:func:`flows.stage.stage_flow`), so a new stage in
``semlic/pipeline/stages`` has its flow here without code of its own. :func:`deployments` is
prefect.yaml's ``deployments`` list, derived from dvc.yaml's stages (a test checks the file).
"""

from __future__ import annotations

from flows.stage import stage_flow
from semlic.pipeline.stage import dvc_stages, get_stage, stage_modules

for _name in stage_modules():
    globals()[_name] = stage_flow(_name)


def deployments() -> list[dict]:
    """One deployment per dvc.yaml stage, in its order: ``<stage>/default`` on the process work pool."""
    return [{"name": "default", "entrypoint": f"flows.pipeline.{name}", "description": get_stage(name).description,
             "parameters": {}} for name in dvc_stages()]
