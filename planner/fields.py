"""One table of every setting a user can give: its CLI flag, config keys, form label and help.

The front ends are generated from it: argparse flags (`tui.flags`), the TUI's Plan form,
the equivalent `ftplan estimate` command, suggestion flags, `--fix` keys and every
validation message. A setting's field name is the attribute on its model (`Plan`,
`Hyper`, `Machine`, or the GPU target's options); adding a setting is one `Setting` here
plus the field on its model.

Vocabularies: "cli" (flags), "tui" (form labels), and one per config format
("llamafactory", "hf", "axolotl") whose key names are listed here; how a value is written
in a framework's config (e.g. LLaMA-Factory's inverted `disable_gradient_checkpointing`)
belongs to that framework's module in `planner.configs`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from planner.errors import FtplanError

Vocabulary = Literal["cli", "tui", "llamafactory", "hf", "axolotl"]
Owner = Literal["plan", "hyper", "machine", "target"]
Widget = Literal["select", "int", "text", "switch", "bytes"]
FORMATS = ("llamafactory", "hf", "axolotl")


@dataclass(frozen=True)
class Setting:
    name: str  # the field on its owner model
    owner: Owner
    flag: str  # the CLI flag
    label: str  # the TUI form label
    help: str
    keys: dict[str, str] = field(default_factory=dict)  # config format -> key
    short: str | None = None  # a one-letter CLI alias
    widget: Widget | None = None  # how the TUI form edits it (None: not on the form)
    group: Literal["training", "system"] = "training"  # which commands take the flag
    methods: tuple[str, ...] = ()  # the methods that use it (empty: every method); the form shows it for those

    def name_in(self, vocabulary: Vocabulary) -> str:
        """What a user of this front end calls the setting."""
        if vocabulary == "cli":
            return self.flag
        if vocabulary == "tui":
            return self.label
        return self.keys.get(vocabulary, self.flag)


_T, _S = "training", "system"
FIELDS: list[Setting] = [
    Setting("method", "plan", "--method", "method", "fine-tuning method",
            {"llamafactory": "finetuning_type", "hf": "use_peft", "axolotl": "adapter"}, widget="select"),
    Setting("stage", "plan", "--stage", "stage",
            "training stage: sft/pt, preference (dpo, orpo, simpo, kto), reward model (rm), or RL (ppo, grpo)",
            {"llamafactory": "stage", "hf": "trainer", "axolotl": "rl"}, widget="select"),
    Setting("precision", "plan", "--precision", "precision",
            "bf16 / fp16 = pure 16-bit weights (fp16: no loss scaling); *-mixed = fp32 weights + autocast",
            {"llamafactory": "bf16", "hf": "bf16", "axolotl": "bf16"}, widget="select"),
    Setting("optimizer", "plan", "--optimizer", "optimizer", "torch foreach AdamW unless named",
            {"llamafactory": "optim", "hf": "optim", "axolotl": "optimizer"}, widget="select"),
    Setting("attention", "plan", "--attention", "attention", "attention kernel",
            {"llamafactory": "flash_attn", "hf": "attn_implementation", "axolotl": "attn_implementation"},
            widget="select"),
    Setting("batch_size", "plan", "--batch-size", "micro-batch", "micro-batch per GPU",
            {"llamafactory": "per_device_train_batch_size", "hf": "per_device_train_batch_size",
             "axolotl": "micro_batch_size"}, short="-b", widget="int"),
    Setting("grad_accum", "plan", "--grad-accum", "accumulation", "gradient accumulation steps",
            {f: "gradient_accumulation_steps" for f in FORMATS}, widget="int"),
    Setting("seq_len", "plan", "--seq-len", "sequence", "tokens per sequence, i.e. cutoff_len",
            {"llamafactory": "cutoff_len", "hf": "max_length", "axolotl": "sequence_len"}, short="-s",
            widget="int"),
    Setting("packing", "plan", "--packing", "packing",
            "several sequences share each row of --seq-len tokens (the same tokens per micro-batch as padded rows)",
            {"llamafactory": "packing", "hf": "packing", "axolotl": "sample_packing"}, widget="switch"),
    Setting("padding_free", "plan", "--padding-free", "padding-free",
            "flatten the micro-batch into one row without padding (TRL padding_free and bfd packing, axolotl "
            "sample_packing with flash attention): memory follows --token-fill; sft/pt only",
            {"hf": "padding_free"}),
    Setting("mask_4d", "plan", "--mask-4d", "4D mask",
            "packed rows kept apart by a batch x 1 x seq x seq mask in the compute dtype, held with the batch "
            "(LLaMA-Factory's neat_packing without fa2); needs --packing and sdpa or eager",
            {"llamafactory": "neat_packing"}),
    Setting("token_fill", "plan", "--token-fill", "token fill",
            "padding-free: the share of --batch-size x --seq-len that is real tokens, e.g. mean length / --seq-len "
            "(default 1: the fullest micro-batch)"),
    Setting("gradient_checkpointing", "plan", "--gradient-checkpointing", "checkpointing",
            "recompute activations in backward",
            {"llamafactory": "disable_gradient_checkpointing", "hf": "gradient_checkpointing",
             "axolotl": "gradient_checkpointing"}, widget="switch"),
    Setting("activation_offload", "plan", "--activation-offload", "offload activations",
            "saved activations in host memory: saved (every tensor autograd saves outside the LM head: TRL, "
            "torchtune, axolotl) or checkpoint (the checkpointed layers' inputs: Unsloth's checkpointing, "
            "transformers' offload; needs --gradient-checkpointing)",
            {"llamafactory": "use_unsloth_gc", "hf": "activation_offloading", "axolotl": "activation_offloading"},
            widget="select"),
    Setting("lora_rank", "plan", "--lora-rank", "LoRA r", "LoRA rank",
            {"llamafactory": "lora_rank", "hf": "lora_r", "axolotl": "lora_r"}, widget="int", methods=("lora", "qlora")),
    Setting("lora_target", "plan", "--lora-target", "LoRA targets",
            "all (LLaMA-Factory's: every nn.Linear but the head), all-linear (peft's: Conv1D and fused MoE "
            "experts too), attention, or comma-separated module names",
            {"llamafactory": "lora_target", "hf": "lora_target_modules", "axolotl": "lora_target_modules"},
            widget="text", methods=("lora", "qlora", "oft")),
    Setting("lora_target_parameters", "plan", "--lora-target-parameters", "LoRA target parameters",
            "LoRA on MoE parameters through peft's ParamWrapper (rank r each): a comma list of "
            "mlp.experts.gate_up_proj, mlp.experts.down_proj, mlp.gate.weight; none by default",
            {"hf": "lora_target_parameters", "axolotl": "lora_target_parameters"}, methods=("lora", "qlora")),
    Setting("lora_dropout", "plan", "--lora-dropout", "LoRA dropout", "dropout on the LoRA input",
            {f: "lora_dropout" for f in FORMATS}),
    Setting("use_dora", "plan", "--use-dora", "DoRA",
            "LoRA as DoRA: a magnitude vector per target, and each adapted weight's norm every step",
            {"llamafactory": "use_dora", "hf": "use_dora", "axolotl": "peft_use_dora"}, widget="switch",
            methods=("lora", "qlora")),
    Setting("num_virtual_tokens", "plan", "--num-virtual-tokens", "virtual tokens",
            "prefix/prompt/ptuning: virtual tokens (peft's num_virtual_tokens)", widget="int",
            methods=("prefix", "prompt", "ptuning")),
    Setting("prefix_projection", "plan", "--prefix-projection", "prefix projection",
            "prefix: reparametrise the prefix with an MLP (--encoder-hidden-size wide)"),
    Setting("encoder_hidden_size", "plan", "--encoder-hidden-size", "encoder width",
            "prefix projection / ptuning encoder width (default: peft's token_dim)"),
    Setting("encoder_type", "plan", "--encoder-type", "prompt encoder",
            "ptuning: mlp or lstm reparameterization (peft's encoder_reparameterization_type)", widget="select",
            methods=("ptuning",)),
    Setting("ia3_target", "plan", "--ia3-target", "IA3 targets",
            "ia3: module names to scale (default: peft's targets for the model type)", widget="text",
            methods=("ia3",)),
    Setting("adapter_reduction", "plan", "--adapter-reduction", "adapter reduction",
            "adapter: hidden size / bottleneck width of the Houlsby adapters", widget="int", methods=("adapter",)),
    Setting("oft_block_size", "plan", "--oft-block-size", "OFT block size",
            "oft: size of the orthogonal blocks (default 32, peft's; none with --oft-blocks)",
            {"llamafactory": "oft_block_size"}, widget="int", methods=("oft",)),
    Setting("oft_blocks", "plan", "--oft-blocks", "OFT blocks",
            "oft: blocks per layer instead of a block size (peft's r)", {"llamafactory": "oft_rank"}),
    Setting("freeze_trainable_layers", "plan", "--freeze-trainable-layers", "trainable layers",
            "freeze method: train the last N layers (negative: the first N)",
            {"llamafactory": "freeze_trainable_layers"}),
    # TRL's ModelConfig `dtype` loads the base and sets bnb_4bit_compute_dtype alike (trl/trainer/utils.py);
    # axolotl derives both from bf16/fp16 unless bnb_config_kwargs overrides the compute dtype; LLaMA-Factory
    # ties both to its compute dtype (no key)
    Setting("weights_dtype", "plan", "--weights-dtype", "base dtype",
            "the frozen base's dtype and QLoRA's compute dtype, apart from --precision (default: the precision's)",
            {"hf": "dtype", "axolotl": "bnb_config_kwargs"},
            methods=("freeze", "lora", "qlora", "prefix", "prompt", "ptuning", "ia3", "adapter", "oft")),
    Setting("quant_bits", "plan", "--quant-bits", "quant bits",
            "quantize the frozen base to 4 or 8 bits (QLoRA; --method qlora defaults to 4)",
            {"llamafactory": "quantization_bit", "hf": "load_in_4bit/load_in_8bit",
             "axolotl": "load_in_4bit/load_in_8bit"},
            widget="select"),
    Setting("double_quant", "plan", "--double-quant", "double quant",
            "QLoRA with double quantization of the constants",
            {"llamafactory": "double_quantization", "hf": "use_bnb_nested_quant",
             "axolotl": "bnb_4bit_use_double_quant"}),
    Setting("gpus", "plan", "--gpus", "GPUs", "GPUs in the run, across nodes (with --gpu auto: every visible GPU)",
            widget="int", group=_S),
    Setting("zero", "plan", "--zero", "ZeRO stage",
            "ZeRO stage / FSDP sharding: 1 optimizer, 2 +gradients, 3 +weights (FSDP full_shard)",
            {f: "deepspeed" for f in FORMATS}, widget="select", group=_S),
    Setting("offload_optimizer", "plan", "--offload-optimizer", "offload optim.", "ZeRO-Offload the optimizer to CPU",
            {f: "deepspeed" for f in FORMATS}, widget="switch", group=_S),
    Setting("offload_params", "plan", "--offload-params", "offload params",
            "parameter shards (and, with --offload-optimizer, gradients) in host memory: DeepSpeed ZeRO-3 "
            "offload_param, FSDP offload_params / cpu_offload; needs --zero 3",
            {"llamafactory": "deepspeed", "hf": "fsdp_config.offload_params", "axolotl": "fsdp_config.offload_params"},
            group=_S),
    Setting("tensor_parallel", "plan", "--tensor-parallel", "tensor parallel",
            "tensor-parallel size: block linears, embedding and LM head split over this many GPUs",
            {"llamafactory": "tensor_model_parallel_size", "hf": "parallelism_config.tp_size",
             "axolotl": "tensor_parallel_size"}, widget="int", group=_S),
    Setting("expert_parallel", "plan", "--expert-parallel", "expert parallel",
            "expert-parallel size: routed MoE experts split over this many GPUs",
            {"llamafactory": "expert_model_parallel_size", "axolotl": "expert_parallel_size"}, widget="int", group=_S),
    Setting("pipeline_parallel", "plan", "--pipeline-parallel", "pipeline parallel",
            "pipeline-parallel size: decoder layers split into this many stages",
            {"llamafactory": "pipeline_model_parallel_size"}, widget="int", group=_S),
    Setting("context_parallel", "plan", "--context-parallel", "context parallel",
            "context/sequence-parallel size (ring attention, Ulysses): each sequence split over this many GPUs, "
            "which read the same data",
            {"llamafactory": "context_parallel_size", "hf": "parallelism_config.cp_size",
             "axolotl": "context_parallel_size"}, widget="int", group=_S),
    Setting("nodes", "plan", "--nodes", "nodes", "machines the GPUs are spread over (host memory per node)",
            widget="int", group=_S),
    Setting("gpus_per_node", "plan", "--gpus-per-node", "GPUs per node",
            "GPUs on each node: sets --gpus to nodes x this", group=_S),
    Setting("fused_loss", "plan", "--fused-loss", "fused loss",
            "fused linear cross-entropy (Liger, Cut Cross-Entropy) or TRL's fused LM head: logits are never "
            "materialised; Liger's other kernels are --liger-kernels (default: on for GRPO, and for DPO/KTO with "
            "--framework trl, as TRL 1.16 installs its head there; off otherwise)",
            {"llamafactory": "enable_liger_kernel", "hf": "use_liger_kernel",
             "axolotl": "liger_fused_linear_cross_entropy"}, widget="switch", group=_S),
    Setting("liger_kernels", "plan", "--liger-kernels", "Liger kernels",
            "Liger's kernels besides the fused loss, which save fewer activations: a comma list of rope, rms_norm, "
            "glu (SwiGLU/GeGLU), layer_norm, cross_entropy (plain, over full logits), or default (the ones Liger "
            "applies to the model type, as enable_liger_kernel / use_liger_kernel ask for); none by default",
            {"llamafactory": "enable_liger_kernel", "hf": "use_liger_kernel/liger_kernel_config",
             "axolotl": "liger_rope/liger_rms_norm/liger_glu_activation/liger_layer_norm/liger_cross_entropy"},
            widget="text", group=_S),
    Setting("quantize_experts", "plan", "--quantize-experts", "quantize experts",
            "QLoRA: quantize the fused MoE expert tensors too (axolotl's quantize_moe_experts); bitsandbytes alone "
            "leaves them in the compute dtype", {"axolotl": "quantize_moe_experts"}, methods=("qlora",)),
    Setting("lora_kernels", "plan", "--lora-kernels", "LoRA kernels",
            "axolotl's fused LoRA autograd Functions, which save fewer activations than peft's layers: a comma list "
            "of qkv, o, mlp; none by default", {"axolotl": "lora_qkv_kernel/lora_o_kernel/lora_mlp_kernel"},
            group=_S, methods=("lora", "qlora")),
    Setting("optimizer_in_backward", "plan", "--optimizer-in-backward", "optimizer in backward",
            "step each parameter inside backward (torchtune's optimizer_in_bwd; layer-wise GaLore/APOLLO): no full "
            "gradient set", {"llamafactory": "galore_layerwise/apollo_layerwise", "hf": "optim",
                             "axolotl": "optimizer"}, group=_S),
    Setting("projection_rank", "plan", "--projection-rank", "projection rank",
            "GaLore/APOLLO: rank of the projected gradients and optimizer states",
            {"llamafactory": "galore_rank/apollo_rank", "hf": "optim_args", "axolotl": "optim_args"}),
    Setting("projection_update_interval", "plan", "--projection-update-interval", "projection interval",
            "GaLore/APOLLO: steps between recomputed projections (no effect on memory)",
            {"llamafactory": "galore_update_interval/apollo_update_interval", "hf": "optim_args",
             "axolotl": "optim_args"}),
    Setting("framework", "plan", "--framework", "framework",
            "whose trainer runs a preference or reward stage: llamafactory (full fp32 log-softmax, a value head "
            "beside the LM head) or trl (ORPO/CPO keep logits in the compute dtype; a one-wide score head)",
            widget="select"),
    Setting("reference_model", "plan", "--reference-model", "reference model",
            "keep a frozen reference model on the GPU (default: DPO/KTO/PPO full or freeze tuning; LoRA "
            "disables the adapter instead; GRPO only with a KL beta)",
            {"hf": "beta", "axolotl": "trl.beta"}),
    Setting("precompute_ref_log_probs", "plan", "--precompute-ref-log-probs", "precompute ref.",
            "DPO/KTO: reference log-probs computed once before training, so no reference model is kept",
            {"hf": "precompute_ref_log_probs", "axolotl": "precompute_ref_log_probs"}, widget="switch"),
    Setting("nll_term", "plan", "--nll-term", "NLL term",
            "SimPO/CPO under TRL: the NLL loss on the chosen responses (cpo_alpha; TRL's default 1.0 keeps it, 0 "
            "drops it and its log-softmax)", {"hf": "cpo_alpha", "axolotl": "cpo_alpha"}),
    Setting("num_generations", "plan", "--num-generations", "generations",
            "GRPO: completions per prompt (the micro-batch counts completions)",
            {"hf": "num_generations", "axolotl": "trl.num_generations"}),
    Setting("max_completion_len", "plan", "--max-completion-len", "completion len",
            "GRPO/DPO: completion tokens within --seq-len (prompt + completion; GRPO default 512)",
            {"hf": "max_completion_length", "axolotl": "trl.max_completion_length"}),
    Setting("vllm", "plan", "--vllm", "vLLM", "GRPO generation: off (transformers generate), colocate (vLLM "
            "shares the training GPUs) or server (vLLM on other GPUs)",
            {"hf": "use_vllm/vllm_mode", "axolotl": "trl.use_vllm/trl.vllm_mode"}, group=_S),
    Setting("vllm_gpu_memory_utilization", "plan", "--vllm-gpu-memory-utilization", "vLLM share",
            "share of each GPU vLLM colocate reserves (TRL's default 0.3)",
            {"hf": "vllm_gpu_memory_utilization", "axolotl": "vllm.gpu_memory_utilization"}, group=_S),
    Setting("cuda_context", "machine", "--cuda-context", "CUDA context",
            "CUDA context + library workspace per GPU, e.g. 600MiB (default: measured by `ftplan gpus "
            "--calibrate`, else 0.5GiB assumed)", group=_S),
    Setting("fragmentation", "machine", "--fragmentation", "fragmentation",
            "allocator fragmentation as a fraction of the peak (default: 0.08)", group=_S),
    Setting("gpu", "target", "--gpu", "GPU",
            "GPU to fit: a catalog name, leniently matched ('RTX 4090', '4090', 'H100'), or auto for the "
            "measured free memory of this machine's visible GPU(s)", widget="select", group=_S),
    Setting("gpu_memory", "target", "--gpu-memory", "GPU memory", "usable memory per GPU instead of --gpu, "
            "e.g. 24GiB or 80GB", widget="bytes", group=_S),
    Setting("learning_rate", "hyper", "--lr", "learning rate", "peak learning rate",
            {f: "learning_rate" for f in FORMATS}),
    Setting("warmup_ratio", "hyper", "--warmup-ratio", "warmup", "share of the steps spent warming up",
            {f: "warmup_ratio" for f in FORMATS}),
    Setting("max_grad_norm", "hyper", "--max-grad-norm", "clip norm", "gradient clipping threshold",
            {f: "max_grad_norm" for f in FORMATS}),
    Setting("bf16", "hyper", "--precision", "precision", "bf16 autocast", {f: "bf16" for f in FORMATS}),
    Setting("fp16", "hyper", "--precision", "precision", "fp16 autocast", {f: "fp16" for f in FORMATS}),
]


def setting(name: str) -> Setting:
    for s in FIELDS:
        if s.name == name:
            return s
    raise KeyError(name)


def name_in(name: str, vocabulary: Vocabulary) -> str:
    """A field's name in a vocabulary; an unknown name is returned as it is."""
    try:
        return setting(name).name_in(vocabulary)
    except KeyError:
        return name


_PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_]*)\}")


def word(text: str, vocabulary: Vocabulary) -> str:
    """Replace `{field}` placeholders with the fields' names in `vocabulary`; other braces stay."""
    def one(match: re.Match) -> str:
        try:
            return setting(match.group(1)).name_in(vocabulary)
        except KeyError:
            return match.group(0)

    return _PLACEHOLDER.sub(one, text)


def worded(exc: FtplanError, vocabulary: Vocabulary, where: str | None = None) -> str:
    """The error as a user of this front end reads it: `<name>: <reason>`, prefixed by `where` (a file)."""
    reason = word(exc.reason, vocabulary)
    if exc.field is not None:
        name = name_in(exc.field, vocabulary)
        if vocabulary in FORMATS and name.isidentifier():
            name = f"key '{name}'"
        reason = f"{name}: {reason}"
    return f"{where}: {reason}" if where else reason


def cli_value(name: str, value: Any) -> str:
    """One field set to `value`, as `ftplan estimate` flags (a switch turned off is its --no- form)."""
    import shlex

    flag = setting(name).flag
    if isinstance(value, bool):
        return flag if value else f"--no-{flag.removeprefix('--')}"
    return f"{flag} {shlex.quote(str(value))}"


def choices(name: str) -> tuple:
    """The values a Plan field takes, from its annotation (empty when it is free)."""
    import typing

    from planner import plan as plan_module

    annotation = plan_module.Plan.model_fields[name].annotation
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    literal = annotation if typing.get_origin(annotation) is typing.Literal else next(
        (a for a in args if typing.get_origin(a) is typing.Literal), None)
    if literal is not None:
        return typing.get_args(literal)
    return (False, True) if annotation is bool else ()


def cli_flags(changes: dict[str, Any]) -> str:
    return " ".join(cli_value(k, v) for k, v in changes.items()).strip()


def changed_settings(plan, *, always: tuple[str, ...] = ()) -> dict[str, Any]:
    """The plan's table fields that differ from their defaults (plus `always`), in table order."""
    model = type(plan).model_fields
    return {s.name: getattr(plan, s.name) for s in FIELDS
            if s.owner == "plan" and s.name in model
            and (s.name in always or getattr(plan, s.name) != model[s.name].default)}


def plan_flags(plan, *, always: tuple[str, ...] = ("method",)) -> list[str]:
    """The flags that reproduce `plan`: every field that differs from its default, plus `always`."""
    return [cli_value(name, value) for name, value in changed_settings(plan, always=always).items()
            if value is not None]

