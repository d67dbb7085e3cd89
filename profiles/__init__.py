"""Data, not code: model presets (models/*.json, models/index.yaml) and the GPU catalog (gpus.yaml)."""
