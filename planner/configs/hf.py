"""Hugging Face TrainingArguments and TRL configs (SFTConfig + ModelConfig, as `trl sft --config` reads them)."""

from __future__ import annotations

from pathlib import Path

from planner.configs.common import (
    OPTIM,
    DataInfo,
    Framework,
    Keys,
    RunConfig,
    build_plan,
    precision_keys,
    precision_of,
    read_deepspeed,
    read_hyper,
)
from planner.errors import FtplanError

# Keys that do not change memory, stability or time: recognised, not planned.
RECOGNISED = frozenset({
    "output_dir", "logging_steps", "save_steps", "save_strategy", "eval_strategy", "evaluation_strategy",
    "eval_steps", "report_to", "run_name", "seed", "save_total_limit", "push_to_hub", "hub_model_id",
    "per_device_eval_batch_size", "logging_dir", "dataloader_num_workers", "remove_unused_columns",
    "dataset_text_field", "weight_decay", "adam_beta1", "adam_beta2",
    "trust_remote_code", "overwrite_output_dir", "do_train", "do_eval", "logging_first_step",
    "dataset_name", "dataset_config", "dataset_train_split", "packing", "completion_only_loss",
    "assistant_only_loss", "tf32", "ddp_timeout", "resume_from_checkpoint", "dataloader_pin_memory",
})

# Planner flags -> keys, to report a Plan validation error by the name the user wrote.
# DeepSpeed settings live in a JSON file the key points at: not a value --fix can write
UNWRITABLE = frozenset({"zero", "offload_optimizer"})
ATTN_BACK = {"flash": "flash_attention_2", "sdpa": "sdpa", "eager": "eager"}


def target_modules(target: str) -> str | list[str]:
    """peft's target_modules as TRL's ModelConfig takes it: "all-linear" or a list of names."""
    return "all-linear" if target == "all" else [t.strip() for t in target.split(",") if t.strip()]


def quant_keys(bits: int | None) -> dict[str, bool]:
    return {"load_in_4bit": bits == 4, "load_in_8bit": bits == 8}


def method_keys(method: str) -> dict:
    return {"use_peft": method in ("lora", "qlora"), **({"load_in_4bit": True} if method == "qlora" else {})}


def read(keys: Keys, base: Path) -> RunConfig:
    k, path = keys, keys.path
    model = k.get("model_name_or_path", str) or k.get("model", str)
    if not model:
        raise FtplanError(f"{path}: missing key 'model_name_or_path'")
    zero, offload, ds_note = read_deepspeed(k, base)
    four, eight = k.get("load_in_4bit", bool, False), k.get("load_in_8bit", bool, False)
    peft = k.get("use_peft", bool, False) or four or eight
    targets = k.joined("lora_target_modules", "all-linear")
    attn = k.get("attn_implementation", str, "sdpa")
    optim = k.get("optim", str, "adamw_torch_fused")
    dtype = k.get("torch_dtype", str) or k.get("dtype", str)
    bf16, fp16 = k.get("bf16", bool, False), k.get("fp16", bool, False)
    plan = build_plan(
        "hf", path, method="lora" if peft else "full", quant_bits=4 if four else 8 if eight else None,
        precision=precision_of(bf16, fp16, dtype == "bfloat16" and not (bf16 or fp16), path),
        optimizer=OPTIM.get(optim, "adamw"), batch_size=k.positive("per_device_train_batch_size", 8),
        seq_len=k.get("max_length", int) or k.get("max_seq_length", int) or 1024,
        grad_accum=k.positive("gradient_accumulation_steps", 1),
        gradient_checkpointing=k.get("gradient_checkpointing", bool, False),
        attention={"flash_attention_2": "flash", "eager": "eager"}.get(attn, "sdpa"),
        lora_rank=k.positive("lora_r", 16), lora_target="all" if targets == "all-linear" else targets,
        lora_dropout=k.get("lora_dropout", float, 0.05), zero=zero, offload_optimizer=offload,
        fused_loss=k.get("use_liger_kernel", bool, False),
    )
    hyper = read_hyper(k, epochs="num_train_epochs", epochs_default=3.0, scheduler="lr_scheduler_type",
                       scheduler_default="linear", fp16=fp16, bf16=bf16)
    notes = [ds_note] if ds_note else []
    return RunConfig(path=path, format="hf", model=model, plan=plan, hyper=hyper, data=DataInfo(), notes=notes)


FRAMEWORK = Framework(
    name="hf", read=read, model_key="model_name_or_path",
    signature=frozenset(),  # TrainingArguments have no keys of their own: the format of last resort
    recognised=RECOGNISED, unwritable=UNWRITABLE, method_keys=method_keys,
    fix_values={"precision": precision_keys, "attention": ATTN_BACK.__getitem__, "lora_target": target_modules,
                "quant_bits": quant_keys},
)
