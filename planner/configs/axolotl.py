"""axolotl configs (`axolotl train config.yml`): keys and defaults."""

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
    "output_dir", "logging_steps", "save_steps", "saves_per_epoch", "evals_per_epoch", "wandb_project",
    "wandb_entity", "wandb_name", "wandb_watch", "wandb_log_model", "special_tokens", "tokenizer_type",
    "model_type", "strict", "dataset_prepared_path", "chat_template", "weight_decay",
    "tf32", "logging_dir", "resume_from_checkpoint", "local_rank", "xformers_attention",
    "early_stopping_patience", "train_on_inputs", "group_by_length", "pad_to_sequence_len",
    "eval_sample_packing", "hub_model_id", "trust_remote_code", "seed", "lora_model_dir", "lora_fan_in_fan_out",
    "gptq", "auto_resume_from_checkpoints", "debug", "fsdp", "fsdp_config", "save_safetensors",
    "eval_batch_size", "sample_packing", "lora_modules_to_save", "peft_use_rslora",
})

# Planner flags -> keys, to report a Plan validation error by the name the user wrote.
# Key for each change the advice can make.
# DeepSpeed settings live in a JSON file the key points at: not a value --fix can write
UNWRITABLE = frozenset({"zero", "offload_optimizer"})


def attention_keys(kernel: str) -> dict[str, bool]:
    return {"flash_attention": kernel == "flash", "sdp_attention": kernel == "sdpa"}


def target_keys(target: str) -> dict:
    """axolotl's lora_target_linear for every linear layer, else lora_target_modules."""
    if target == "all":
        return {"lora_target_linear": True}
    return {"lora_target_modules": [t.strip() for t in target.split(",") if t.strip()]}


def method_keys(method: str) -> dict:
    return {"adapter": method, **({"load_in_4bit": True} if method == "qlora" else {})}


def _truthy(value) -> bool:
    """axolotl writes some switches as strings ("true", "false", "unsloth", "offload")."""
    if isinstance(value, str):
        return value.strip().lower() not in ("false", "no", "off", "0", "")
    return bool(value)


def read(keys: Keys, base: Path) -> RunConfig:
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
    zero, offload, ds_note = read_deepspeed(k, base)
    targets = "all" if k.get("lora_target_linear", bool, False) else k.joined("lora_target_modules", "all")
    bf16 = k.get("bf16", (bool, str), False)
    bf16 = bf16 == "auto" or _truthy(bf16)
    fp16 = k.get("fp16", bool, False)
    attention = "flash" if k.get("flash_attention", bool, False) else \
        "sdpa" if k.get("sdp_attention", bool, False) else "eager"
    optim = k.get("optimizer", str, "adamw_torch_fused")
    plan = build_plan(
        "axolotl", path, method="lora" if adapter else "full", quant_bits=4 if four else 8 if eight else None,
        precision=precision_of(bf16, fp16, False, path), optimizer=OPTIM.get(optim, "adamw"),
        batch_size=k.positive("micro_batch_size", 1), seq_len=k.positive("sequence_len", 2048),
        grad_accum=k.positive("gradient_accumulation_steps", 1),
        gradient_checkpointing=_truthy(k.get("gradient_checkpointing", (bool, str), False)), attention=attention,
        lora_rank=k.positive("lora_r", 8), lora_target=targets, lora_dropout=k.get("lora_dropout", float, 0.0),
        zero=zero, offload_optimizer=offload, fused_loss=k.get("liger_fused_linear_cross_entropy", bool, False),
    )
    hyper = read_hyper(k, epochs="num_epochs", epochs_default=1.0, scheduler="lr_scheduler",
                       scheduler_default="cosine", fp16=fp16, bf16=bf16)
    raw = k.get("datasets", list, [])
    data = DataInfo(datasets=[str(d.get("path")) for d in raw if isinstance(d, dict)],
                    val_size=k.get("val_set_size", float, 0.0))
    notes = [ds_note] if ds_note else []
    return RunConfig(path=path, format="axolotl", model=model or "", plan=plan, hyper=hyper, data=data, notes=notes)


FRAMEWORK = Framework(
    name="axolotl", read=read, model_key="base_model", signature=frozenset({"base_model"}),
    recognised=RECOGNISED, unwritable=UNWRITABLE, method_keys=method_keys,
    fix_values={"precision": precision_keys, "attention": attention_keys, "lora_target": target_keys,
                "quant_bits": lambda bits: {"load_in_4bit": bits == 4, "load_in_8bit": bits == 8}},
)
