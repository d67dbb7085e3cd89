"""A plan written out as a LLaMA-Factory config and its DeepSpeed JSON (the TUI's export)."""

from __future__ import annotations

from typing import Any

from planner import fields
from planner.configs.common import OPTIM_BACK, Hyper
from planner.configs.fix import config_changes_for, yaml_scalar
from planner.configs.llamafactory import FLASH_ATTN_BACK
from planner.errors import FtplanError
from planner.methods import peft_all_linear
from planner.params import ALL_LINEAR
from planner.plan import Plan
from planner.spec import ModelSpec


def deepspeed_json(plan: Plan) -> dict:
    """A DeepSpeed config with the plan's ZeRO stage and offload, "auto" elsewhere (HF Trainer fills those in)."""
    zero: dict[str, Any] = {"stage": plan.zero, "overlap_comm": True, "contiguous_gradients": True}
    if plan.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    return {"train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto",
            "gradient_accumulation_steps": "auto", "gradient_clipping": "auto",
            "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"}, "zero_optimization": zero}


# LLaMA-Factory's demo data sets (data/dataset_info.json) in the format each stage reads, for the default export
STAGE_DATASETS = {"dpo": "dpo_en_demo", "orpo": "dpo_en_demo", "simpo": "dpo_en_demo", "rm": "dpo_en_demo",
                  "kto": "kto_en_demo", "pt": "c4_demo", "ppo": "alpaca_en_demo"}


def llamafactory_yaml(model: str, plan: Plan, hyper: Hyper | None = None, dataset: str = "identity",
                      deepspeed_file: str | None = None, spec: ModelSpec | None = None) -> str:
    """A LLaMA-Factory training config for `plan`, with the seed's key names and sections.

    With ZeRO (`plan.zero`), `deepspeed_file` names the DeepSpeed JSON (see `deepspeed_json`) to write beside it.
    peft's `all-linear` is written as the module names it stands for in `spec` (LLaMA-Factory hands peft a
    list, so the shorthand would match nothing); without a spec that target cannot be exported. The stage is
    LLaMA-Factory's (ORPO and SimPO are `stage: dpo` with their `pref_loss`); GRPO, which LLaMA-Factory does
    not have, cannot be exported. With the default `dataset`, a preference stage gets a demo data set of its
    format.
    """
    hyper = hyper or Hyper(learning_rate=1e-4 if plan.method in ("lora", "qlora") else 1e-5, warmup_ratio=0.1,
                           lr_scheduler="cosine")
    method = "lora" if plan.method == "qlora" else plan.method
    if dataset == "identity":
        dataset = STAGE_DATASETS.get(plan.stage, dataset)
    lines = ["### model", f"model_name_or_path: {model}"]
    if plan.method == "qlora":
        lines.append(f"quantization_bit: {plan.base_bits}")
        if not plan.double_quant:
            lines.append("double_quantization: false")
    lines += ["", "### method", *_stage_lines(model, plan, method), "do_train: true", f"finetuning_type: {method}"]
    if method == "lora":
        lines += [f"lora_rank: {plan.lora_rank}", f"lora_target: {_lora_target(plan, spec)}"]
        if plan.lora_dropout:
            lines.append(f"lora_dropout: {plan.lora_dropout}")
    if method == "freeze":
        lines.append(f"freeze_trainable_layers: {plan.freeze_trainable_layers}")
    if plan.fused_loss:
        lines.append("enable_liger_kernel: true")
    cutoff = plan.seq_len
    if plan.stage == "ppo":  # cutoff_len caps the prompt; the response is generated up to max_new_tokens
        completion = plan.max_completion_len or plan.seq_len // 2
        cutoff = plan.seq_len - completion
    lines += ["", "### dataset", f"dataset: {dataset}", f"cutoff_len: {cutoff}"]
    if plan.stage == "ppo":
        lines.append(f"max_new_tokens: {plan.seq_len - cutoff}")
    lines += ["", "### train",
              f"per_device_train_batch_size: {plan.batch_size}",
              f"gradient_accumulation_steps: {plan.grad_accum}",
              f"learning_rate: {yaml_scalar(hyper.learning_rate or 1e-4)}",
              f"num_train_epochs: {hyper.epochs}", f"lr_scheduler_type: {hyper.lr_scheduler}",
              f"warmup_ratio: {hyper.warmup_ratio}"]
    if hyper.max_grad_norm is not None:
        lines.append(f"max_grad_norm: {hyper.max_grad_norm}")
    lines.append(f"optim: {OPTIM_BACK[plan.optimizer]}")
    if plan.precision in ("bf16", "bf16-mixed"):
        lines.append("bf16: true")
    if plan.precision == "bf16":
        lines.append("pure_bf16: true")
    if plan.precision == "fp16-mixed":
        lines.append("fp16: true")
    if not plan.gradient_checkpointing:
        lines.append("disable_gradient_checkpointing: true")
    lines.append(f"flash_attn: {FLASH_ATTN_BACK[plan.attention]}")
    if plan.zero:
        lines.append(f"deepspeed: {deepspeed_file or f'ds_z{plan.zero}_config.json'}")
    other = _other_settings(plan)
    if other:
        lines += ["", "### other"] + [f"{k}: {yaml_scalar(v)}" for k, v in other.items()]
    return "\n".join(lines) + "\n"


def _stage_lines(model: str, plan: Plan, method: str) -> list[str]:
    """The stage as LLaMA-Factory's keys (hparams/finetuning_args.py), with a comment where the plan asks for
    something LLaMA-Factory cannot do."""
    stage = plan.stage
    if stage == "grpo":
        raise FtplanError("LLaMA-Factory has no GRPO stage (its stages: pt, sft, rm, ppo, dpo, kto); export a "
                          "GRPO plan as a TRL or axolotl config", field="stage")
    if stage in ("orpo", "simpo"):
        return ["stage: dpo", f"pref_loss: {stage}"]
    lines = [f"stage: {stage}"]
    if stage not in ("dpo", "kto", "ppo"):
        return lines
    if plan.reference_model and method in ("lora", "oft"):
        # trainer_utils.py create_ref_model: ref_model loads a separate frozen copy even with LoRA
        lines.append(f"ref_model: {model}")
    elif plan.reference_model is False or plan.precompute_ref_log_probs:
        why = "reference_model false" if plan.reference_model is False else "precompute_ref_log_probs"
        keeps = ("the policy with its adapter disabled" if method in ("lora", "oft") else "a frozen copy of the "
                 "model")
        lines.append(f"# ftplan planned {why}; LLaMA-Factory's {stage} keeps {keeps} as its reference")
    if stage == "ppo":
        if plan.vllm != "off":
            lines.append(f"# ftplan planned vllm {plan.vllm}; LLaMA-Factory's PPO generates with transformers")
        # finetuning_args.py: PPO needs a reward model; a LoRA one only with finetuning_type lora
        kind = "lora" if method == "lora" else "full"
        lines += [f"reward_model: saves/reward_model  # set this: the reward model ({kind}) PPO scores with",
                  f"reward_model_type: {kind}"]
    return lines


def _lora_target(plan: Plan, spec: ModelSpec | None) -> str:
    if plan.lora_target.strip().lower() != ALL_LINEAR:
        return plan.lora_target
    if spec is None:
        raise FtplanError("all-linear is peft's shorthand, which LLaMA-Factory cannot pass on: name the modules",
                          field="lora_target")
    return ",".join(peft_all_linear(spec))


# written above, in LLaMA-Factory's sections
_SECTIONED = frozenset({"stage", "method", "quant_bits", "double_quant", "lora_rank", "lora_target", "lora_dropout",
                        "freeze_trainable_layers", "fused_loss", "seq_len", "batch_size", "grad_accum", "optimizer",
                        "precision", "gradient_checkpointing", "attention", "zero", "offload_optimizer"})


def _other_settings(plan: Plan) -> dict[str, Any]:
    """Every other plan field with a LLaMA-Factory key that differs from its default (planner.fields)."""
    changed = {name: value for name, value in fields.changed_settings(plan).items()
               if name not in _SECTIONED and "llamafactory" in fields.setting(name).keys}
    return config_changes_for("llamafactory", changed)
