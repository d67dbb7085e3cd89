"""A plan as a LLaMA-Factory training config (v0 format: `llamafactory-cli train FILE`).

Keys and defaults from LLaMA-Factory's source (hiyouga/LLaMA-Factory at ff6d4d1): hparams/model_args.py,
data_args.py, finetuning_args.py, training_args.py (RayArguments), the chat templates in data/template.py and
the launcher in launcher.py (torchrun over NPROC_PER_NODE processes with FORCE_TORCHRUN=1; without it, every
visible GPU once there are several).
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from planner import fields, liger
from planner.configs.common import LAYERWISE_OPTIMIZERS, Hyper, llamafactory_optim_keys
from planner.configs.export_common import (
    DATASET,
    ExportInput,
    Lines,
    Rendered,
    deepspeed_comment,
    default_hyper,
    module_targets,
    parallel_runs,
    placeholder,
    refuse_peft_method,
    reset_unused,
    scalar,
)
from planner.configs.fix import config_changes_for
from planner.configs.llamafactory import FLASH_ATTN_BACK
from planner.errors import FtplanError
from planner.plan import Plan
from planner.spec import ModelSpec
from planner.stages import uses_fused_head

# data/template.py names for the families of ftplan's presets, as LLaMA-Factory's README table pairs them
# (model_type, a fragment of the Hub id or None, template). First match wins.
TEMPLATES: list[tuple[frozenset[str], str | None, str]] = [
    (frozenset({"qwen2"}), "deepseek-r1", "deepseekr1"),
    (frozenset({"llama"}), "llama-2", "llama2"),
    (frozenset({"llama"}), "llama-3", "llama3"),
    (frozenset({"qwen2", "qwen2_moe"}), None, "qwen"),
    (frozenset({"qwen3", "qwen3_moe"}), None, "qwen3"),
    (frozenset({"mistral", "mixtral"}), None, "mistral"),
    (frozenset({"gemma"}), None, "gemma"),
    (frozenset({"gemma2"}), None, "gemma2"),
    (frozenset({"gemma3", "gemma3_text"}), None, "gemma3"),
    (frozenset({"phi3"}), None, "phi"),
    (frozenset({"granite"}), None, "granite3"),
    (frozenset({"falcon"}), None, "falcon"),
    (frozenset({"deepseek_v3"}), None, "deepseek3"),
]
LLAMA3_VOCAB = 128256  # Llama 3's tokenizer: a Llama model with it takes the llama3 template

# The record format each stage reads (data/processor/*), and LLaMA-Factory's demo set of it (data/dataset_info.json)
STAGE_DATA = {"sft": ("instruction/output or messages", "alpaca_en_demo"), "pt": ("plain text", "c4_demo"),
              "dpo": ("preference pairs", "dpo_en_demo"), "orpo": ("preference pairs", "dpo_en_demo"),
              "simpo": ("preference pairs", "dpo_en_demo"), "rm": ("preference pairs", "dpo_en_demo"),
              "kto": ("examples with a kto_tag", "kto_en_demo"), "ppo": ("prompts", "alpaca_en_demo")}


def template_for(model: str, spec: ModelSpec | None) -> str | None:
    """LLaMA-Factory's chat template for the model's family; None when its README lists none ("-")."""
    model_type = spec.model_type if spec is not None else ""
    name = model.lower()
    for types, fragment, template in TEMPLATES:
        if model_type and model_type not in types:
            continue
        if not model_type and not any(t.split("_")[0] in name for t in types):
            continue
        if fragment is None or fragment in name:
            return template
    if model_type == "llama" and spec is not None and spec.vocab_size == LLAMA3_VOCAB:
        return "llama3"
    return None


def render(x: ExportInput) -> Rendered:
    plan, hyper = x.plan, x.hyper
    runs: dict[str, tuple[Any, str | None]] = {}
    refuse_peft_method(plan, "llamafactory", "finetuning_type lora or oft")
    method = "lora" if plan.method == "qlora" else plan.method
    if plan.optimizer_in_backward and plan.optimizer not in LAYERWISE_OPTIMIZERS:
        raise FtplanError("is torchtune's; LLaMA-Factory cannot step the optimizer inside backward: turn it off "
                          "to export", field="optimizer_in_backward")
    out = Lines()
    out.section("model")
    out.key("model_name_or_path", x.model)
    if plan.method == "qlora":
        out.key("quantization_bit", plan.base_bits)
        if not plan.double_quant:
            out.key("double_quantization", False)
        if plan.quant_bits is None:
            runs["quant_bits"] = (plan.base_bits, None)
    out.section("method")
    for line in _stage_lines(x.model, plan, method, runs):
        out.out.append(line)
    out.key("do_train", True)
    out.key("finetuning_type", method)
    if method in ("lora", "oft"):
        target = module_targets(plan, x.spec, keep_all=True)
        written = target if isinstance(target, str) else ",".join(target)
        if method == "lora":
            out.key("lora_rank", plan.lora_rank)
        out.key("lora_target", written, "OFT's targets: LLaMA-Factory hands lora_target to peft's OFTConfig"
                if method == "oft" else None)
        if written != plan.lora_target:
            runs["lora_target"] = (written, None)
        if plan.lora_target_parameters:
            runs["lora_target_parameters"] = ("", "LLaMA-Factory has no key for peft's target_parameters: the MoE "
                                              "experts train only as lora_target's v4 names reach them")
    if method == "lora":
        if plan.lora_dropout:
            out.key("lora_dropout", plan.lora_dropout)
        if plan.use_dora:
            out.key("use_dora", True)
        if x.hyper.use_rslora:
            out.key("use_rslora", True)
    if method == "oft":
        out.key("oft_target", written, "read by LLaMA-Factory, not used: lora_target above decides")
        out.key("oft_block_size", plan.oft_block_size)  # 0 with oft_rank: peft's OFTConfig takes one of them
        if plan.oft_blocks:
            out.key("oft_rank", plan.oft_blocks)
    if method == "freeze":
        out.key("freeze_trainable_layers", plan.freeze_trainable_layers)
    fused_sft = bool(plan.fused_loss) and plan.stage in ("pt", "sft")
    if plan.liger_kernels and plan.liger_kernels != liger.DEFAULT:
        # the Trainer's switch names each kernel; enable_liger_kernel only applies the model type's defaults
        out.key("use_liger_kernel", True, "Liger's kernels as planned (liger_kernel_config)")
        config = {**liger.apply_kwargs(plan.liger_kernels), "fused_linear_cross_entropy": fused_sft}
        out.block("liger_kernel_config")
        for key, value in config.items():
            out.key(key, value, indent=2)
        ran = liger.from_apply_kwargs(config, loss=plan.stage in ("pt", "sft") and not fused_sft)
        if ran != plan.liger_kernels:
            runs["liger_kernels"] = (ran, f"LLaMA-Factory's {plan.stage} never calls the model's loss: Liger's "
                                          "plain cross-entropy does not run")
    elif fused_sft or plan.liger_kernels:
        out.key("enable_liger_kernel", True)
        if not plan.liger_kernels:
            runs["liger_kernels"] = (liger.DEFAULT, "enable_liger_kernel also applies Liger's other kernels (RoPE, "
                                                    "RMSNorm, SwiGLU) for the model type")
        elif plan.stage in ("pt", "sft") and not fused_sft:
            runs["fused_loss"] = (True, "enable_liger_kernel also fuses the loss in pt and sft")
    if plan.liger_kernels and not fused_sft and "fused_loss" not in runs:
        # with a Liger switch on, the reader plans the full logits outright rather than leaving them to the stage
        runs["fused_loss"] = (False, None if plan.fused_loss is not True else
                              f"ftplan planned a fused loss; LLaMA-Factory's {plan.stage} computes the full logits "
                              "(Liger's fused cross-entropy applies to pt and sft only)")
    elif fused_sft or "fused_loss" in runs:
        pass
    elif uses_fused_head(plan):
        runs["fused_loss"] = (None, f"ftplan planned a fused loss; LLaMA-Factory's {plan.stage} computes the full "
                                    "logits (Liger's fused cross-entropy applies to pt and sft only)")
    elif plan.fused_loss is False:
        runs["fused_loss"] = (None, None)  # unset is LLaMA-Factory's default: the full logits
    cutoff = plan.seq_len
    if plan.stage == "ppo":  # cutoff_len caps the prompt; the response is generated up to max_new_tokens
        completion = plan.max_completion_len or plan.seq_len // 2
        cutoff = plan.seq_len - completion
        if plan.max_completion_len is None:
            runs["max_completion_len"] = (completion, None)
    elif plan.max_completion_len is not None and plan.stage != "grpo":
        runs["max_completion_len"] = (None, None)
    out.section("dataset")
    kind, demo = STAGE_DATA.get(plan.stage, ("records", "alpaca_en_demo"))
    out.key("dataset", x.dataset, f"REPLACE: a dataset of {kind} named in dataset_dir/dataset_info.json (the demo: "
                                  f"{demo})" if x.dataset == DATASET else None)
    out.key("dataset_dir", "data", "relative to where you launch; LLaMA-Factory's checkout has data/")
    template = template_for(x.model, x.spec)
    if template:
        out.key("template", template)
    else:
        family = x.spec.model_type if x.spec is not None else "this model"
        out.comment(f"template: LLaMA-Factory has none for {family}; unset, it parses the tokenizer's chat "
                    "template, else uses `empty`")
    out.key("cutoff_len", cutoff)
    _packing(out, plan, runs)
    if plan.stage == "ppo":
        out.key("max_new_tokens", plan.seq_len - cutoff)
    out.section("output")
    out.key("output_dir", f"saves/{x.name}/{plan.method}/{plan.stage}", "relative to where you launch")
    out.section("train")
    out.key("per_device_train_batch_size", plan.batch_size)
    out.key("gradient_accumulation_steps", plan.grad_accum)
    out.key("learning_rate", hyper.learning_rate or 1e-4)
    out.key("num_train_epochs", hyper.epochs)
    out.key("lr_scheduler_type", hyper.lr_scheduler)
    out.key("warmup_ratio", hyper.warmup_ratio)
    if hyper.max_grad_norm is not None:
        out.key("max_grad_norm", hyper.max_grad_norm)
    for key, value in llamafactory_optim_keys(plan).items():
        out.key(key, value)
    if plan.optimizer == "sgd-momentum":
        runs["optimizer"] = ("sgd", "ftplan planned SGD with momentum; LLaMA-Factory's optim sgd keeps none")
    if plan.precision in ("bf16", "bf16-mixed"):
        out.key("bf16", True)
    if plan.precision == "bf16":
        out.key("pure_bf16", True)
    if plan.precision in ("fp16", "fp16-mixed"):
        out.key("fp16", True)
    if plan.precision == "fp16":  # hparams has pure_bf16 only; fp16: true up-casts the trainable weights to fp32
        runs["precision"] = ("fp16-mixed", "LLaMA-Factory has no pure fp16: fp16: true keeps fp32 trainable "
                                           "weights under fp16 autocast")
    if plan.weights_dtype:  # model_args.compute_dtype loads the base and sets bnb_4bit_compute_dtype alike
        runs["weights_dtype"] = (None, "LLaMA-Factory loads the base in the precision's dtype, with no key for "
                                       "another")
    if not plan.gradient_checkpointing:
        out.key("disable_gradient_checkpointing", True)
    if plan.activation_offload == "checkpoint":
        out.key("use_unsloth_gc", True, "the checkpointed layers' inputs in host memory")
    elif plan.activation_offload == "saved":
        # LLaMA-Factory's one offload is Unsloth's checkpointing, which moves the checkpointed inputs only
        runs["activation_offload"] = ("checkpoint" if plan.gradient_checkpointing else "off",
                                      "LLaMA-Factory cannot offload every saved activation" +
                                      ("; use_unsloth_gc offloads the checkpointed layers' inputs"
                                       if plan.gradient_checkpointing else ""))
        if plan.gradient_checkpointing:
            out.key("use_unsloth_gc", True, "the checkpointed layers' inputs in host memory")
    out.key("flash_attn", FLASH_ATTN_BACK[plan.attention])
    if x.deepspeed is not None:
        out.key("deepspeed", str(x.deepspeed), deepspeed_comment(plan, "the Trainer"))
    other = _other_settings(plan)
    if other:
        out.section("other")
        for key, value in other.items():
            out.key(key, value)
    runs |= parallel_runs(plan, (), "LLaMA-Factory runs tensor, pipeline, expert and context parallel on Megatron-Core only "
                          "(USE_MCA=1), which this export does not set up: exported as data parallel")
    runs |= {name: (value, None) for name, value in reset_unused(plan, {}).items() if name not in runs}
    if plan.framework != "llamafactory":
        runs["framework"] = ("llamafactory", None if plan.stage not in ("orpo", "simpo", "rm") else
                             f"LLaMA-Factory's {plan.stage} trainer keeps other tensors than TRL's (planned as "
                             "LLaMA-Factory's)")
    return Rendered(lines=out.out, launch=launch_command(x.path, plan), runs=runs)


def _packing(out: Lines, plan: Plan, runs: dict) -> None:
    """packing (unset: on for stage pt, hparams/parser.py); LLaMA-Factory has no padding-free batch: its packed rows
    are padded to cutoff_len (data/processor/supervised.py), so the micro-batch holds batch x cutoff_len tokens."""
    if plan.packing or plan.stage == "pt":
        out.key("packing", plan.packing, None if not plan.packing or plan.mask_4d else "several sequences per row "
                "of cutoff_len (they attend to each other; neat_packing keeps them apart)")
    if plan.mask_4d:
        out.key("neat_packing", True, "packed sequences kept apart by a 4D mask")
    if plan.padding_free:
        runs["padding_free"] = (False, f"LLaMA-Factory has no padding-free batches: {plan.batch_size} rows of "
                                       f"{plan.seq_len} tokens" + ("" if plan.packing else "; set packing to fill "
                                                                   "them"))
        runs["token_fill"] = (1.0, None)


def launch_command(path, plan: Plan) -> str:
    """torchrun over the plan's GPUs (launcher.py); DeepSpeed needs torchrun even on one (hparams/parser.py)."""
    file = shlex.quote(str(path))
    if plan.gpus > 1 or plan.zero:
        return f"FORCE_TORCHRUN=1 NPROC_PER_NODE={plan.gpus} llamafactory-cli train {file}"
    return f"CUDA_VISIBLE_DEVICES=0 llamafactory-cli train {file}"  # else every visible GPU trains


def _stage_lines(model: str, plan: Plan, method: str, runs: dict[str, tuple[Any, str | None]]) -> list[str]:
    """The stage as LLaMA-Factory's keys (hparams/finetuning_args.py), with a comment where the plan asks for
    something LLaMA-Factory cannot do."""
    stage = plan.stage
    if stage == "grpo":
        raise FtplanError("LLaMA-Factory has no GRPO stage (its stages: pt, sft, rm, ppo, dpo, kto); export a "
                          "GRPO plan as a TRL or axolotl config", field="stage")
    if stage in ("orpo", "simpo"):
        if not plan.nll_term:
            runs["nll_term"] = (True, "ftplan planned SimPO without the NLL term (TRL's cpo_alpha 0); "
                                      "LLaMA-Factory's SimPO has no such switch")
        return ["stage: dpo", f"pref_loss: {stage}"]
    lines = [f"stage: {stage}"]
    if stage not in ("dpo", "kto", "ppo"):
        return lines
    if plan.reference_model and method in ("lora", "oft"):
        # trainer_utils.py create_ref_model: ref_model loads a separate frozen copy even with LoRA
        lines.append(f"ref_model: {scalar(model)}")
    elif plan.reference_model is False or plan.precompute_ref_log_probs:
        why = "reference_model false" if plan.reference_model is False else "precompute_ref_log_probs"
        keeps = ("the policy with its adapter disabled" if method in ("lora", "oft") else "a frozen copy of the "
                 "model")
        lines.append(f"# ftplan planned {why}; LLaMA-Factory's {stage} keeps {keeps} as its reference")
        runs["reference_model"] = (None, f"ftplan planned {why}; LLaMA-Factory keeps {keeps} as the reference")
        if plan.precompute_ref_log_probs:
            runs["precompute_ref_log_probs"] = (False, None)
    elif plan.reference_model:  # full or freeze: LLaMA-Factory's default already
        runs["reference_model"] = (None, None)
    if stage == "ppo":
        if plan.vllm != "off":
            lines.append(f"# ftplan planned vllm {plan.vllm}; LLaMA-Factory's PPO generates with transformers")
            runs["vllm"] = ("off", f"ftplan planned vllm {plan.vllm}; LLaMA-Factory's PPO generates with "
                                   "transformers")
        # finetuning_args.py: PPO needs a reward model; a LoRA one only with finetuning_type lora
        kind = "lora" if method == "lora" else "full"
        lines += [f"reward_model: {placeholder('reward model')}  # REPLACE: the reward model ({kind}) PPO scores "
                  "with", f"reward_model_type: {kind}"]
    return lines


# written above, in LLaMA-Factory's sections
_SECTIONED = frozenset({"stage", "method", "quant_bits", "double_quant", "lora_rank", "lora_target", "lora_dropout",
                        "use_dora", "oft_block_size", "oft_blocks",
                        "freeze_trainable_layers", "fused_loss", "seq_len", "batch_size", "grad_accum", "optimizer",
                        "precision", "gradient_checkpointing", "activation_offload", "attention", "zero",
                        "offload_optimizer", "liger_kernels", "packing", "mask_4d",
                        # the DeepSpeed file's offload_param; parallel sizes need Megatron-Core (parallel_runs)
                        "offload_params", "tensor_parallel", "pipeline_parallel", "expert_parallel",
                        "context_parallel"})


def _other_settings(plan: Plan) -> dict[str, Any]:
    """Every other plan field with a LLaMA-Factory key that differs from its default (planner.fields)."""
    changed = {name: value for name, value in fields.changed_settings(plan).items()
               if name not in _SECTIONED and "llamafactory" in fields.setting(name).keys}
    return config_changes_for("llamafactory", changed)


def llamafactory_yaml(model: str, plan: Plan, hyper: Hyper | None = None, dataset: str = DATASET,
                      deepspeed_file: str | None = None, spec: ModelSpec | None = None) -> str:
    """The body of a LLaMA-Factory config for `plan`, `model` written as given (`planner.configs.export`
    writes the whole export: the Hub id, the launch and check commands, the DeepSpeed file beside it)."""
    zero_file = Path(deepspeed_file or f"ds_z{plan.zero}_config.json") if plan.zero else None
    x = ExportInput(model=model, plan=plan, spec=spec, hyper=hyper or default_hyper(plan), path=Path("train.yaml"),
                    deepspeed=zero_file, name=model.rsplit("/", 1)[-1], dataset=dataset)
    return "\n".join(render(x).lines) + "\n"
