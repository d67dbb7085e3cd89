"""A plan as a TRL config: the YAML `trl sft|dpo|kto|reward|grpo --config FILE` reads.

Keys and defaults from TRL's source (huggingface/trl 1.16 and f2cd577): trl/trainer/model_config.py
(ModelConfig), the trainers' configs (sft_config.py, dpo_config.py, kto_config.py, reward_config.py,
grpo_config.py, each a transformers TrainingArguments), scripts/utils.py (ScriptArguments; TrlParser hands every
key no dataclass takes to `accelerate launch`, so `num_processes` launches that many processes) and
cli/commands/training.py (the commands). transformers 5's TrainingArguments have no warmup_ratio: a float
warmup_steps below 1 is the share of the steps.
"""

from __future__ import annotations

import shlex
from typing import Any

from planner import liger, param_targets
from planner.configs.common import LAYERWISE_OPTIMIZERS, trainer_optim_keys
from planner.configs.export_common import (
    DATASET,
    ExportInput,
    Lines,
    Rendered,
    deepspeed_comment,
    module_targets,
    parallel_runs,
    placeholder,
    refuse_peft_method,
    reset_unused,
)
from planner.configs.hf import ATTN_BACK
from planner.errors import FtplanError
from planner.plan import Plan
from planner.stages import has_reference, uses_fused_head

# The `trl` command of each stage (cli/commands/__init__.py) and the config class it reads
COMMANDS = {"sft": ("sft", "SFTConfig"), "pt": ("sft", "SFTConfig"), "dpo": ("dpo", "DPOConfig"),
            "kto": ("kto", "KTOConfig"), "rm": ("reward", "RewardConfig"), "grpo": ("grpo", "GRPOConfig")}
DATA = {"sft": "prompt/completion or messages", "pt": "text", "dpo": "prompt/chosen/rejected",
        "kto": "prompt/completion/label", "rm": "chosen/rejected", "grpo": "prompt"}
GRPO_COMPLETION = 512  # grpo_config.py max_completion_length
TRL_MAX_LENGTH = 1024  # sft_config.py: max_length, what the reader plans when it is null
GRPO_PROMPT = 512  # planner.configs.common.ASSUMED_PROMPT: what preflight assumes when no prompt cap is set
# model_config.py defaults, which the reader applies to a file that leaves the LoRA keys out
UNUSED_DEFAULTS = {"lora_rank": 16, "lora_dropout": 0.05, "lora_target": "q_proj,v_proj", "double_quant": False}


def _check(plan: Plan) -> None:
    if plan.stage in ("orpo", "simpo"):
        raise FtplanError(f"TRL 1.x has ORPO and CPO/SimPO only in trl.experimental, with no `trl` command to run "
                          f"a config; export {plan.stage} as a LLaMA-Factory or axolotl config", field="stage")
    if plan.stage == "ppo":
        raise FtplanError("TRL 1.x has no PPO trainer (its online RL trainers are GRPO and RLOO); export PPO as a "
                          "LLaMA-Factory config, or plan GRPO", field="stage")
    if plan.method == "freeze":
        raise FtplanError("TRL trains full models or PEFT adapters, with no layer freezing; export freeze tuning "
                          "as a LLaMA-Factory config", field="method")
    refuse_peft_method(plan, "trl", "use_peft builds LoRA only")
    if plan.optimizer_in_backward and plan.optimizer not in LAYERWISE_OPTIMIZERS:
        raise FtplanError("is torchtune's; TRL cannot step the optimizer inside backward: turn it off to export",
                          field="optimizer_in_backward")


def _precision(plan: Plan, runs: dict) -> tuple[str, bool, bool]:
    """ModelConfig `dtype` (the weights; float32 by default) and the Trainer's bf16/fp16 autocast, as the reader
    plans them: LoRA trains fp32 adapters on a 16-bit base; a full fine-tune keeps fp32 weights under autocast,
    and trains 16-bit weights as they are only without DeepSpeed (whose bf16 mode keeps fp32 master weights)."""
    adapters = plan.method in ("lora", "qlora")
    if plan.precision == "fp32":
        return "float32", False, False
    if plan.precision == "bf16-mixed":
        return ("bfloat16" if adapters else "float32"), True, False
    if plan.precision == "fp16-mixed":
        return ("float16" if adapters else "float32"), False, True
    if plan.precision == "fp16":  # no fp16: true, whose gradient scaler refuses fp16 gradients
        return "float16", False, False
    if adapters:
        return "bfloat16", False, False  # bf16 weights and adapters, no autocast
    if plan.zero:
        runs["precision"] = ("bf16-mixed", "ftplan planned pure bf16 weights; under DeepSpeed the Trainer keeps "
                                           "fp32 master weights (bf16 mixed precision)")
    return "bfloat16", True, False


def render(x: ExportInput) -> Rendered:
    plan, hyper = x.plan, x.hyper
    _check(plan)
    runs: dict[str, tuple[Any, str | None]] = {}
    command, config = COMMANDS[plan.stage]
    adapters = plan.method in ("lora", "qlora")
    dtype, bf16, fp16 = _precision(plan, runs)
    if plan.weights_dtype:  # ModelConfig dtype loads the base and sets bnb_4bit_compute_dtype (trl/trainer/utils.py)
        dtype = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[plan.weights_dtype]
    out = Lines()
    out.section("model (ModelConfig)")
    out.key("model_name_or_path", x.model)
    out.key("dtype", dtype, "the weights as loaded")
    out.key("attn_implementation", ATTN_BACK[plan.attention])
    out.key("use_peft", adapters)
    if adapters:
        target = module_targets(plan, x.spec)
        written = target if isinstance(target, str) else ",".join(target)
        if written != plan.lora_target:
            runs["lora_target"] = (written, None)
        out.key("lora_r", plan.lora_rank)
        out.key("lora_alpha", 2 * plan.lora_rank)
        out.key("lora_dropout", plan.lora_dropout)
        out.key("lora_target_modules", target)
        if plan.lora_target_parameters:  # get_peft_config: peft's target_parameters
            out.key("lora_target_parameters", param_targets.split(plan.lora_target_parameters))
        if plan.use_dora:
            out.key("use_dora", True)
        if hyper.use_rslora:
            out.key("use_rslora", True)
        if plan.stage == "rm":
            out.key("lora_task_type", "SEQ_CLS", "the reward model's score head")
    if plan.method == "qlora":
        out.key(f"load_in_{plan.base_bits}bit", True)
        if plan.base_bits == 4:
            out.key("bnb_4bit_quant_type", "nf4")
            out.key("use_bnb_nested_quant", plan.double_quant)
            if plan.zero == 3:  # the 4-bit weights are stored as 16-bit so that ZeRO-3 can shard them
                out.key("bnb_4bit_quant_storage", dtype)
        if plan.quant_bits is None:
            runs["quant_bits"] = (plan.base_bits, None)
    out.section("data (ScriptArguments)")
    dataset = x.dataset
    out.key("dataset_name", dataset, f"REPLACE: a Hub dataset id or a local folder of {DATA[plan.stage]} records"
            if dataset == DATASET else None)
    if plan.stage == "grpo":
        out.key("reward_funcs", [placeholder("reward function")],
                "REPLACE: TRL's accuracy_reward, think_format_reward, ... or your own function's import path")
    out.section(f"training ({config})")
    out.key("output_dir", f"outputs/{x.name}-{plan.method}-{plan.stage}", "relative to where you launch")
    out.key("per_device_train_batch_size", plan.batch_size,
            "completions per GPU" if plan.stage == "grpo" else None)
    out.key("gradient_accumulation_steps", plan.grad_accum)
    if plan.stage == "grpo":
        _grpo(out, plan, runs)
    else:
        _packing(out, plan, runs)
        if plan.max_completion_len is not None:
            runs["max_completion_len"] = (None, f"ftplan planned {plan.max_completion_len} completion tokens; "
                                                f"TRL's {config} caps only max_length")
    if plan.stage in ("dpo", "kto"):
        _reference(out, plan, runs)
    out.key("learning_rate", hyper.learning_rate or 1e-4)
    out.key("num_train_epochs", hyper.epochs)
    out.key("lr_scheduler_type", hyper.lr_scheduler)
    out.key("warmup_steps", hyper.warmup_ratio, "below 1: the share of the steps (transformers 5)")
    if hyper.max_grad_norm is not None:
        out.key("max_grad_norm", hyper.max_grad_norm)
    for key, value in trainer_optim_keys(plan, "TRL").items():
        out.key(key, value)
    if plan.optimizer == "sgd-momentum":
        runs["optimizer"] = ("sgd", "ftplan planned SGD with momentum; optim sgd keeps none")
    out.key("bf16", bf16)
    out.key("fp16", fp16)
    out.key("gradient_checkpointing", plan.gradient_checkpointing)
    _offload(out, plan, runs)
    _fused(out, plan, runs)
    if x.deepspeed is not None:
        out.key("deepspeed", str(x.deepspeed), deepspeed_comment(plan, "the Trainer"))
    out.section("launch (the TRL CLI hands this to accelerate launch)")
    out.key("num_processes", plan.gpus, "GPUs: one training process each")
    runs |= parallel_runs(plan, (), "the TRL CLI's config carries no tensor, pipeline, expert or context parallel sizes "
                          "(accelerate's parallelism_config): exported as data parallel")
    runs |= {name: (value, None) for name, value in reset_unused(plan, UNUSED_DEFAULTS).items() if name not in runs}
    if plan.framework != "trl":
        runs["framework"] = ("trl", None if plan.stage != "rm" else "TRL's reward model has a one-wide score head "
                                                                     "(planned as TRL's)")
    launch = f"trl {command} --config {shlex.quote(str(x.path))}"
    return Rendered(lines=out.out, launch=launch, runs=runs,
                    preflight=[] if plan.stage == "sft" else ["--stage", plan.stage])


def _packing(out: Lines, plan: Plan, runs: dict) -> None:
    """max_length, packing and padding_free as SFTTrainer takes them: its default packing_strategy bfd makes packed
    batches padding-free, and padding_free without packing needs max_length null (sft_trainer.py refuses a cap it
    could not apply), so such a file has no length for the reader to read back: 1024, TRL's default."""
    if plan.mask_4d:
        runs["mask_4d"] = (False, "TRL keeps packed sequences apart without a collator's 4D mask")
    if plan.padding_free and not plan.packing:
        out.key("max_length", None, f"padding_free without packing: TRL refuses a cap; truncate your data to "
                                    f"{plan.seq_len} tokens")
        out.key("padding_free", True, "the micro-batch flattened into one row")
        if plan.seq_len != TRL_MAX_LENGTH:
            runs["seq_len"] = (TRL_MAX_LENGTH, None)
        return
    out.key("max_length", plan.seq_len)
    if plan.packing:
        out.key("packing", True, "bfd: padding-free rows of max_length" if plan.padding_free else None)
        if not plan.padding_free:
            out.key("packing_strategy", "wrapped", "padded rows of max_length (bfd would make them padding-free)")


def _grpo(out: Lines, plan: Plan, runs: dict) -> None:
    """GRPOConfig: completions per prompt, their length, the KL beta (a reference model with full tuning) and
    vLLM. TRL 1.x truncates no prompt: vllm_max_model_length caps prompt and completion with vLLM; without it
    preflight assumes 512-token prompts."""
    completion = plan.max_completion_len or GRPO_COMPLETION
    if plan.max_completion_len is None:
        runs["max_completion_len"] = (completion, None)
    out.key("num_generations", plan.num_generations)
    out.key("max_completion_length", completion)
    reference = has_reference(plan)
    out.key("beta", 0.04 if reference else 0.0, "the KL weight; above 0 a reference model" if reference else
            "the KL weight: 0 keeps no reference model")
    if reference and plan.method != "full":
        runs["reference_model"] = (None, "with an adapter, TRL takes the reference log-probs from the policy with "
                                         "its adapter disabled: no reference copy")
    elif plan.reference_model is None:
        runs["reference_model"] = (reference, None)
    out.key("use_vllm", plan.vllm != "off")
    if plan.vllm != "off":
        out.key("vllm_mode", plan.vllm)
        if plan.vllm == "colocate":
            out.key("vllm_gpu_memory_utilization", plan.vllm_gpu_memory_utilization)
        if plan.seq_len > completion:
            out.key("vllm_max_model_length", plan.seq_len, "prompt and completion")
    elif plan.seq_len != GRPO_PROMPT + completion:
        runs["seq_len"] = (GRPO_PROMPT + completion, f"TRL 1.x truncates no prompt: keep prompts within "
                                                     f"{plan.seq_len - completion} tokens to stay within the "
                                                     f"{plan.seq_len} planned (preflight assumes {GRPO_PROMPT})")
    if plan.vllm != "colocate":
        runs["vllm_gpu_memory_utilization"] = (Plan().vllm_gpu_memory_utilization, None)


def _reference(out: Lines, plan: Plan, runs: dict) -> None:
    """DPO and KTO keep a frozen reference copy for full tuning, disable the adapter for PEFT, and keep none
    with precompute_ref_log_probs (dpo_trainer.py, kto_trainer.py)."""
    if plan.precompute_ref_log_probs:
        out.key("precompute_ref_log_probs", True)
    if plan.reference_model is None:
        return
    keeps = has_reference(plan.model_copy(update={"reference_model": None}))
    if plan.reference_model != keeps:
        what = "a frozen reference copy" if plan.reference_model else "no reference model"
        runs["reference_model"] = (None, f"ftplan planned {what}; TRL's {plan.stage.upper()} decides by the "
                                         "method (a copy for full tuning, the adapter disabled for PEFT)")
    else:
        runs["reference_model"] = (None, None)


def _offload(out: Lines, plan: Plan, runs: dict) -> None:
    """activation_offloading (SFT, DPO, KTO and reward configs: trl/models/activation_offloading.py), or the
    Trainer's checkpointing with `offload` (transformers trainer.py pops it from the kwargs)."""
    if plan.activation_offload == "checkpoint":
        out.block("gradient_checkpointing_kwargs", "the checkpointed layers' inputs in host memory")
        out.key("offload", True, indent=2)
    elif plan.activation_offload == "saved":
        if plan.stage in ("grpo", "ppo"):
            runs["activation_offload"] = ("off", "TRL's GRPO has no activation_offloading")
        else:
            out.key("activation_offloading", True, "every saved activation in host memory")


def _fused(out: Lines, plan: Plan, runs: dict) -> None:
    """SFT fuses the loss with Liger (use_liger_kernel); DPO, KTO and GRPO always compute log-probs through
    TRL's fused LM head; the reward model has a score head and no logits over the vocabulary."""
    planned = uses_fused_head(plan)
    sft = plan.stage in ("sft", "pt")
    if plan.liger_kernels or (sft and planned):
        out.key("use_liger_kernel", True, "Liger's fused linear cross-entropy: no full logits" if sft and planned
                else "Liger's kernels as planned")
        # liger_kernel_config is the apply function's keyword arguments; TRL's other trainers refuse the fused loss
        config = {**liger.apply_kwargs(plan.liger_kernels), **({"fused_linear_cross_entropy": planned} if sft else {})}
        if config:
            out.block("liger_kernel_config", "apply_liger_kernel_to_<model type>'s keyword arguments")
            for key, value in config.items():
                out.key(key, value, indent=2)
        ran = liger.from_apply_kwargs(config, loss=sft and not planned)
        if ran != plan.liger_kernels:
            runs["liger_kernels"] = (ran, f"TRL's {plan.stage.upper()} never calls the model's loss: Liger's plain "
                                          "cross-entropy does not run")
    runs_value = planned if sft else plan.stage in ("dpo", "kto", "grpo")
    if runs_value == plan.fused_loss:
        return
    why = None
    if runs_value != planned:
        why = (f"TRL's {plan.stage.upper()} computes log-probs through its fused LM head, without the full "
               "logits the plan counts (it planned LLaMA-Factory's trainer; --framework trl plans TRL's)"
               if runs_value else "TRL's reward model scores with a one-wide head; Liger's fused loss "
               "does not apply")
    runs["fused_loss"] = (runs_value, why)
