"""The repository's stages, one module each, named as in dvc.yaml (semlic.pipeline.stage)."""
