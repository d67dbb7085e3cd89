"""A plan as an axolotl config (`axolotl train FILE`).

Keys and defaults from axolotl's source (axolotl-ai-cloud/axolotl at 067b021): the schema
(src/axolotl/utils/schemas/config.py, peft.py, trl.py, vllm.py), the dtype it loads the model in
(utils/config/__init__.py resolve_dtype), the dataset strategies (prompt_strategies/: chat_template for SFT,
chat_template.default for DPO, chat_template.argilla for ORPO, chatml.argilla for KTO,
bradley_terry.chat_template for reward models), and the launcher (cli/utils/train.py: `accelerate launch`, with
its arguments after `--`). axolotl opens a `deepspeed:` path from the directory it is launched in.
"""

from __future__ import annotations

import shlex
from typing import Any

from planner import liger, lora_kernels, param_targets
from planner.configs.axolotl import LIGER_KERNELS, LORA_KERNEL_KEYS
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

# `rl` of each stage (schemas/enums.py RLType); sft and pt have none, rm is reward_model: true
RL = {"dpo": "dpo", "orpo": "orpo", "simpo": "simpo", "kto": "kto", "grpo": "grpo"}
DATASET_TYPES = {"sft": "chat_template", "pt": "completion", "dpo": "chat_template.default",
                 "simpo": "chat_template.default", "orpo": "chat_template.argilla", "kto": "chatml.argilla",
                 "rm": "bradley_terry.chat_template", "grpo": f"{placeholder('module')}.transform"}
GRPO_COMPLETION = 512  # what the plan assumes unset; written, since axolotl hands TRL None when it is unset
LIGER = "axolotl.integrations.liger.LigerPlugin"


def _check(plan: Plan) -> None:
    if plan.stage == "ppo":
        raise FtplanError("axolotl has no PPO trainer (its RL trainers: dpo, ipo, orpo, simpo, kto, grpo); export "
                          "PPO as a LLaMA-Factory config, or plan GRPO", field="stage")
    if plan.method == "freeze":
        raise FtplanError("axolotl freezes by parameter name patterns (unfrozen_parameters), not by layer count; "
                          "export freeze tuning as a LLaMA-Factory config", field="method")
    refuse_peft_method(plan, "axolotl", "adapter lora or qlora")
    if plan.optimizer_in_backward and plan.optimizer not in LAYERWISE_OPTIMIZERS:
        raise FtplanError("is torchtune's; axolotl cannot step the optimizer inside backward: turn it off to "
                          "export", field="optimizer_in_backward")
    if plan.precision == "fp16-mixed" and plan.method == "full" and not plan.zero:
        raise FtplanError("fp16-mixed for a full fine-tune without ZeRO: axolotl loads the weights in float16 and "
                          "the Trainer's gradient scaler refuses fp16 gradients; use bf16-mixed or a ZeRO stage",
                          field="precision")


def _precision(out: Lines, plan: Plan, runs: dict) -> None:
    """bf16 / fp16 (resolve_dtype loads the weights in that dtype; bf16's default is auto) and bfloat16 for 16-bit
    weights without autocast. A full fine-tune trains the 16-bit weights it loads, with fp32 master weights only
    under DeepSpeed or FSDP."""
    full = plan.method == "full"
    if plan.precision == "fp32":
        out.key("bf16", False, "axolotl's default is auto (bf16 where the GPU has it)")
        return
    if plan.precision == "fp16-mixed":
        out.key("bf16", False)
        out.key("fp16", True)
        return
    if plan.weights_dtype:  # resolve_dtype loads the base in the bf16/fp16 flag's dtype
        runs["weights_dtype"] = (None, "axolotl loads the base in the dtype bf16/fp16 gives, with no key for another")
    if plan.precision == "fp16":  # resolve_dtype loads float16; no fp16: true, whose gradient scaler refuses it
        out.key("bf16", False)
        out.key("float16", True, "fp16 weights, no autocast and no loss scaling")
        return
    if plan.precision == "bf16" and not full:
        out.key("bf16", False)
        out.key("bfloat16", True, "bf16 weights and adapters, no autocast")
        return
    out.key("bf16", True)
    if full and not plan.zero and plan.precision == "bf16-mixed":
        runs["precision"] = ("bf16", "ftplan planned fp32 master weights under bf16 autocast; axolotl loads the "
                                     "weights in bf16 and trains them as they are (fp32 masters only under "
                                     "DeepSpeed or FSDP)")
    if full and plan.zero and plan.precision == "bf16":
        runs["precision"] = ("bf16-mixed", "ftplan planned pure bf16 weights; under DeepSpeed the Trainer keeps "
                                           "fp32 master weights (bf16 mixed precision)")


def render(x: ExportInput) -> Rendered:
    plan, hyper = x.plan, x.hyper
    _check(plan)
    runs: dict[str, tuple[Any, str | None]] = {}
    out = Lines()
    out.section("model")
    out.key("base_model", x.model)
    if plan.method in ("lora", "qlora"):
        _adapter(out, x, runs)
    _precision(out, plan, runs)
    out.key("attn_implementation", ATTN_BACK[plan.attention])
    out.section("data")
    out.block("datasets")
    out.out.append(f"  - path: {x.dataset}" + ("  # REPLACE: a Hub dataset id or a local file, and its type"
                                               if x.dataset == DATASET else ""))
    out.key("type", DATASET_TYPES[plan.stage], "axolotl's record format for this stage", indent=4)
    out.key("chat_template", "tokenizer_default_fallback_chatml", "the tokenizer's own, else ChatML")
    out.key("sequence_len", plan.seq_len, "prompt and completion" if plan.stage == "grpo" else None)
    _packing(out, plan, runs)
    _stage(out, plan, runs)
    out.section("output")
    out.key("output_dir", f"./outputs/{x.name}-{plan.method}-{plan.stage}", "relative to where you launch")
    out.section("train")
    out.key("micro_batch_size", plan.batch_size, "completions per GPU" if plan.stage == "grpo" else None)
    out.key("gradient_accumulation_steps", plan.grad_accum)
    out.key("num_epochs", hyper.epochs)
    out.key("learning_rate", hyper.learning_rate or 1e-4)
    out.key("lr_scheduler", hyper.lr_scheduler)
    out.key("warmup_ratio", hyper.warmup_ratio)
    if hyper.max_grad_norm is not None:
        out.key("max_grad_norm", hyper.max_grad_norm)
    for key, value in trainer_optim_keys(plan, "axolotl").items():
        out.key("optimizer" if key == "optim" else key, value)
    if plan.optimizer == "sgd-momentum":
        runs["optimizer"] = ("sgd", "ftplan planned SGD with momentum; optimizer sgd keeps none")
    _checkpointing(out, plan, runs)
    _fused(out, plan, runs)
    if x.deepspeed is not None:
        out.key("deepspeed", str(x.deepspeed), deepspeed_comment(plan, "axolotl"))
    _parallel(out, plan, runs)
    runs |= {name: (value, None) for name, value in reset_unused(plan, {}).items() if name not in runs}
    if plan.framework != "trl":
        runs["framework"] = ("trl", None if plan.stage not in ("orpo", "simpo", "rm") else
                             f"axolotl runs {plan.stage} with TRL's trainer (planned as TRL's)")
    file = shlex.quote(str(x.path))
    return Rendered(lines=out.out, launch=f"axolotl train {file} --launcher accelerate -- --num_processes {plan.gpus}",
                    runs=runs, preflight=["--stage", "pt"] if plan.stage == "pt" else [])


def _adapter(out: Lines, x: ExportInput, runs: dict) -> None:
    """adapter lora / qlora (schemas/peft.py: qlora needs load_in_4bit; 8-bit bases are adapter lora with
    load_in_8bit) and the LoRA keys; lora_target_linear adapts every linear layer (loaders/adapter.py)."""
    plan = x.plan
    if plan.method == "qlora":
        out.key("adapter", "qlora" if plan.base_bits == 4 else "lora")
        out.key(f"load_in_{plan.base_bits}bit", True)
        if plan.base_bits == 4 and not plan.double_quant:
            out.block("bnb_config_kwargs")
            out.key("bnb_4bit_use_double_quant", False, indent=2)
        if plan.quant_bits is None:
            runs["quant_bits"] = (plan.base_bits, None)
    else:
        out.key("adapter", "lora")
    out.key("lora_r", plan.lora_rank)
    out.key("lora_alpha", 2 * plan.lora_rank)
    out.key("lora_dropout", plan.lora_dropout)
    if plan.use_dora:
        out.key("peft_use_dora", True)
    _lora_kernels(out, plan, runs)
    if x.hyper.use_rslora:
        out.key("peft_use_rslora", True)
    target = module_targets(plan, x.spec, keep_all=True)
    if plan.quantize_experts:
        if target in ("all", "all-linear"):  # check_quantize_moe_experts refuses lora_target_linear beside it
            runs["quantize_experts"] = (False, "axolotl refuses quantize_moe_experts with lora_target_linear")
        else:
            out.key("quantize_moe_experts", True, "the fused MoE experts quantized as they load")
    if target in ("all", "all-linear"):
        out.key("lora_target_linear", True, "every linear layer but the head")
        if plan.lora_target != "all":
            runs["lora_target"] = ("all", None if target == "all" else
                                   "peft's all-linear also wraps Conv1D and fused MoE experts; axolotl's "
                                   "lora_target_linear wraps nn.Linear layers")
    else:
        out.key("lora_target_modules", target)
        if ",".join(target) != plan.lora_target:
            runs["lora_target"] = (",".join(target), None)
    if plan.lora_target_parameters:  # loaders/adapter.py: peft's target_parameters
        out.key("lora_target_parameters", param_targets.split(plan.lora_target_parameters))


def _lora_kernels(out: Lines, plan: Plan, runs: dict) -> None:
    """Each lora_*_kernel key written, as unset ones are turned on for LoRA (check_auto_enable_lora_kernels);
    axolotl refuses them on 8-bit LoRA and they are planned as peft's layers with DoRA."""
    off = (plan.method == "qlora" and plan.base_bits == 8) or plan.use_dora
    kernels = lora_kernels.applied("" if off else plan.lora_kernels)
    for key, name in LORA_KERNEL_KEYS.items():
        out.key(key, name in kernels)
    if off and plan.lora_kernels:
        runs["lora_kernels"] = ("", "axolotl's LoRA kernels refuse 8-bit LoRA and are not planned with DoRA")


def _packing(out: Lines, plan: Plan, runs: dict) -> None:
    """sample_packing, and multipack_real_batches where the kernel's own choice is not the plan's: with a flash
    kernel axolotl flattens the micro-batch into one row of micro_batch_size x sequence_len, otherwise it keeps the
    rows (core/builders/causal.py); padding-free batches come only with packing."""
    if plan.mask_4d:
        runs["mask_4d"] = (False, "axolotl keeps packed sequences apart without a collator's 4D mask")
    if not (plan.packing or plan.padding_free):
        return
    out.key("sample_packing", True)
    if not plan.packing:
        runs["packing"] = (True, "axolotl makes padding-free batches only by packing (sample_packing)")
    if plan.padding_free != (plan.attention == "flash"):
        out.key("multipack_real_batches", not plan.padding_free,
                "one flattened row per micro-batch" if plan.padding_free else "micro_batch_size rows")


def _stage(out: Lines, plan: Plan, runs: dict) -> None:
    """rl (core/builders/rl.py), reward_model, and the stage's own keys."""
    stage = plan.stage
    if stage == "rm":
        out.key("reward_model", True)
    elif stage in RL:
        out.key("rl", RL[stage])
    if stage == "simpo" and not plan.nll_term:
        out.key("cpo_alpha", 0.0, "no NLL term on the chosen responses")
    if stage == "dpo" and plan.precompute_ref_log_probs:
        out.key("precompute_ref_log_probs", True)
    if stage == "kto" and plan.precompute_ref_log_probs:
        runs["precompute_ref_log_probs"] = (False, "ftplan planned precomputed reference log-probs; axolotl "
                                                   "passes precompute_ref_log_probs to DPO only, so KTO keeps its "
                                                   "reference model")
    if stage in ("dpo", "kto") and plan.reference_model is not None:
        keeps = has_reference(plan.model_copy(update={"reference_model": None}))
        runs["reference_model"] = (None, None if plan.reference_model == keeps else
                                   f"ftplan planned {'a' if plan.reference_model else 'no'} reference model; "
                                   f"axolotl's {stage.upper()} decides by the method")
    if stage == "grpo":
        _grpo(out, plan, runs)
    elif plan.max_completion_len is not None:
        runs["max_completion_len"] = (None, None)


def _grpo(out: Lines, plan: Plan, runs: dict) -> None:
    """The `trl:` section (schemas/trl.py) axolotl hands to TRL's GRPOConfig, and `vllm:` for colocate."""
    completion = plan.max_completion_len or GRPO_COMPLETION
    if plan.max_completion_len is None:
        runs["max_completion_len"] = (completion, None)
    reference = has_reference(plan)
    out.block("trl")
    out.key("beta", 0.04 if reference else 0.0, "the KL weight; 0 keeps no reference model", indent=2)
    out.key("num_generations", plan.num_generations, indent=2)
    out.key("max_completion_length", completion, indent=2)
    out.key("use_vllm", plan.vllm != "off", indent=2)
    if plan.vllm != "off":
        out.key("vllm_mode", plan.vllm, indent=2)
    if plan.fused_loss:
        out.key("use_liger_loss", True, "Liger's fused GRPO loss: no full logits", indent=2)
    out.key("reward_funcs", [placeholder("reward function")], "REPLACE: your reward function's import path",
            indent=2)
    if plan.vllm == "colocate":
        out.block("vllm")
        out.key("gpu_memory_utilization", plan.vllm_gpu_memory_utilization, indent=2)
    else:
        runs["vllm_gpu_memory_utilization"] = (Plan().vllm_gpu_memory_utilization, None)
    if reference and plan.method != "full":
        runs["reference_model"] = (None, "with an adapter, the reference log-probs come from the policy with its "
                                         "adapter disabled: no reference copy")
    elif plan.reference_model is None:
        runs["reference_model"] = (reference, None)


def _checkpointing(out: Lines, plan: Plan, runs: dict) -> None:
    """gradient_checkpointing and activation_offloading, which axolotl accepts only together
    (schemas/validation.py check_activation_offloading_wo_gc); with `true` it decides checkpointing itself: off
    for an adapter, on for a full fine-tune (planner.configs.axolotl._activation_offloading)."""
    mode = plan.activation_offload
    out.key("gradient_checkpointing", plan.gradient_checkpointing or mode != "off")
    if mode == "off":
        return
    out.key("activation_offloading", "hidden_states" if mode == "checkpoint" else True,
            "the checkpointed layers' inputs in host memory" if mode == "checkpoint" else
            "every saved activation in host memory (TRL's offloader)")
    if mode == "saved" and plan.gradient_checkpointing == plan.peft:
        runs["gradient_checkpointing"] = (not plan.peft, "axolotl's activation offloading "
                                          + ("replaces checkpointing for an adapter" if plan.peft else
                                             "keeps checkpointing on for a full fine-tune"))


def _liger_kernels(out: Lines, plan: Plan, runs: dict) -> None:
    """Liger's other kernels, one liger_* key each (LigerPlugin passes them to the model type's apply function);
    axolotl has no key for Liger's defaults, so `default` is written as the decoder's (rope, RMSNorm, GLU)."""
    kernels = set(plan.liger_kernels.split(",")) - {""}
    if liger.DEFAULT in kernels:
        kernels = (kernels - {liger.DEFAULT}) | {"rope", "rms_norm", "glu"}
    if plan.stage not in ("sft", "pt"):
        kernels.discard("cross_entropy")  # the RL trainers call the model without labels
    for key, name in LIGER_KERNELS.items():
        if name in kernels and key != "liger_swiglu":  # liger_swiglu: args.py's deprecated name
            out.key(key, True)
    ran = liger.parse(kernels)
    if ran != plan.liger_kernels:
        runs["liger_kernels"] = (ran, "axolotl names each Liger kernel: the decoder's defaults (rope, RMSNorm, "
                                      "SwiGLU/GeGLU) are written, and the plain cross-entropy only for sft")


def _fused(out: Lines, plan: Plan, runs: dict) -> None:
    """Liger's fused linear cross-entropy (its plugin) for SFT; axolotl's TRL 1.8 trainers call the model without
    labels, so the preference stages compute the full logits unless Liger's DPO (dpo_use_liger_kernel) or GRPO
    (trl.use_liger_loss) loss is asked for."""
    planned = uses_fused_head(plan)
    stage = plan.stage
    sft = stage in ("sft", "pt")
    if plan.liger_kernels or (sft and planned):
        out.key("plugins", [LIGER])
    if sft and planned:
        out.key("liger_fused_linear_cross_entropy", True, "no full logits")
    _liger_kernels(out, plan, runs)
    if sft:
        runs_value = planned
    elif stage == "dpo" and plan.fused_loss and not plan.precompute_ref_log_probs:
        out.key("dpo_use_liger_kernel", True, "Liger's fused DPO loss: no full logits")
        runs_value = True
    elif stage == "grpo":
        runs_value = bool(plan.fused_loss)
    else:
        runs_value = False
    if runs_value == plan.fused_loss:
        return
    why = None
    if planned and not runs_value:
        why = (f"axolotl's TRL 1.8 computes the full logits in {stage} (TRL 1.16's fused LM head is not there"
               + ("; Liger's loss avoids them: set fused loss on" if stage in ("dpo", "grpo") else "") + ")")
    runs["fused_loss"] = (runs_value, why)


def _parallel(out: Lines, plan: Plan, runs: dict) -> None:
    """context_parallel_size (ring-flash-attn groups) and tensor_parallel_size (accelerate's tp_size), the sizes
    axolotl's reader takes back (planner.configs.axolotl._parallel); pipeline parallel axolotl does not have,
    and expert parallel needs its plugin, which this export does not set up."""
    if plan.context_parallel > 1:
        out.key("context_parallel_size", plan.context_parallel, "each sequence split over this many GPUs")
    if plan.tensor_parallel > 1:
        out.key("tensor_parallel_size", plan.tensor_parallel, "accelerate's tensor parallel (tp_size)")
    runs |= parallel_runs(plan, ("context_parallel", "tensor_parallel"),
                          "axolotl has no pipeline parallel, and its expert parallel needs the expert_parallel "
                          "plugin: exported as data parallel")
