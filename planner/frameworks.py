"""Training configs as people write them: LLaMA-Factory, Hugging Face TrainingArguments / TRL, axolotl.

`read_run_config(path)` turns a YAML or JSON file into a `RunConfig`: the model, the
`Plan` the planner needs, the optimisation hyperparameters, the data, and the keys it
ignored. Every problem names the key (and the file). `fix_config()` writes a corrected
copy that keeps the user's comments and key order (top-level `key: value` lines are
edited in place; new keys are appended), and `llamafactory_yaml()` writes a plan out as
a LLaMA-Factory config (the TUI's export).
"""

from __future__ import annotations

import contextlib
import difflib
import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from planner.errors import FtplanError
from planner.files import write_text_atomic
from planner.plan import Plan

Format = Literal["llamafactory", "hf", "axolotl"]

# ---------------------------------------------------------------- key tables

_OPTIM = {
    "adamw_torch": "adamw", "adamw_hf": "adamw", "adamw": "adamw", "adamw_torch_fused": "adamw-fused",
    "adamw_bnb_8bit": "adamw-8bit", "adamw_8bit": "adamw-8bit", "bnb_8bit": "adamw-8bit",
    "paged_adamw_8bit": "paged-adamw-8bit", "paged_adamw_32bit": "adamw", "adafactor": "adafactor",
    "sgd": "sgd",
}
_OPTIM_BACK = {"adamw": "adamw_torch", "adamw-fused": "adamw_torch_fused", "adamw-8bit": "adamw_bnb_8bit",
               "paged-adamw-8bit": "paged_adamw_8bit", "adafactor": "adafactor", "sgd": "sgd",
               "sgd-momentum": "sgd"}
# LLaMA-Factory's flash_attn (auto/sdpa/fa2/disabled) <-> the plan's attention kernel
_FLASH_ATTN = {"fa2": "flash", "disabled": "eager", "eager": "eager"}  # anything else: sdpa
_FLASH_ATTN_BACK = {"flash": "fa2", "eager": "disabled", "sdpa": "sdpa"}

# Keys each framework accepts that do not change memory, stability or time: recognised, not planned.
_IRRELEVANT = {
    "llamafactory": {
        "do_train", "do_eval", "do_predict", "template", "overwrite_cache", "preprocessing_num_workers",
        "output_dir", "logging_steps", "save_steps", "plot_loss", "overwrite_output_dir", "ddp_timeout",
        "per_device_eval_batch_size", "eval_strategy", "evaluation_strategy", "eval_steps", "report_to",
        "save_only_model", "trust_remote_code", "dataloader_num_workers", "save_strategy", "save_total_limit",
        "run_name", "resume_from_checkpoint", "include_num_input_tokens_seen", "packing", "logging_dir",
        "seed", "streaming", "buffer_size", "mix_strategy", "tokenized_path", "adapter_name_or_path", "create_new_adapter", "weight_decay", "adam_beta1", "adam_beta2",
        "neat_packing", "train_on_prompt", "mask_history", "freeze_trainable_modules", "freeze_extra_modules",
        "additional_target", "quantization_method", "quantization_type", "upcast_layernorm", "rope_scaling",
        "booster", "image_max_pixels", "video_max_pixels", "dataloader_pin_memory",
    },
    "hf": {
        "output_dir", "logging_steps", "save_steps", "save_strategy", "eval_strategy", "evaluation_strategy",
        "eval_steps", "report_to", "run_name", "seed", "save_total_limit", "push_to_hub", "hub_model_id",
        "per_device_eval_batch_size", "logging_dir", "dataloader_num_workers", "remove_unused_columns",
        "dataset_text_field", "weight_decay", "adam_beta1", "adam_beta2",
        "trust_remote_code", "overwrite_output_dir", "do_train", "do_eval", "logging_first_step",
        "dataset_name", "dataset_config", "dataset_train_split", "packing", "completion_only_loss",
        "assistant_only_loss", "tf32", "ddp_timeout", "resume_from_checkpoint", "dataloader_pin_memory",
    },
    "axolotl": {
        "output_dir", "logging_steps", "save_steps", "saves_per_epoch", "evals_per_epoch", "wandb_project",
        "wandb_entity", "wandb_name", "wandb_watch", "wandb_log_model", "special_tokens", "tokenizer_type",
        "model_type", "strict", "dataset_prepared_path", "chat_template", "weight_decay",
        "tf32", "logging_dir", "resume_from_checkpoint", "local_rank", "xformers_attention",
        "early_stopping_patience", "train_on_inputs", "group_by_length", "pad_to_sequence_len",
        "eval_sample_packing", "hub_model_id", "trust_remote_code", "seed", "lora_model_dir", "lora_fan_in_fan_out",
        "gptq", "auto_resume_from_checkpoints", "debug", "fsdp", "fsdp_config", "save_safetensors",
        "eval_batch_size", "sample_packing", "lora_modules_to_save", "peft_use_rslora",
    },
}

# Planner flags -> config keys, to report a Plan validation error by the name the user wrote.
_KEY_OF_FLAG = {
    "llamafactory": {"--quant-bits": "quantization_bit", "--method": "finetuning_type",
                     "--batch-size": "per_device_train_batch_size", "--seq-len": "cutoff_len",
                     "--grad-accum": "gradient_accumulation_steps", "--lora-rank": "lora_rank",
                     "--lora-target": "lora_target", "--freeze-trainable-layers": "freeze_trainable_layers",
                     "--zero": "deepspeed", "--offload-optimizer": "deepspeed"},
    "hf": {"--quant-bits": "load_in_4bit/load_in_8bit", "--batch-size": "per_device_train_batch_size",
           "--seq-len": "max_length", "--grad-accum": "gradient_accumulation_steps", "--lora-rank": "lora_r",
           "--lora-target": "lora_target_modules", "--zero": "deepspeed"},
    "axolotl": {"--quant-bits": "load_in_4bit/load_in_8bit", "--method": "adapter",
                "--batch-size": "micro_batch_size", "--seq-len": "sequence_len",
                "--grad-accum": "gradient_accumulation_steps", "--lora-rank": "lora_r",
                "--lora-target": "lora_target_modules", "--zero": "deepspeed"},
}


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
    ignored: list[str] = []  # unknown keys, each with a "did you mean" where one is close
    notes: list[str] = []

    @property
    def key_names(self) -> dict[str, str]:
        """Framework key for each planner setting, for messages and --fix."""
        return _FIX_KEYS[self.format]


# ---------------------------------------------------------------- reading


def load_config_file(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise FtplanError(f"{path}: cannot read it ({exc.strerror})") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FtplanError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise FtplanError(f"{path}: not valid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise FtplanError(f"{path}: expected a mapping of settings (key: value), got {type(data).__name__}")
    return data


def detect_format(config: dict) -> Format:
    if "base_model" in config:
        return "axolotl"
    if config.keys() & {"finetuning_type", "stage", "cutoff_len", "lora_target", "quantization_bit", "template"}:
        return "llamafactory"
    return "hf"


class _Keys:
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
            raise FtplanError(f"{self.path}: key '{key}' must be {want}, got {value!r}")
        return value

    def positive(self, key: str, default: int) -> int:
        value = self.get(key, int, default)
        if value < 1:
            raise FtplanError(f"{self.path}: key '{key}' must be at least 1, got {value}")
        return value


def _deepspeed(keys: _Keys, base: Path) -> tuple[int, bool, str | None]:
    """ZeRO stage and optimizer offload from a DeepSpeed JSON (path or inline dict)."""
    spec = keys.get("deepspeed", (str, dict))
    if spec is None:
        return 0, False, None
    where = "key 'deepspeed'"
    if isinstance(spec, str):
        file = resolve_path(spec, base)
        if not file.is_file():
            raise FtplanError(f"{keys.path}: key 'deepspeed' points at {spec}, which does not exist (looked in "
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
    offload = (zero.get("offload_optimizer") or {}).get("device") in ("cpu", "nvme")
    note = f"DeepSpeed ZeRO-{stage}" + (" with optimizer offload" if offload else "")
    return stage, offload, note


def resolve_path(spec: str, base: Path) -> Path:
    """A relative path in a config: the frameworks resolve it from the working directory (where the training
    command runs); fall back to the config's own folder."""
    path = Path(spec).expanduser()
    if path.is_absolute() or path.exists():
        return path
    return base / path


def _unknown(config: dict, used: set[str], fmt: Format) -> list[str]:
    known = used | _IRRELEVANT[fmt]
    out = []
    for key in config:
        if key in known:
            continue
        close = difflib.get_close_matches(key, sorted(used), n=1, cutoff=0.8)
        out.append(f"{key} (did you mean {close[0]}?)" if close else key)
    return out


def _precision(bf16: bool, fp16: bool, pure_bf16: bool, path: str) -> str:
    if bf16 and fp16:
        raise FtplanError(f"{path}: keys 'bf16' and 'fp16' are both true; choose one")
    if pure_bf16:
        return "bf16"
    return "bf16-mixed" if bf16 else "fp16-mixed" if fp16 else "fp32"


def _build_plan(fmt: Format, path: str, **fields) -> Plan:
    try:
        return Plan.build(**fields)
    except FtplanError as exc:
        message = str(exc)
        for flag, key in _KEY_OF_FLAG[fmt].items():
            message = message.replace(flag, key)
        raise FtplanError(f"{path}: {message}") from None


def _hyper(k: _Keys, *, epochs: str, scheduler: str, scheduler_default: str, epochs_default: float,
           fp16: bool, bf16: bool) -> Hyper:
    """The optimisation keys all three frameworks share (under their own names for epochs and schedule)."""
    return Hyper(
        learning_rate=k.get("learning_rate", float, 5e-5), epochs=k.get(epochs, float, epochs_default),
        max_steps=k.get("max_steps", int), lr_scheduler=k.get(scheduler, str, scheduler_default),
        warmup_ratio=k.get("warmup_ratio", float, 0.0), warmup_steps=k.get("warmup_steps", int, 0),
        max_grad_norm=k.get("max_grad_norm", float, 1.0), lora_alpha=k.get("lora_alpha", float),
        use_rslora=k.get("use_rslora", bool, False) or k.get("peft_use_rslora", bool, False), fp16=fp16, bf16=bf16)


def _read_llamafactory(keys: _Keys, base: Path) -> RunConfig:
    k, path = keys, keys.path
    model = k.get("model_name_or_path", str)
    if not model:
        raise FtplanError(f"{path}: missing key 'model_name_or_path'")
    stage = k.get("stage", str, "sft")
    if stage not in ("sft", "pt"):
        notes = [f"stage '{stage}': planned as supervised fine-tuning (a reward or reference model is not counted)"]
    else:
        notes = []
    method = k.get("finetuning_type", str, "lora")
    if method not in ("full", "freeze", "lora"):
        raise FtplanError(f"{path}: key 'finetuning_type' must be full, freeze or lora, got {method!r}")
    bits = k.get("quantization_bit", int)
    if bits is not None and bits not in (4, 8):
        raise FtplanError(f"{path}: key 'quantization_bit' must be 4 or 8 (bitsandbytes), got {bits}")
    zero, offload, ds_note = _deepspeed(k, base)
    if ds_note:
        notes.append(ds_note)
    flash = k.get("flash_attn", str, "auto")
    attention = _FLASH_ATTN.get(flash, "sdpa")
    optim = k.get("optim", str, "adamw_torch")
    precision = _precision(k.get("bf16", bool, False), k.get("fp16", bool, False), k.get("pure_bf16", bool, False),
                           path)
    lora_target = k.get("lora_target", (str, list), "all")
    lora_target = ",".join(lora_target) if isinstance(lora_target, list) else lora_target
    plan = _build_plan(
        "llamafactory", path, method=method, precision=precision, optimizer=_OPTIM.get(optim, "adamw"),
        batch_size=k.positive("per_device_train_batch_size", 8), seq_len=k.positive("cutoff_len", 2048),
        grad_accum=k.positive("gradient_accumulation_steps", 1),
        gradient_checkpointing=not k.get("disable_gradient_checkpointing", bool, False), attention=attention,
        lora_rank=k.positive("lora_rank", 8), lora_target=lora_target, lora_dropout=k.get("lora_dropout", float, 0.0),
        freeze_trainable_layers=k.get("freeze_trainable_layers", int, 2), quant_bits=bits,
        double_quant=k.get("double_quantization", bool, True), zero=zero, offload_optimizer=offload,
        fused_loss=k.get("enable_liger_kernel", bool, False),
    )
    if optim not in _OPTIM:
        notes.append(f"optim '{optim}' is planned as AdamW")
    hyper = _hyper(k, epochs="num_train_epochs", epochs_default=3.0, scheduler="lr_scheduler_type",
                   scheduler_default="linear", fp16=k.get("fp16", bool, False), bf16=k.get("bf16", bool, False))
    datasets = k.get("dataset", (str, list), "")
    data = DataInfo(datasets=[d.strip() for d in (datasets.split(",") if isinstance(datasets, str) else datasets)
                              if d and d.strip()],
                    dataset_dir=k.get("dataset_dir", str, "data"), max_samples=k.get("max_samples", int),
                    val_size=k.get("val_size", float, 0.0))
    return RunConfig(path=path, format="llamafactory", model=model, plan=plan, hyper=hyper,
                     data=_resolve_llamafactory_data(data, base), notes=notes)


def _resolve_llamafactory_data(data: DataInfo, base: Path) -> DataInfo:
    """Find the files behind LLaMA-Factory dataset names (dataset_dir/dataset_info.json) and count them."""
    folder = resolve_path(data.dataset_dir or "data", base)
    info_file = folder / "dataset_info.json"
    info = {}
    if info_file.is_file():
        try:
            info = json.loads(info_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            info = {}
    files, count = [], 0
    for name in data.datasets:
        entry = info.get(name) or {}
        file = entry.get("file_name")
        if not file:
            continue
        target = folder / file
        if target.is_file():
            files.append(str(target))
            count += _count_records(target)
    samples = count or None
    if data.max_samples:
        samples = min(samples, data.max_samples * max(1, len(data.datasets))) if samples else None
    return data.model_copy(update={"files": files, "samples": samples})


def _count_records(path: Path) -> int:
    text = path.read_text(encoding="utf-8", errors="replace")
    if text.lstrip().startswith("["):
        try:
            return len(json.loads(text))
        except json.JSONDecodeError:
            return 0
    return sum(1 for line in text.splitlines() if line.strip())


def _read_hf(keys: _Keys, base: Path) -> RunConfig:
    k, path = keys, keys.path
    model = k.get("model_name_or_path", str) or k.get("model", str)
    if not model:
        raise FtplanError(f"{path}: missing key 'model_name_or_path'")
    zero, offload, ds_note = _deepspeed(k, base)
    four, eight = k.get("load_in_4bit", bool, False), k.get("load_in_8bit", bool, False)
    peft = k.get("use_peft", bool, False) or four or eight
    targets = k.get("lora_target_modules", (str, list), "all-linear")
    targets = ",".join(targets) if isinstance(targets, list) else targets
    attn = k.get("attn_implementation", str, "sdpa")
    optim = k.get("optim", str, "adamw_torch_fused")
    dtype = k.get("torch_dtype", str) or k.get("dtype", str)
    bf16, fp16 = k.get("bf16", bool, False), k.get("fp16", bool, False)
    plan = _build_plan(
        "hf", path, method="lora" if peft else "full", quant_bits=4 if four else 8 if eight else None,
        precision=_precision(bf16, fp16, dtype == "bfloat16" and not (bf16 or fp16), path),
        optimizer=_OPTIM.get(optim, "adamw"), batch_size=k.positive("per_device_train_batch_size", 8),
        seq_len=k.get("max_length", int) or k.get("max_seq_length", int) or 1024,
        grad_accum=k.positive("gradient_accumulation_steps", 1),
        gradient_checkpointing=k.get("gradient_checkpointing", bool, False),
        attention={"flash_attention_2": "flash", "eager": "eager"}.get(attn, "sdpa"),
        lora_rank=k.positive("lora_r", 16), lora_target="all" if targets == "all-linear" else targets,
        lora_dropout=k.get("lora_dropout", float, 0.05), zero=zero, offload_optimizer=offload,
        fused_loss=k.get("use_liger_kernel", bool, False),
    )
    hyper = _hyper(k, epochs="num_train_epochs", epochs_default=3.0, scheduler="lr_scheduler_type",
                   scheduler_default="linear", fp16=fp16, bf16=bf16)
    notes = [ds_note] if ds_note else []
    return RunConfig(path=path, format="hf", model=model, plan=plan, hyper=hyper, data=DataInfo(), notes=notes)


def _truthy(value) -> bool:
    """axolotl writes some switches as strings ("true", "false", "unsloth", "offload")."""
    if isinstance(value, str):
        return value.strip().lower() not in ("false", "no", "off", "0", "")
    return bool(value)


def _read_axolotl(keys: _Keys, base: Path) -> RunConfig:
    k, path = keys, keys.path
    model = k.get("base_model", str)
    adapter = k.get("adapter", str)
    if adapter not in (None, "lora", "qlora"):
        raise FtplanError(f"{path}: key 'adapter' must be lora or qlora (or absent for full), got {adapter!r}")
    four, eight = k.get("load_in_4bit", bool, False), k.get("load_in_8bit", bool, False)
    if adapter == "qlora" and not four:
        four = True
    if adapter is None and (four or eight):
        raise FtplanError(f"{path}: key 'load_in_4bit'/'load_in_8bit' without an adapter is a quantized full "
                          "fine-tune, which cannot train; set adapter: qlora")
    zero, offload, ds_note = _deepspeed(k, base)
    targets = "all" if k.get("lora_target_linear", bool, False) else k.get("lora_target_modules", (str, list), "all")
    targets = ",".join(targets) if isinstance(targets, list) else targets
    bf16 = k.get("bf16", (bool, str), False)
    bf16 = bf16 == "auto" or _truthy(bf16)
    fp16 = k.get("fp16", bool, False)
    attention = "flash" if k.get("flash_attention", bool, False) else \
        "sdpa" if k.get("sdp_attention", bool, False) else "eager"
    optim = k.get("optimizer", str, "adamw_torch_fused")
    plan = _build_plan(
        "axolotl", path, method="lora" if adapter else "full", quant_bits=4 if four else 8 if eight else None,
        precision=_precision(bf16, fp16, False, path), optimizer=_OPTIM.get(optim, "adamw"),
        batch_size=k.positive("micro_batch_size", 1), seq_len=k.positive("sequence_len", 2048),
        grad_accum=k.positive("gradient_accumulation_steps", 1),
        gradient_checkpointing=_truthy(k.get("gradient_checkpointing", (bool, str), False)), attention=attention,
        lora_rank=k.positive("lora_r", 8), lora_target=targets, lora_dropout=k.get("lora_dropout", float, 0.0),
        zero=zero, offload_optimizer=offload, fused_loss=k.get("liger_fused_linear_cross_entropy", bool, False),
    )
    hyper = _hyper(k, epochs="num_epochs", epochs_default=1.0, scheduler="lr_scheduler",
                   scheduler_default="cosine", fp16=fp16, bf16=bf16)
    raw = k.get("datasets", list, [])
    data = DataInfo(datasets=[str(d.get("path")) for d in raw if isinstance(d, dict)],
                    val_size=k.get("val_set_size", float, 0.0))
    notes = [ds_note] if ds_note else []
    return RunConfig(path=path, format="axolotl", model=model or "", plan=plan, hyper=hyper, data=data, notes=notes)


_READERS = {"llamafactory": _read_llamafactory, "hf": _read_hf, "axolotl": _read_axolotl}


def read_run_config(path: str | Path, fmt: Format | None = None) -> RunConfig:
    path = Path(path)
    config = load_config_file(path)
    fmt = fmt or detect_format(config)
    keys = _Keys(config, str(path))
    run = _READERS[fmt](keys, path.parent)
    if not run.model:
        raise FtplanError(f"{path}: no model: set '{ {'axolotl': 'base_model'}.get(fmt, 'model_name_or_path')}'")
    return run.model_copy(update={"ignored": _unknown(config, keys.used, fmt)})


# ---------------------------------------------------------------- writing

# Framework key for each change the advice can make.
_FIX_KEYS: dict[str, dict[str, str]] = {
    "llamafactory": {"batch_size": "per_device_train_batch_size", "grad_accum": "gradient_accumulation_steps",
                     "seq_len": "cutoff_len", "method": "finetuning_type", "quant_bits": "quantization_bit",
                     "gradient_checkpointing": "disable_gradient_checkpointing", "optimizer": "optim",
                     "learning_rate": "learning_rate", "warmup_ratio": "warmup_ratio", "bf16": "bf16",
                     "fp16": "fp16", "max_grad_norm": "max_grad_norm", "fused_loss": "enable_liger_kernel",
                     "lora_target": "lora_target", "attention": "flash_attn", "precision": "pure_bf16"},
    "hf": {"method": "use_peft", "batch_size": "per_device_train_batch_size",
           "grad_accum": "gradient_accumulation_steps", "seq_len": "max_length", "gradient_checkpointing": "gradient_checkpointing", "optimizer": "optim",
           "learning_rate": "learning_rate", "warmup_ratio": "warmup_ratio", "bf16": "bf16", "fp16": "fp16",
           "max_grad_norm": "max_grad_norm", "fused_loss": "use_liger_kernel"},
    "axolotl": {"method": "adapter", "batch_size": "micro_batch_size", "grad_accum": "gradient_accumulation_steps",
                "seq_len": "sequence_len", "gradient_checkpointing": "gradient_checkpointing",
                "optimizer": "optimizer", "learning_rate": "learning_rate", "warmup_ratio": "warmup_ratio",
                "bf16": "bf16", "fp16": "fp16", "max_grad_norm": "max_grad_norm"},
}


_METHOD_KEYS = {
    "llamafactory": lambda m: {"finetuning_type": "lora" if m == "qlora" else m,
                               **({"quantization_bit": 4} if m == "qlora" else {})},
    "hf": lambda m: {"use_peft": m in ("lora", "qlora"), **({"load_in_4bit": True} if m == "qlora" else {})},
    "axolotl": lambda m: {"adapter": m, **({"load_in_4bit": True} if m == "qlora" else {})},
}


def config_changes(run: RunConfig, plan_changes: dict[str, Any], hyper_changes: dict[str, Any]) -> dict[str, Any]:
    """Planner-side changes (Plan fields, hyperparameters) as framework keys and values."""
    names = _FIX_KEYS[run.format]
    out: dict[str, Any] = {}
    for field, value in {**plan_changes, **hyper_changes}.items():
        key = names.get(field)
        if key is None:
            continue
        if field == "gradient_checkpointing" and key == "disable_gradient_checkpointing":
            value = not value
        elif field == "optimizer":
            value = _OPTIM_BACK.get(value, value)
        elif field == "method":
            out.update(_METHOD_KEYS[run.format](value))
            continue
        elif field == "attention":
            value = _FLASH_ATTN_BACK[value]
        elif field == "precision":
            value = value == "bf16"
        out[key] = value
    return out


_LINE = re.compile(r"^(?P<key>[A-Za-z_][\w.-]*)(?P<sep>\s*:\s*)(?P<value>[^#\n]*?)(?P<trail>\s*(#.*)?)$")


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.1e}" if value and abs(value) < 1e-3 else repr(value)
    return str(value)


def fix_config(source: str | Path, changes: dict[str, Any], target: str | Path) -> Path:
    """Write `source` with `changes` applied to `target`, keeping comments, blank lines and key order.

    Only top-level keys are edited; a key not present is appended under a comment. JSON files
    are rewritten as JSON (JSON has no comments to keep). The source is never modified, and the
    target is written atomically.
    """
    source, target = Path(source), Path(target)
    if source.resolve() == target.resolve():
        raise FtplanError(f"--fix {target}: that is the input file; write the corrected copy elsewhere")
    text = source.read_text(encoding="utf-8")
    if source.suffix.lower() == ".json":
        data = json.loads(text)
        data.update(changes)
        new_text = json.dumps(data, indent=2) + "\n"
    else:
        lines = text.splitlines()
        pending = dict(changes)
        for i, line in enumerate(lines):
            match = _LINE.match(line)
            if match and match.group("key") in pending:
                value = _yaml_scalar(pending.pop(match.group("key")))
                lines[i] = f"{match.group('key')}{match.group('sep')}{value}{match.group('trail')}"
        if pending:
            lines += ["", "### changed by ftplan preflight"] + [f"{k}: {_yaml_scalar(v)}" for k, v in pending.items()]
        new_text = "\n".join(lines) + "\n"
    return write_text_atomic(target, new_text)


def deepspeed_json(plan: Plan) -> dict:
    """A DeepSpeed config with the plan's ZeRO stage and offload, "auto" elsewhere (HF Trainer fills those in)."""
    zero: dict[str, Any] = {"stage": plan.zero, "overlap_comm": True, "contiguous_gradients": True}
    if plan.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    return {"train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto",
            "gradient_accumulation_steps": "auto", "gradient_clipping": "auto",
            "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"}, "zero_optimization": zero}


def llamafactory_yaml(model: str, plan: Plan, hyper: Hyper | None = None, dataset: str = "identity",
                      deepspeed_file: str | None = None) -> str:
    """A LLaMA-Factory training config for `plan`, with the seed's key names and sections.

    With ZeRO (`plan.zero`), `deepspeed_file` names the DeepSpeed JSON (see `deepspeed_json`) to write beside it.
    """
    hyper = hyper or Hyper(learning_rate=1e-4 if plan.method in ("lora", "qlora") else 1e-5, warmup_ratio=0.1,
                           lr_scheduler="cosine")
    method = "lora" if plan.method == "qlora" else plan.method
    lines = ["### model", f"model_name_or_path: {model}"]
    if plan.method == "qlora":
        lines.append(f"quantization_bit: {plan.base_bits}")
        if not plan.double_quant:
            lines.append("double_quantization: false")
    lines += ["", "### method", "stage: sft", "do_train: true", f"finetuning_type: {method}"]
    if method == "lora":
        lines += [f"lora_rank: {plan.lora_rank}", f"lora_target: {plan.lora_target}"]
        if plan.lora_dropout:
            lines.append(f"lora_dropout: {plan.lora_dropout}")
    if method == "freeze":
        lines.append(f"freeze_trainable_layers: {plan.freeze_trainable_layers}")
    if plan.fused_loss:
        lines.append("enable_liger_kernel: true")
    lines += ["", "### dataset", f"dataset: {dataset}", f"cutoff_len: {plan.seq_len}", "", "### train",
              f"per_device_train_batch_size: {plan.batch_size}",
              f"gradient_accumulation_steps: {plan.grad_accum}",
              f"learning_rate: {_yaml_scalar(hyper.learning_rate or 1e-4)}",
              f"num_train_epochs: {hyper.epochs}", f"lr_scheduler_type: {hyper.lr_scheduler}",
              f"warmup_ratio: {hyper.warmup_ratio}"]
    if hyper.max_grad_norm is not None:
        lines.append(f"max_grad_norm: {hyper.max_grad_norm}")
    lines.append(f"optim: {_OPTIM_BACK[plan.optimizer]}")
    if plan.precision in ("bf16", "bf16-mixed"):
        lines.append("bf16: true")
    if plan.precision == "bf16":
        lines.append("pure_bf16: true")
    if plan.precision == "fp16-mixed":
        lines.append("fp16: true")
    if not plan.gradient_checkpointing:
        lines.append("disable_gradient_checkpointing: true")
    lines.append(f"flash_attn: {_FLASH_ATTN_BACK[plan.attention]}")
    if plan.zero:
        lines.append(f"deepspeed: {deepspeed_file or f'ds_z{plan.zero}_config.json'}")
    return "\n".join(lines) + "\n"
