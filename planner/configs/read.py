"""Any framework's config file in, a `RunConfig` out: detect the framework, read it, list what was ignored."""

from __future__ import annotations

from pathlib import Path

from planner.configs import axolotl, hf, llamafactory
from planner.configs.common import Format, Framework, Keys, RunConfig, load_config_file, unknown_keys
from planner.errors import FtplanError

# In detection order: axolotl's base_model is unambiguous, and hf has no keys of its own.
FRAMEWORKS: dict[str, Framework] = {f.name: f for f in (axolotl.FRAMEWORK, llamafactory.FRAMEWORK, hf.FRAMEWORK)}


def detect_format(config: dict) -> Format:
    return next((f.name for f in FRAMEWORKS.values() if config.keys() & f.signature), "hf")


def read_run_config(path: str | Path, fmt: Format | None = None) -> RunConfig:
    path = Path(path)
    config = load_config_file(path)
    framework = FRAMEWORKS[fmt or detect_format(config)]
    keys = Keys(config, str(path))
    run = framework.read(keys, path.parent)
    if not run.model:
        raise FtplanError(f"{path}: no model: set '{framework.model_key}'")
    return run.model_copy(update={"ignored": unknown_keys(config, keys.used, framework.recognised)})
