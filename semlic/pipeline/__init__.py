"""The pipeline: stages as library functions, and the local runner.

* :mod:`semlic.pipeline.stage` - the stage registry (``@stage``) and the graph, read from dvc.yaml;
* :mod:`semlic.pipeline.stages` - one module per stage of the repository;
* :mod:`semlic.pipeline.executor` - what a stage submits units of work to, and the local executor;
* :mod:`semlic.pipeline.params` - the params file, ``--set`` overrides, shards of work items;
* :mod:`semlic.pipeline.staging` - staged outputs and the signatures that let a rerun resume;
* :mod:`semlic.pipeline.local` - ``python -m semlic.pipeline``: stages run by local processes.

The Prefect + Ray runner (``python -m flows <stage>``, what dvc.yaml runs) lives in ``flows/``;
nothing here imports Prefect or Ray (an import-linter contract checks it).
"""
