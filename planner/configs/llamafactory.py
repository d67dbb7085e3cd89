"""LLaMA-Factory training configs (`llamafactory-cli train config.yaml`): keys, defaults and datasets."""

from __future__ import annotations

import json
from pathlib import Path

from planner.configs.common import (
    OPTIM,
    DataInfo,
    Framework,
    Keys,
    RunConfig,
    build_plan,
    count_records,
    precision_keys,
    precision_of,
    read_deepspeed,
    read_hyper,
    resolve_path,
)
from planner.errors import FtplanError

# flash_attn (auto/sdpa/fa2/disabled) <-> the plan's attention kernel
FLASH_ATTN = {"fa2": "flash", "disabled": "eager", "eager": "eager"}  # anything else: sdpa
FLASH_ATTN_BACK = {"flash": "fa2", "eager": "disabled", "sdpa": "sdpa"}

# Keys that do not change memory, stability or time: recognised, not planned.
RECOGNISED = frozenset({
    "do_train", "do_eval", "do_predict", "template", "overwrite_cache", "preprocessing_num_workers",
    "output_dir", "logging_steps", "save_steps", "plot_loss", "overwrite_output_dir", "ddp_timeout",
    "per_device_eval_batch_size", "eval_strategy", "evaluation_strategy", "eval_steps", "report_to",
    "save_only_model", "trust_remote_code", "dataloader_num_workers", "save_strategy", "save_total_limit",
    "run_name", "resume_from_checkpoint", "include_num_input_tokens_seen", "packing", "logging_dir",
    "seed", "streaming", "buffer_size", "mix_strategy", "tokenized_path", "adapter_name_or_path",
    "create_new_adapter", "weight_decay", "adam_beta1", "adam_beta2",
    "neat_packing", "train_on_prompt", "mask_history", "freeze_trainable_modules", "freeze_extra_modules",
    "additional_target", "quantization_method", "quantization_type", "upcast_layernorm", "rope_scaling",
    "booster", "image_max_pixels", "video_max_pixels", "dataloader_pin_memory",
})

# DeepSpeed settings live in a JSON file the key points at: not a value --fix can write
UNWRITABLE = frozenset({"zero", "offload_optimizer"})


def method_keys(method: str) -> dict:
    return {"finetuning_type": "lora" if method == "qlora" else method,
            **({"quantization_bit": 4} if method == "qlora" else {})}


def read(keys: Keys, base: Path) -> RunConfig:
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
    zero, offload, ds_note = read_deepspeed(k, base)
    if ds_note:
        notes.append(ds_note)
    flash = k.get("flash_attn", str, "auto")
    attention = FLASH_ATTN.get(flash, "sdpa")
    optim = k.get("optim", str, "adamw_torch")
    precision = precision_of(k.get("bf16", bool, False), k.get("fp16", bool, False),
                             k.get("pure_bf16", bool, False), path)
    lora_target = k.joined("lora_target", "all")
    plan = build_plan(
        "llamafactory", path, method=method, precision=precision, optimizer=OPTIM.get(optim, "adamw"),
        batch_size=k.positive("per_device_train_batch_size", 8), seq_len=k.positive("cutoff_len", 2048),
        grad_accum=k.positive("gradient_accumulation_steps", 1),
        gradient_checkpointing=not k.get("disable_gradient_checkpointing", bool, False), attention=attention,
        lora_rank=k.positive("lora_rank", 8), lora_target=lora_target, lora_dropout=k.get("lora_dropout", float, 0.0),
        freeze_trainable_layers=k.get("freeze_trainable_layers", int, 2), quant_bits=bits,
        double_quant=k.get("double_quantization", bool, True), zero=zero, offload_optimizer=offload,
        fused_loss=k.get("enable_liger_kernel", bool, False),
    )
    if optim not in OPTIM:
        notes.append(f"optim '{optim}' is planned as AdamW")
    hyper = read_hyper(k, epochs="num_train_epochs", epochs_default=3.0, scheduler="lr_scheduler_type",
                       scheduler_default="linear", fp16=k.get("fp16", bool, False), bf16=k.get("bf16", bool, False))
    datasets = k.get("dataset", (str, list), "")
    data = DataInfo(datasets=[d.strip() for d in (datasets.split(",") if isinstance(datasets, str) else datasets)
                              if d and d.strip()],
                    dataset_dir=k.get("dataset_dir", str, "data"), max_samples=k.get("max_samples", int),
                    val_size=k.get("val_size", float, 0.0))
    return RunConfig(path=path, format="llamafactory", model=model, plan=plan, hyper=hyper,
                     data=_resolve_data(data, base), notes=notes)


def _resolve_data(data: DataInfo, base: Path) -> DataInfo:
    """Find the files behind dataset names (dataset_dir/dataset_info.json) and count them."""
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
            count += count_records(target)
    samples = count or None
    if data.max_samples:
        samples = min(samples, data.max_samples * max(1, len(data.datasets))) if samples else None
    return data.model_copy(update={"files": files, "samples": samples})


FRAMEWORK = Framework(
    name="llamafactory", read=read, model_key="model_name_or_path",
    signature=frozenset({"finetuning_type", "stage", "cutoff_len", "lora_target", "quantization_bit", "template"}),
    recognised=RECOGNISED, unwritable=UNWRITABLE, method_keys=method_keys,
    fix_values={"gradient_checkpointing": lambda on: not on,  # the key is disable_gradient_checkpointing
                "attention": FLASH_ATTN_BACK.__getitem__,
                "precision": lambda precision: {**precision_keys(precision), "pure_bf16": precision == "bf16"}},
    default_lora_alpha=lambda rank: 2 * rank,  # LLaMA-Factory's FinetuningArguments: lora_rank * 2
)
