"""Any framework's config file in, a `RunConfig` out: detect the framework, read it, list what was ignored."""

from __future__ import annotations

from pathlib import Path

from planner.configs import axolotl, hf, llamafactory
from planner.configs.common import (
    Format,
    Framework,
    Keys,
    RunConfig,
    Treatment,
    load_config_file,
    unknown_keys,
    warning,
)
from planner.errors import FtplanError

# In detection order: axolotl's base_model is unambiguous, and hf has no keys of its own.
FRAMEWORKS: dict[str, Framework] = {f.name: f for f in (axolotl.FRAMEWORK, llamafactory.FRAMEWORK, hf.FRAMEWORK)}

# Files that sit beside training configs but launch nothing themselves: the keys that give them away.
NOT_TRAINING = (
    (frozenset({"compute_environment", "distributed_type"}),
     "an accelerate launcher config (accelerate launch --config_file); pass the training config it launches"),
    (frozenset({"zero_optimization", "train_micro_batch_size_per_gpu", "train_batch_size"}),
     "a DeepSpeed config; pass the training config whose 'deepspeed' key points at it"),
    # axolotl/cli/cloud: the Modal or Baseten machine a training config runs on
    (frozenset({"gpu_count", "dockerfile_commands", "memory_preprocess", "timeout_preprocess", "node_count"}),
     "an axolotl cloud config (axolotl train CONFIG --cloud CLOUD_CONFIG); pass the training config it runs"),
)


def detect_format(config: dict) -> Format:
    return next((f.name for f in FRAMEWORKS.values() if config.keys() & f.signature), "hf")


def read_run_config(path: str | Path, fmt: Format | None = None, stage: str | None = None) -> RunConfig:
    """`stage` (a plan stage, e.g. from `--stage`) names the training stage where the command rather than the
    file does (TRL's `trl dpo`, LLaMA-Factory v1's `llamafactory-cli dpo`) and overrides the file's otherwise."""
    from planner.plan import STAGES

    if stage is not None and stage not in STAGES:
        raise FtplanError(f"must be one of {', '.join(STAGES)}, got {stage!r}", field="stage")
    path = Path(path)
    config = load_config_file(path)
    if fmt is None:
        if config and all(isinstance(key, str) and key.startswith("<") and key.endswith(">") for key in config):
            raise FtplanError(f"{path}: not a training config: it maps special tokens to descriptions (LLaMA-Factory's "
                              "new_special_tokens_config); pass the training config that names it")
        for marks, what in NOT_TRAINING:
            found = sorted(config.keys() & marks)
            if found and not config.keys() & {"model_name_or_path", "base_model", "model"}:
                raise FtplanError(f"{path}: not a training config: key '{found[0]}' marks {what}")
    framework = FRAMEWORKS[fmt or detect_format(config)]
    keys = Keys(config, str(path))
    run = framework.read(keys, path.parent, stage=stage)
    if not run.model:
        raise FtplanError(f"{path}: no model: set '{framework.model_key}'")
    ignored = unknown_keys(config, keys.used, framework.recognised, framework.known)
    warned = {key for w in run.warnings for key in w.data.get("keys", ())}
    # A key the framework accepts that the reader neither read, recognised nor warned about: never silent.
    silent = [key for key in config if key in framework.known and key not in keys.used | framework.recognised | warned
              and config[key] is not None]
    warnings = run.warnings + [warning(
        "not_modelled", key, f"key '{key}' is a {framework.display} setting that ftplan does not model; the "
        "estimate may be off either way", "unknown") for key in silent]
    return run.model_copy(update={"ignored": ignored, "warnings": warnings,
                                  "treatment": treatment(config, keys.used, framework.recognised, warned | set(silent),
                                                         ignored)})


def treatment(config: dict, used: set[str], recognised: frozenset[str], warned: set[str],
              ignored: list[str]) -> dict[str, Treatment]:
    """How each top-level key was read: a warning about it first, then read into the plan, then recognised as
    changing nothing that is planned; else unknown. Keys the framework accepts but no plan reads and that are
    null count as irrelevant (null is the default)."""
    unknown = {entry.split(" ")[0] for entry in ignored}
    out: dict[str, Treatment] = {}
    for key in config:
        key = str(key)
        out[key] = ("warned" if key in warned else "modelled" if key in used else
                    "irrelevant" if key in recognised or key not in unknown else "unknown")
    return out
