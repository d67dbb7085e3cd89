"""What the framework readers share: the file, typed key access, DeepSpeed, data files and the result types.

A framework's own key names, defaults and tables live in its module (`llamafactory`, `hf`, `axolotl`),
which describes itself with a `Framework`.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

from pydantic import BaseModel

from planner.errors import FtplanError, shown
from planner.findings import Finding
from planner.plan import Plan

Format = Literal["llamafactory", "hf", "axolotl"]

# Which way a setting ftplan does not model moves the real run's memory from the estimate.
Direction = Literal["overstates", "understates", "unknown"]
# How a reader treated each key of a config (RunConfig.treatment).
Treatment = Literal["modelled", "warned", "irrelevant", "unknown"]

# The fields of Hugging Face `Seq2SeqTrainingArguments` (with `TrainingArguments`'), which LLaMA-Factory and TRL
# pass through to the Trainer: the union over transformers 4.57.6 and 5.8.0 (LLaMA-Factory's supported range,
# pyproject.toml: transformers>=4.55.0,<=5.8.0), generated once with
#   {f.name for f in dataclasses.fields(Seq2SeqTrainingArguments) if f.init}
# in each version. Static so that reading a config never imports transformers.
TRAINING_ARGUMENTS = frozenset({
    "accelerator_config", "adafactor", "adam_beta1", "adam_beta2", "adam_epsilon", "auto_find_batch_size",
    "average_tokens_across_devices", "batch_eval_metrics", "bf16", "bf16_full_eval", "data_seed",
    "dataloader_drop_last", "dataloader_num_workers", "dataloader_persistent_workers", "dataloader_pin_memory",
    "dataloader_prefetch_factor", "ddp_backend", "ddp_broadcast_buffers", "ddp_bucket_cap_mb",
    "ddp_find_unused_parameters", "ddp_static_graph", "ddp_timeout", "debug", "deepspeed", "disable_tqdm",
    "do_eval", "do_predict", "do_train", "enable_jit_checkpoint", "eval_accumulation_steps", "eval_delay",
    "eval_do_concat_batches", "eval_on_start", "eval_steps", "eval_strategy", "eval_use_gather_object", "fp16",
    "fp16_backend", "fp16_full_eval", "fp16_opt_level", "fsdp", "fsdp_config", "fsdp_min_num_params",
    "fsdp_transformer_layer_cls_to_wrap", "full_determinism", "generation_config", "generation_max_length",
    "generation_num_beams", "gradient_accumulation_steps", "gradient_checkpointing",
    "gradient_checkpointing_kwargs", "greater_is_better", "group_by_length", "half_precision_backend",
    "hub_always_push", "hub_model_id", "hub_private_repo", "hub_revision", "hub_strategy", "hub_token",
    "ignore_data_skip", "include_for_metrics", "include_inputs_for_metrics", "include_num_input_tokens_seen",
    "include_tokens_per_second", "jit_mode_eval", "label_names", "label_smoothing_factor", "learning_rate",
    "length_column_name", "liger_kernel_config", "load_best_model_at_end", "local_rank", "log_level",
    "log_level_replica", "log_on_each_node", "logging_dir", "logging_first_step", "logging_nan_inf_filter",
    "logging_steps", "logging_strategy", "lr_scheduler_kwargs", "lr_scheduler_type", "max_grad_norm", "max_steps",
    "metric_for_best_model", "mp_parameters", "neftune_noise_alpha", "no_cuda", "num_train_epochs", "optim",
    "optim_args", "optim_target_modules", "output_dir", "overwrite_output_dir", "parallelism_config", "past_index",
    "per_device_eval_batch_size", "per_device_train_batch_size", "per_gpu_eval_batch_size",
    "per_gpu_train_batch_size", "predict_with_generate", "prediction_loss_only", "project", "push_to_hub",
    "push_to_hub_model_id", "push_to_hub_organization", "push_to_hub_token", "ray_scope", "remove_unused_columns",
    "report_to", "restore_callback_states_from_checkpoint", "resume_from_checkpoint", "run_name",
    "save_on_each_node", "save_only_model", "save_safetensors", "save_steps", "save_strategy", "save_total_limit",
    "seed", "skip_memory_metrics", "sortish_sampler", "tf32", "torch_compile", "torch_compile_backend",
    "torch_compile_mode", "torch_empty_cache_steps", "torchdynamo", "tpu_metrics_debug", "tpu_num_cores",
    "trackio_bucket_id", "trackio_space_id", "trackio_static_space_id", "train_sampling_strategy", "use_cache",
    "use_cpu", "use_legacy_prediction_loop", "use_liger_kernel", "use_mps_device", "warmup_ratio", "warmup_steps",
    "weight_decay",
})

# TrainingArguments that change neither memory, stability nor time of the training steps: logging, saving,
# evaluation, the hub, data loading, seeds and launch plumbing. Every framework that passes TrainingArguments
# through may recognise these.
TRAINING_ARGUMENTS_IRRELEVANT = frozenset({
    "accelerator_config", "adam_beta1", "adam_beta2", "adam_epsilon", "average_tokens_across_devices",
    "batch_eval_metrics", "bf16_full_eval", "data_seed", "dataloader_drop_last", "dataloader_num_workers",
    "dataloader_persistent_workers", "dataloader_pin_memory", "dataloader_prefetch_factor", "ddp_backend",
    "ddp_broadcast_buffers", "ddp_bucket_cap_mb", "ddp_find_unused_parameters", "ddp_static_graph", "ddp_timeout",
    "debug", "disable_tqdm", "enable_jit_checkpoint", "eval_accumulation_steps", "eval_delay",
    "eval_do_concat_batches", "eval_on_start", "eval_steps", "eval_strategy", "eval_use_gather_object",
    "fp16_backend", "fp16_full_eval", "fp16_opt_level", "fsdp_min_num_params", "fsdp_transformer_layer_cls_to_wrap",
    "full_determinism", "generation_config", "generation_max_length", "generation_num_beams",
    "gradient_checkpointing_kwargs", "greater_is_better", "group_by_length", "half_precision_backend",
    "hub_always_push", "hub_model_id", "hub_private_repo", "hub_revision", "hub_strategy", "hub_token",
    "ignore_data_skip", "include_for_metrics", "include_inputs_for_metrics", "include_num_input_tokens_seen",
    "include_tokens_per_second", "jit_mode_eval", "label_names", "length_column_name", "load_best_model_at_end",
    "local_rank", "log_level", "log_level_replica", "log_on_each_node", "logging_dir", "logging_first_step",
    "logging_nan_inf_filter", "logging_steps", "logging_strategy", "lr_scheduler_kwargs", "metric_for_best_model",
    "mp_parameters", "neftune_noise_alpha", "optim_args", "output_dir", "overwrite_output_dir", "past_index",
    "per_device_eval_batch_size", "per_gpu_eval_batch_size", "predict_with_generate", "prediction_loss_only",
    "project", "push_to_hub", "push_to_hub_model_id", "push_to_hub_organization", "push_to_hub_token", "ray_scope",
    "remove_unused_columns", "report_to", "restore_callback_states_from_checkpoint", "resume_from_checkpoint",
    "run_name", "save_on_each_node", "save_only_model", "save_safetensors", "save_steps", "save_strategy",
    "save_total_limit", "seed", "skip_memory_metrics", "sortish_sampler", "tf32", "torch_empty_cache_steps",
    "tpu_metrics_debug", "tpu_num_cores", "trackio_bucket_id", "trackio_space_id", "trackio_static_space_id",
    "train_sampling_strategy", "use_legacy_prediction_loop", "weight_decay",
})

# The `optim` names of Hugging Face TrainingArguments, which all three frameworks pass through to it
# (transformers/training_args.py `OptimizerNames`, built in trainer_optimizer.py).
OPTIM = {
    "adamw_torch": "adamw", "adamw_hf": "adamw", "adamw": "adamw", "adamw_torch_fused": "adamw-fused",
    "adamw_bnb_8bit": "adamw-8bit", "adamw_8bit": "adamw-8bit", "bnb_8bit": "adamw-8bit",
    "paged_adamw_8bit": "paged-adamw-8bit", "paged_adamw_32bit": "paged-adamw", "adafactor": "adafactor",
    "sgd": "sgd", "adamw_torch_8bit": "adamw-torch-8bit", "adamw_torch_4bit": "adamw-torch-4bit",
    "lion_32bit": "lion", "paged_lion_32bit": "paged-lion", "lion_8bit": "lion-8bit",
    "paged_lion_8bit": "paged-lion-8bit", "galore_adamw": "galore-adamw", "galore_adamw_8bit": "galore-adamw-8bit",
    "galore_adafactor": "galore-adafactor", "apollo_adamw": "apollo-adamw", "lomo": "lomo", "adalomo": "adalomo",
}
# `_setup_low_rank_optimizer`: a name ending in _layerwise gives each parameter its own optimizer, stepped in a
# post-accumulate-grad hook (the planner's optimizer_in_backward)
OPTIM_LAYERWISE = {"galore_adamw_layerwise": "galore-adamw", "galore_adamw_8bit_layerwise": "galore-adamw-8bit",
                   "galore_adafactor_layerwise": "galore-adafactor", "apollo_adamw_layerwise": "apollo-adamw"}
OPTIM_BACK = {"adamw": "adamw_torch", "adamw-fused": "adamw_torch_fused", "adamw-8bit": "adamw_bnb_8bit",
              "paged-adamw-8bit": "paged_adamw_8bit", "adafactor": "adafactor", "sgd": "sgd",
              "sgd-momentum": "sgd", **{v: k for k, v in OPTIM.items() if v not in (
                  "adamw", "adamw-fused", "adamw-8bit", "paged-adamw-8bit", "adafactor", "sgd")}}
# transformers' `_get_galore_optimizer` / `_get_apollo_optimizer` defaults for the optim_args keys
LOW_RANK_ARGS = {"rank": ("projection_rank", 128), "update_proj_gap": ("projection_update_interval", 200)}

# Other TrainingArguments `optim` names (transformers' OptimizerNames), each planned as the nearest optimizer the
# planner models: (planner optimizer, which way the estimate is off, why). Direction None: the same state bytes.
OPTIM_NEAREST: dict[str, tuple[str, Direction | None, str]] = {
    "adamw_torch_npu_fused": ("adamw-fused", None, ""),
    "adamw_torch_xla": ("adamw", None, ""),
    "adamw_anyprecision": ("adamw", "unknown", "its state dtypes are configurable"),
    "stable_adamw": ("adamw", None, ""),
    "grokadamw": ("adamw", "understates", "it keeps a gradient EMA besides Adam's two moments"),
    "ademamix": ("adamw", "understates", "AdEMAMix keeps a third state (a slow EMA)"),
    "paged_ademamix_32bit": ("adamw", "understates", "AdEMAMix keeps a third state (a slow EMA)"),
    "ademamix_8bit": ("adamw-8bit", "understates", "AdEMAMix keeps a third state (a slow EMA)"),
    "paged_ademamix_8bit": ("adamw-8bit", "understates", "AdEMAMix keeps a third state (a slow EMA)"),
    "rmsprop": ("sgd-momentum", None, "RMSprop keeps one fp32 state"),
    "rmsprop_bnb_32bit": ("sgd-momentum", None, "RMSprop keeps one fp32 state"),
    "rmsprop_bnb": ("adamw-8bit", "overstates", "8-bit RMSprop keeps one 8-bit state, not two"),
    "rmsprop_bnb_8bit": ("adamw-8bit", "overstates", "8-bit RMSprop keeps one 8-bit state, not two"),
    "adagrad": ("sgd-momentum", None, "Adagrad keeps one fp32 state"),
    "schedule_free_adamw": ("adamw", None, "schedule-free AdamW keeps two states"),
    "schedule_free_radam": ("adamw", None, "schedule-free RAdam keeps two states"),
    "schedule_free_sgd": ("sgd-momentum", None, "schedule-free SGD keeps one state"),
}


def optimizer_settings(name: str, key: str = "optim", optim_args: str | dict | None = None, args_key: str = "optim_args",
                       where: str = "config") -> tuple[dict, Finding | None]:
    """A TrainingArguments `optim` name (and, for GaLore/APOLLO, its `optim_args` string) as Plan fields;
    `where` (the file) prefixes an error."""
    if name in OPTIM_LAYERWISE:
        fields: dict = {"optimizer": OPTIM_LAYERWISE[name], "optimizer_in_backward": True}
        found = None
    else:
        optimizer, found = optimizer_for(name, key)
        fields = {"optimizer": optimizer}
    if fields["optimizer"].startswith(("galore", "apollo")):
        given = _optim_args(optim_args, f"{where}: key '{args_key}'")
        for arg, (field, default) in LOW_RANK_ARGS.items():
            value = given.get(arg, str(default))
            if not value.isdigit() or int(value) < 1:
                raise FtplanError(f"{where}: key '{args_key}': {arg}={value} must be a whole number of at least 1, "
                                  f"e.g. {arg}={default}")
            fields[field] = int(value)
    return fields, found


def _optim_args(text: str | dict | None, key: str) -> dict[str, str]:
    """transformers' `_parse_optim_args`: comma-separated key=value pairs, spaces ignored (axolotl also takes a
    mapping)."""
    if isinstance(text, dict):
        return {str(a): str(v) for a, v in text.items()}
    out: dict[str, str] = {}
    for pair in (text or "").replace(" ", "").split(","):
        if not pair:
            continue
        if pair.count("=") != 1:
            raise FtplanError(f"{key}: {pair!r} is not key=value; write e.g. rank=128,update_proj_gap=200")
        arg, value = pair.split("=")
        out[arg] = value
    return out


def optimizer_for(name: str, key: str = "optim") -> tuple[str, Finding | None]:
    """A TrainingArguments `optim` name as the planner's optimizer, with a warning where it is only the
    nearest one the planner models."""
    if name in OPTIM:
        return OPTIM[name], None
    nearest, direction, why = OPTIM_NEAREST.get(name, ("adamw", "unknown", "ftplan does not know this optimizer"))
    if direction is None:
        return nearest, None
    verb = {"overstates": "so this plan overstates memory", "understates": "so this plan understates memory",
            "unknown": "so the estimate may be off either way"}[direction]
    return nearest, warning("optimizer_nearest", key, f"{key} {name} is planned as {nearest}: {why}, {verb}",
                            direction)


class Hyper(BaseModel):
    """The optimisation settings that decide stability, in the framework-neutral form."""

    learning_rate: float | None = None
    epochs: float = 3.0
    max_steps: int | None = None
    lr_scheduler: str = "linear"
    warmup_ratio: float = 0.0
    warmup_steps: int = 0
    max_grad_norm: float | None = 1.0
    lora_alpha: float | None = None
    use_rslora: bool = False
    fp16: bool = False
    bf16: bool = False
    # a preference loss's beta (DPO's temperature; ORPO's lambda, which TRL and LLaMA-Factory also call beta), as
    # the config sets it; None: the trainer's default. Only diagnose uses it.
    beta: float | None = None


class DataInfo(BaseModel):
    datasets: list[str] = []
    dataset_dir: str | None = None
    files: list[str] = []  # resolved data files, when found
    max_samples: int | None = None
    val_size: float = 0.0  # a share (< 1) or, as LLaMA-Factory allows, a number of examples (>= 1)
    samples: int | None = None  # examples, when known (counted, or capped by max_samples)

    @property
    def train_samples(self) -> int | None:
        if self.samples is None:
            return None
        held_out = self.val_size if self.val_size >= 1 else self.samples * self.val_size
        return max(0, int(self.samples - held_out))


class RunConfig(BaseModel):
    path: str
    format: Format
    model: str
    plan: Plan
    hyper: Hyper
    data: DataInfo
    gpus: int | None = None  # processes the config itself asks for (DeepSpeed/accelerate), if it says
    dialect: str = ""  # a second key set of the same framework that --fix must write in ("v1": LLaMA-Factory v1)
    ignored: list[str] = []  # unknown keys, each with a "did you mean" where one is close
    notes: list[str] = []  # facts about how the config was read (info)
    # Settings the framework applies that the plan does not model: severity "warning", data["keys"] the config
    # keys concerned and data["direction"] which way the estimate is off (`warning`). They make a verdict
    # conditional.
    warnings: list[Finding] = []
    treatment: dict[str, Treatment] = {}  # each top-level key of the file: how it was read (set by read_run_config)
    # The framework's key for each planner setting, for messages and --fix. Set by `read_run_config` (the
    # framework modules build RunConfigs, so this module cannot look their tables up); a property of the
    # format rather than of this run, hence not dumped.


@dataclass(frozen=True)
class Framework:
    """One framework: its reader and the tables that map its keys to planner settings."""

    name: Format
    read: Callable[..., RunConfig]  # (keys, base folder, stage=None: the plan stage --stage asks for)
    model_key: str
    signature: frozenset[str]  # keys only this framework writes (format detection)
    recognised: frozenset[str]  # keys it accepts that change neither memory, stability nor time
    unwritable: frozenset[str]  # settings with a key that `--fix` cannot write as a plain value (e.g. a file)
    method_keys: Callable[[str], dict[str, Any]]  # a change of method, as keys and values
    # where a key's value differs from the planner's; a dict return sets several keys
    fix_values: dict[str, Callable[[Any], Any]] = field(default_factory=dict)
    default_lora_alpha: Callable[[int], float] | None = None  # of the LoRA rank, when lora_alpha is unset
    # Every key the framework itself accepts (its real argument list). Empty: unknown means neither read nor
    # recognised. A known key that the reader neither reads, recognises nor warns about gets a "not modelled"
    # warning, so no accepted key is dropped silently.
    known: frozenset[str] = frozenset()
    title: str = ""  # the framework's name in messages ("LLaMA-Factory"); `name` when empty
    rejects_unknown: bool = False  # the framework itself stops on a key it does not know (HfArgumentParser)

    @property
    def display(self) -> str:
        return self.title or self.name

    @property
    def writable(self) -> frozenset[str]:
        """The settings `--fix` and exports can write: every field with a key here (planner.fields)."""
        from planner import fields

        return frozenset(s.name for s in fields.FIELDS if self.name in s.keys) - self.unwritable


def warning(code: str, keys: str | Iterable[str], message: str, direction: Direction) -> Finding:
    """A setting the plan does not model, on the config keys that ask for it. `message` says what the
    framework does and which way the estimate is off (it overstates or understates the run's memory)."""
    keys = [keys] if isinstance(keys, str) else list(keys)
    return Finding(severity="warning", code=code, message=message, data={"keys": keys, "direction": direction})


# ---------------------------------------------------------------- reading


def load_config_file(path: str | Path) -> dict:
    from planner.bounded import parse_json, parse_yaml, read_text  # size, aliases and depth bounded

    path = Path(path)
    text = read_text(path)
    data = parse_json(text, path) if path.suffix.lower() == ".json" else parse_yaml(text, path)
    if not isinstance(data, dict):
        raise FtplanError(f"{path}: expected a mapping of settings (key: value), got {type(data).__name__}")
    return data


class Keys:
    """Typed access to a config's keys; records which keys were used."""

    def __init__(self, config: dict, path: str):
        self.config, self.path, self.used = config, path, set()

    def get(self, key: str, kind: type | tuple, default: Any = None):
        self.used.add(key)
        if key not in self.config or self.config[key] is None:
            return default
        value = self.config[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if kind is float and isinstance(value, str):  # YAML 1.1 reads 1e-4 as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if kind is bool and isinstance(value, str) and value.lower() in ("true", "false"):
            value = value.lower() == "true"
        if not isinstance(value, kind) or (kind in (int, float) and isinstance(value, bool)):
            names = {int: "a whole number", float: "a number", bool: "true or false", str: "text", list: "a list",
                     dict: "a mapping"}
            want = " or ".join(names.get(k, k.__name__) for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise FtplanError(f"{self.path}: key '{key}' must be {want}, got {shown(value)}")
        if isinstance(value, float) and not math.isfinite(value):  # YAML's .inf / .nan: no setting takes them
            raise FtplanError(f"{self.path}: key '{key}' must be a finite number, got {value}")
        return value

    def number(self, key: str, default: float | None, *, above: float | None = None,
               at_least: float | None = None) -> float | None:
        """A finite number within its range (a negative learning rate would plan and then train nothing sane)."""
        value = self.get(key, float, default)
        if value is None:
            return None
        if not math.isfinite(value):
            raise FtplanError(f"{self.path}: key '{key}' must be a finite number, got {value}")
        if above is not None and value <= above:
            raise FtplanError(f"{self.path}: key '{key}' must be above {above:g}, got {value:g}")
        if at_least is not None and value < at_least:
            raise FtplanError(f"{self.path}: key '{key}' must be at least {at_least:g}, got {value:g}")
        return value

    def positive(self, key: str, default: int) -> int:
        value = self.get(key, int, default)
        if value < 1:
            raise FtplanError(f"{self.path}: key '{key}' must be at least 1, got {value}")
        return value

    def joined(self, key: str, default: str) -> str:
        """A list of names, written as a list or comma-separated, as one comma-separated string."""
        value = self.get(key, (str, list), default)
        if isinstance(value, list) and not all(isinstance(item, str) for item in value):
            raise FtplanError(f"{self.path}: key '{key}' must list names (text), got {shown(value)}")
        return ",".join(value) if isinstance(value, list) else value


@dataclass(frozen=True)
class DeepSpeed:
    """What a DeepSpeed config decides for memory."""

    stage: int = 0
    offload_optimizer: bool = False
    offload_param: bool = False  # ZeRO-3 parameter offload (not modelled: a reader warns)
    note: str | None = None
    train_batch_size: int | None = None  # a number, not "auto": it fixes the process count (`processes`)

    def processes(self, micro: int, accum: int) -> int | None:
        """The GPU count a numeric train_batch_size implies: the HF Trainer refuses to start unless it equals
        micro-batch x accumulation x processes (integrations/deepspeed.py, fill_match on train_batch_size)."""
        per_process = micro * accum
        if not self.train_batch_size or self.train_batch_size % per_process:
            return None
        return self.train_batch_size // per_process


def deepspeed_config(spec: str | dict | None, keys: Keys, base: Path, key: str = "deepspeed") -> DeepSpeed:
    """ZeRO stage and offloads from a DeepSpeed JSON, given as a path (relative to the working directory or the
    config's folder) or inline; `key` is the config key that holds it, for messages."""
    if spec is None:
        return DeepSpeed()
    where = f"key '{key}'"
    if isinstance(spec, str):
        file = resolve_path(spec, base)
        if not file.is_file():
            raise FtplanError(f"{keys.path}: key '{key}' points at {spec}, which does not exist (looked in "
                              f"the working directory and beside the config)")
        where = str(file)
        try:
            spec = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise FtplanError(f"{file}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    zero = spec.get("zero_optimization") if isinstance(spec, dict) else None
    if zero is None:
        zero = {}
    if not isinstance(spec, dict) or not isinstance(zero, dict):
        raise FtplanError(f"{keys.path}: {where} must be a DeepSpeed config object with a zero_optimization "
                          "mapping")
    stage = zero.get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise FtplanError(f"{keys.path}: DeepSpeed zero_optimization.stage must be 0-3, got {stage!r}")

    def offloaded(name: str) -> bool:
        part = zero.get(name)
        if part is not None and not isinstance(part, dict):  # DeepSpeed's config model refuses it too
            raise FtplanError(f"{keys.path}: DeepSpeed zero_optimization.{name} must be a mapping such as "
                              f"{{device: cpu}}, got {shown(part)}")
        return isinstance(part, dict) and part.get("device") in ("cpu", "nvme")

    offload, param = offloaded("offload_optimizer"), offloaded("offload_param") and stage == 3
    note = f"DeepSpeed ZeRO-{stage}" + (" with optimizer offload" if offload else "") + (
        " and parameter offload" if param else "")
    total = spec.get("train_batch_size")
    return DeepSpeed(stage=stage, offload_optimizer=offload and stage > 0, offload_param=param, note=note,
                     train_batch_size=total if isinstance(total, int) and not isinstance(total, bool) else None)


@dataclass(frozen=True)
class Parallelism:
    """accelerate's ParallelismConfig (TrainingArguments' `parallelism_config`), as plan fields."""

    fields: dict  # tensor_parallel / context_parallel and the GPUs they span, for the Plan
    replicated: int = 1  # dp_replicate_size: HSDP shards within groups of dp_shard x cp only


def read_parallelism(keys: Keys, key: str = "parallelism_config") -> Parallelism:
    """accelerate/parallelism_config.py: total_size = dp_replicate x dp_shard x tp x cp x sp; FSDP2 shards over
    the flattened `dp_shard_cp` mesh; tp_size is DTensor tensor parallel; cp_size torch's context parallel (ring
    attention) and sp_size DeepSpeed's Ulysses sequence parallel, both splitting each sequence."""
    config = keys.get(key, (dict, str))
    if not isinstance(config, dict) or not config:  # a JSON string is parsed by accelerate only at launch
        return Parallelism(fields={})
    sizes = {}
    for name in ("dp_replicate_size", "dp_shard_size", "tp_size", "cp_size", "sp_size"):
        value = config.get(name, 1)
        value = 1 if value is None else value
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise FtplanError(f"{keys.path}: key '{key}' {name} must be a whole number at least 1, got "
                              f"{shown(value)}")
        sizes[name] = value
    total = 1
    for value in sizes.values():
        total *= value
    fields = {"tensor_parallel": sizes["tp_size"], "context_parallel": sizes["cp_size"] * sizes["sp_size"]}
    if total > 1:
        fields["gpus"] = total
    return Parallelism(fields=fields, replicated=sizes["dp_replicate_size"])


def hsdp_warning(key: str, replicated: int) -> Finding:
    return warning("hybrid_shard", key, f"{key}: dp_replicate_size {replicated} replicates the shards across "
                   "groups (HSDP); this plan shards over every data-parallel GPU, so it understates memory",
                   "understates")


def param_offload_warning(key: str) -> Finding:
    return warning("param_offload", key, f"{key}: parameters (and their gradients) are offloaded to CPU memory; "
                   "this plan offloads the optimizer states only, so it overstates GPU memory", "overstates")


@dataclass(frozen=True)
class Fsdp:
    """What Hugging Face TrainingArguments' `fsdp` / `fsdp_config` decide, as the planner's ZeRO stages."""

    zero: int = 0  # full_shard / hybrid_shard: 3; shard_grad_op / hybrid_shard_zero2 / FSDP2 without reshard: 2
    offload: bool = False  # fsdp "offload" / fsdp_config offload_params: parameters, gradients and optimizer
    checkpointing: bool | None = None  # fsdp_config activation_checkpointing, when set
    note: str | None = None


# transformers.trainer_utils.FSDPOption -> ZeRO stage (FSDP full_shard is ZeRO-3; shard_grad_op ZeRO-2)
FSDP_SHARDING = {"full_shard": 3, "hybrid_shard": 3, "shard_grad_op": 2, "hybrid_shard_zero2": 2, "no_shard": 0}


def read_fsdp(keys: Keys, base: Path, key: str = "fsdp", config_key: str = "fsdp_config") -> Fsdp:
    """TrainingArguments' `fsdp` (options as a list or a space-separated string) and `fsdp_config` (a mapping
    or a JSON file; keys with or without the `fsdp_` prefix, as transformers accepts them)."""
    value = keys.get(key, (str, list, bool))
    options = value.split() if isinstance(value, str) else [str(v) for v in value] if isinstance(value, list) else (
        ["full_shard"] if value is True else [])
    options = [o.strip().lower() for o in options if str(o).strip()]
    config = keys.get(config_key, (str, dict))
    if isinstance(config, str):
        file = resolve_path(config, base)
        if not file.is_file():
            raise FtplanError(f"{keys.path}: key '{config_key}' points at {config}, which does not exist")
        try:
            config = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise FtplanError(f"{file}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    config = {str(k).removeprefix("fsdp_"): v for k, v in (config or {}).items()} if isinstance(config, dict) else {}
    unknown = [o for o in options if o not in FSDP_SHARDING and o not in ("offload", "auto_wrap")]
    if unknown:
        raise FtplanError(f"{keys.path}: key '{key}': unknown FSDP option {unknown[0]!r} (use full_shard, "
                          "shard_grad_op, hybrid_shard, hybrid_shard_zero2, no_shard, offload, auto_wrap)")
    sharding = [FSDP_SHARDING[o] for o in options if o in FSDP_SHARDING]
    if not options:
        return Fsdp()
    zero = sharding[0] if sharding else 3  # transformers: offload / auto_wrap alone shard fully
    if zero == 3 and str(config.get("version", 1)) == "2" and config.get("reshard_after_forward") is False:
        zero = 2  # FSDP2 keeps the gathered weights after forward: ZeRO-2's footprint
    truthy = {True, "true", "True", "TRUE"}
    offload = "offload" in options or config.get("offload_params") in truthy
    checkpointing = config.get("activation_checkpointing")
    checkpointing = None if checkpointing is None else checkpointing in truthy
    note = f"FSDP ({' '.join(options)}) planned as ZeRO-{zero}" if zero else None
    return Fsdp(zero=zero, offload=offload and zero > 0, checkpointing=checkpointing, note=note)


def resolve_path(spec: str, base: Path) -> Path:
    """A relative path in a config: the frameworks resolve it from the working directory (where the training
    command runs); fall back to the config's own folder."""
    path = Path(spec).expanduser()
    if path.is_absolute() or path.exists():
        return path
    return base / path


def unknown_keys(config: dict, used: set[str], recognised: frozenset[str],
                 known: frozenset[str] = frozenset()) -> list[str]:
    """Keys that are neither read, recognised nor among the framework's own (`known`), each with a "did you
    mean" where a key the framework accepts is close."""
    accepted = used | recognised | known
    # suggest from the framework's whole key list where there is one, else from the keys read
    candidates = sorted(known | recognised) if known else sorted(used)
    out = []
    for key in config:
        if key in accepted:
            continue
        close = [c for c in difflib.get_close_matches(str(key), candidates, n=3, cutoff=0.8) if _typo_of(str(key), c)]
        close.sort(key=lambda c: c not in used)  # prefer a key the reader plans with (stable otherwise)
        out.append(f"{key} (did you mean {close[0]}?)" if close else str(key))
    return out


def _typo_of(key: str, candidate: str) -> bool:
    """`key` looks like a slip for `candidate`: at most two edits (learning_rat), or the same words with some
    left out (per_device_batch_size), not another setting that shares a word (orpo_alpha is not lora_alpha)."""
    if _edits(key, candidate) <= 2:
        return True
    short, long = sorted((key.split("_"), candidate.split("_")), key=len)
    return set(short) <= set(long)


def _edits(a: str, b: str) -> int:
    """Levenshtein distance."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


# The prompt length GRPO is planned with when nothing caps prompts (TRL 1.x truncates none): the planner's
# default sequence for GRPO, 1024 tokens of which TRL's 512 are the completion.
ASSUMED_PROMPT = 512


def generation_seq_len(completion: int, prompt: int | None, total: int | None) -> tuple[int, str | None]:
    """A generating stage's sequence, prompt plus completion: `prompt` + `completion` when the prompt is capped,
    else `total` (a cap on both) when it leaves room for a prompt, else an assumed prompt. Returns the length
    and, when the prompt length was assumed, what was assumed (for the reader's warning)."""
    if prompt is not None:
        return prompt + completion, None
    if total is not None and total > completion:
        return total, None
    return ASSUMED_PROMPT + completion, (f"planned with {ASSUMED_PROMPT}-token prompts plus the {completion} "
                                         f"completion tokens ({ASSUMED_PROMPT + completion} in all)")


def precision_keys(precision: str) -> dict[str, bool]:
    """A precision as the `bf16` / `fp16` switches all three frameworks share."""
    return {"bf16": precision in ("bf16", "bf16-mixed"), "fp16": precision == "fp16-mixed"}


def precision_of(bf16: bool, fp16: bool, pure_bf16: bool, path: str) -> str:
    if bf16 and fp16:
        raise FtplanError(f"{path}: keys 'bf16' and 'fp16' are both true; choose one")
    if pure_bf16:
        return "bf16"
    return "bf16-mixed" if bf16 else "fp16-mixed" if fp16 else "fp32"


def build_plan(fmt: Format, path: str, **fields) -> Plan:
    """`Plan.build`, its errors worded with the framework's keys and the file's name."""
    from planner.fields import worded

    try:
        return Plan.build(**fields)
    except FtplanError as exc:
        raise FtplanError(worded(exc, fmt, where=path)) from None


def read_hyper(k: Keys, *, epochs: str, scheduler: str, scheduler_default: str, epochs_default: float,
               fp16: bool, bf16: bool, lr_default: float = 5e-5) -> Hyper:
    """The optimisation keys all three frameworks share (under their own names for epochs and schedule)."""
    ratio, steps = read_warmup(k)
    max_steps = k.get("max_steps", int)
    # a negative or zero epoch count is transformers' "use max_steps" only when max_steps is set
    epoch_floor = None if max_steps and max_steps > 0 else 0.0
    return Hyper(
        learning_rate=k.number("learning_rate", lr_default, at_least=0.0),  # torch's optimizers refuse a negative one
        epochs=k.number(epochs, epochs_default, above=epoch_floor),
        max_steps=max_steps, lr_scheduler=k.get(scheduler, str, scheduler_default),
        warmup_ratio=ratio, warmup_steps=steps,
        # the Trainer clips only when max_grad_norm > 0: a negative one turns clipping off, as 0 does
        max_grad_norm=max(0.0, k.number("max_grad_norm", 1.0)), lora_alpha=k.number("lora_alpha", None, above=0.0),
        use_rslora=k.get("use_rslora", bool, False) or k.get("peft_use_rslora", bool, False), fp16=fp16, bf16=bf16)


def read_warmup(k: Keys) -> tuple[float, int]:
    """`warmup_ratio` and `warmup_steps` as transformers reads them: since 5.0 `warmup_steps` is a float, a
    number of steps when >= 1 and a share of the steps below 1 (TrainingArguments.get_warmup_steps), and a
    `warmup_ratio` is copied into it."""
    ratio = k.get("warmup_ratio", float, 0.0)
    steps = k.get("warmup_steps", (int, float), 0)
    for key, value in (("warmup_ratio", ratio), ("warmup_steps", steps)):
        if value < 0:
            raise FtplanError(f"{k.path}: key '{key}' must be at least 0, got {value}")
    if ratio > 1:
        raise FtplanError(f"{k.path}: key 'warmup_ratio' is a share of the steps, in [0, 1]; got {ratio}")
    if isinstance(steps, float) and steps < 1:
        return (ratio or steps), 0
    return ratio, int(steps)


# ---------------------------------------------------------------- data files

_CHUNK = 1 << 16
_JSON_SPACE = re.compile(r"[ \t\n\r]*")  # what the json module skips; str.isspace() is wider


def count_records(path: Path) -> int:
    """Examples in a data file: the elements of a JSON array, else its non-blank lines (JSON lines).

    Streams the file, so a data set larger than memory can be counted; a malformed JSON array counts 0.
    """
    with path.open(encoding="utf-8", errors="replace") as file:
        first = next((chunk.lstrip()[:1] for chunk in iter(lambda: file.read(_CHUNK), "") if chunk.strip()), "")
        file.seek(0)
        if first == "[":
            return _count_array(file)
        return sum(1 for line in file if line.strip())


def _count_array(file: TextIO) -> int:
    """The top-level elements of the JSON array in `file`, decoded one at a time; 0 unless the whole file
    is valid JSON, as `len(json.load(file))` would say."""
    decoder = json.JSONDecoder()
    text, pos = "", 0

    def more() -> bool:
        nonlocal text, pos
        # Reads at least what is held, so an element longer than a chunk is re-decoded O(log n) times.
        chunk = file.read(max(_CHUNK, len(text) - pos))
        text, pos = text[pos:] + chunk, 0
        return bool(chunk)

    def next_char() -> str:
        nonlocal pos
        while True:
            pos = _JSON_SPACE.match(text, pos).end()
            if pos < len(text) or not more():
                return text[pos:pos + 1]

    if next_char() != "[":
        return 0
    pos += 1
    if next_char() == "]":
        pos += 1
        return 0  # empty, or followed by more text (invalid): 0 either way
    count = 0
    while True:
        try:
            _, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            if more():
                continue
            return 0
        if end == len(text) and more():  # a number can go on in the next chunk
            continue
        pos, count = end, count + 1
        after = next_char()
        pos += 1
        if after == "]":
            return 0 if next_char() else count
        if after != ",":
            return 0
        next_char()


# LLaMA-Factory's switches for its own optimizers (train/trainer_utils.py `create_custom_optimizer`)
LF_SWITCH = {"galore": "use_galore", "apollo": "use_apollo", "badam": "use_badam", "adam-mini": "use_adam_mini",
             "muon": "use_muon"}
LAYERWISE_OPTIMIZERS = tuple(OPTIM_LAYERWISE.values())


def trainer_optim_keys(plan: Plan, framework: str) -> dict[str, Any]:
    """TrainingArguments' optimizer keys (TRL, axolotl) for the plan's optimizer: optim, and for GaLore/APOLLO
    optim_args and optim_target_modules (every module under a decoder layer: transformers keeps the nn.Linear
    ones). LLaMA-Factory's own optimizers have no `optim` name."""
    if plan.optimizer in ("badam", "adam-mini") or (plan.optimizer == "muon" and framework == "TRL"):
        raise FtplanError(f"{plan.optimizer} is LLaMA-Factory's ({LF_SWITCH[plan.optimizer]}); {framework} has no "
                          "optim for it: export a LLaMA-Factory config or choose another optimizer",
                          field="optimizer")
    name = OPTIM_BACK[plan.optimizer]
    if plan.optimizer not in LAYERWISE_OPTIMIZERS:
        return {"optim": name}
    return {"optim": name + ("_layerwise" if plan.optimizer_in_backward else ""),
            "optim_args": f"rank={plan.projection_rank},update_proj_gap={plan.projection_update_interval}",
            "optim_target_modules": r".*\.layers\.\d+\..*"}


def llamafactory_optim_keys(plan: Plan) -> dict[str, Any]:
    """LLaMA-Factory's keys for the plan's optimizer: a use_* switch with its settings where it is its own."""
    family = plan.optimizer.split("-")[0] if plan.optimizer in LAYERWISE_OPTIMIZERS else plan.optimizer
    if family not in LF_SWITCH:
        return {"optim": OPTIM_BACK[plan.optimizer]}
    if plan.method in ("lora", "qlora") and family in ("galore", "apollo", "badam"):
        raise FtplanError(f"LLaMA-Factory cannot use LoRA with {plan.optimizer} (finetuning_args.py); train full "
                          "or choose another optimizer", field="optimizer")
    base = {"galore-adamw-8bit": "adamw_bnb_8bit", "galore-adafactor": "adafactor"}.get(plan.optimizer,
                                                                                        "adamw_torch")
    keys: dict[str, Any] = {"optim": base, LF_SWITCH[family]: True}
    if family in ("galore", "apollo"):
        keys |= {f"{family}_target": "all", f"{family}_rank": plan.projection_rank,
                 f"{family}_update_interval": plan.projection_update_interval,
                 f"{family}_layerwise": plan.optimizer_in_backward}
    if family == "badam":
        keys["badam_mode"] = "layer"
    return keys
