"""`estimate()`: everything `ftplan estimate` reports, as one pydantic result.

`Estimate.model_dump(mode="json")` is the `--json` output; the TUI and the
preflight command read the same object.
"""

from __future__ import annotations

from pydantic import BaseModel

from planner.advice import Suggestion, suggest
from planner.fit import FitReport, GpuTarget, fit_report
from planner.flops import TimeEstimate, estimate_time
from planner.memory import Breakdown, estimate_memory
from planner.methods import TrainingLayout, layout
from planner.params import ParamCounts, count_params
from planner.plan import Plan
from planner.spec import ModelSpec
from planner.units import fmt_gib


class ModelSummary(BaseModel):
    name: str
    source: str
    stands_for: str | None
    model_type: str
    architecture: str
    layers: int
    hidden_size: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    context: int | None
    tied_embeddings: bool
    experts: str | None  # "8 experts, top-2" for MoE

    @classmethod
    def of(cls, spec: ModelSpec) -> ModelSummary:
        att = spec.first_block.attention
        moe = next((g.block.mlp for g in spec.blocks if g.block.mlp.kind == "moe"), None)
        dense = next((g.block.mlp for g in spec.blocks if g.block.mlp.kind != "moe"), None)
        return cls(
            name=spec.name, source=spec.source, stands_for=spec.stands_for, model_type=spec.model_type,
            architecture=spec.architecture, layers=spec.num_layers, hidden_size=spec.hidden_size,
            heads=att.num_heads, kv_heads=att.num_kv_heads, head_dim=att.head_dim,
            intermediate_size=(dense or spec.first_block.mlp).intermediate_size, vocab_size=spec.vocab_size,
            context=spec.max_position_embeddings, tied_embeddings=spec.tie_word_embeddings,
            experts=(f"{moe.num_experts} experts, top-{moe.top_k}, width {moe.intermediate_size}"
                     + (f", shared {moe.shared_intermediate_size}" if moe.shared_intermediate_size else ""))
            if moe else None,
        )


class ParamSummary(BaseModel):
    total: int
    trainable: int
    trainable_fraction: float
    adapter: int
    lora_modules: int
    embeddings: int
    attention: int
    mlp: int
    experts: int
    router: int
    norms: int
    head: int
    active_per_token: int

    @classmethod
    def of(cls, counts: ParamCounts, train: TrainingLayout) -> ParamSummary:
        return cls(
            total=counts.total, trainable=train.trainable_params,
            trainable_fraction=train.trainable_params / counts.total if counts.total else 0.0,
            adapter=train.adapter_params, lora_modules=train.lora_modules, embeddings=counts.embeddings,
            attention=counts.attention, mlp=counts.mlp, experts=counts.experts, router=counts.router,
            norms=counts.norms, head=counts.head, active_per_token=counts.active_per_token,
        )


class Estimate(BaseModel):
    model: ModelSummary
    plan: Plan
    params: ParamSummary
    memory: Breakdown
    fit: FitReport | None = None
    suggestions: list[Suggestion] = []
    time: TimeEstimate | None = None
    assumptions: list[str]
    warnings: list[str]


def estimate(spec: ModelSpec, plan: Plan, target: GpuTarget | None = None, *, search_batch: bool = False,
             search_seq: bool = False, mfu: float | None = None, samples: int | None = None,
             epochs: float = 1.0) -> Estimate:
    counts = count_params(spec)
    train = layout(spec, counts, plan)
    memory = estimate_memory(spec, plan, counts, train)
    fit = suggestions = time = None
    if target is not None:
        fit = fit_report(spec, plan, target, memory.total, search_batch=search_batch, search_seq=search_seq)
        suggestions = [] if fit.fits else suggest(spec, plan, target.capacity, memory.total)
        if target.gpu is not None:
            time = estimate_time(spec, counts, train, plan, target.gpu, mfu=mfu, samples=samples, epochs=epochs)
    return Estimate(
        model=ModelSummary.of(spec), plan=plan, params=ParamSummary.of(counts, train), memory=memory, fit=fit,
        suggestions=suggestions or [], time=time, assumptions=assumptions(plan, train, memory),
        warnings=_warnings(spec, plan, target),
    )


def assumptions(plan: Plan, train: TrainingLayout, memory: Breakdown) -> list[str]:
    precision = {
        "fp32": "fp32: weights, gradients, optimizer state and activations in fp32 (matmuls may use TF32)",
        "bf16": "bf16 (pure): weights, gradients and Adam state in bf16, no fp32 master copy",
        "bf16-mixed": "bf16-mixed: trainable weights in fp32 under torch.autocast(bf16); frozen weights in bf16",
        "fp16-mixed": "fp16-mixed: trainable weights in fp32 under torch.autocast(fp16) with a GradScaler",
    }[plan.precision]
    if plan.mixed and plan.zero:
        precision = (f"{plan.precision} under ZeRO: 16-bit weights and gradients, fp32 master weights and "
                     "Adam state in the optimizer (Rajbhandari et al. 2020)")
    optimizer = {
        "adamw": "AdamW, PyTorch foreach implementation (LLaMA-Factory/TRL `adamw_torch`): its step briefly "
                 "holds sqrt(exp_avg_sq) for all parameters",
        "adamw-fused": "AdamW, fused kernel (`adamw_torch_fused`, transformers' default on torch >= 2.8)",
        "adamw-8bit": "bitsandbytes AdamW8bit: 2 bytes of state per parameter (tensors >= 4096 elements)",
        "paged-adamw-8bit": "bitsandbytes paged AdamW8bit: 8-bit state in unified memory that can page to the "
                            "host under pressure (counted on the GPU here)",
        "adafactor": "Adafactor without momentum: factored second moments only",
        "sgd": "SGD without momentum: no optimizer state",
        "sgd-momentum": "SGD with momentum: one buffer per parameter",
    }[plan.optimizer]
    kernel = {"eager": "eager attention (stores the s x s scores)",
              "sdpa": "PyTorch SDPA (flash/memory-efficient kernels: no s x s matrix)",
              "flash": "flash-attention 2 (no s x s matrix)"}[plan.attention]
    context = "measured" if plan.cuda_context_measured else "assumed"
    out = [
        precision, optimizer, kernel,
        f"micro-batch {plan.batch_size} x {plan.seq_len} tokens, sequences padded or packed to full length",
        "the loss up-casts logits to fp32 (transformers' ForCausalLMLoss); log_softmax keeps them for backward",
        f"overhead: CUDA context {fmt_gib(plan.cuda_context)} ({context}) + allocator fragmentation "
        f"{plan.fragmentation:.0%} of the peak (settable with --cuda-context / --fragmentation)",
        f"peak phase: {memory.peak_phase} ({memory.peak.what})",
    ]
    if plan.gradient_checkpointing:
        out.append("gradient checkpointing per decoder layer (use_reentrant=False), with input grads enabled")
    if plan.grad_accum > 1:
        out.append("gradient accumulation: gradients stay allocated through every micro-batch's forward")
    if plan.gpus > 1 and plan.zero == 0:
        out.append("DDP: gradient buckets are a second copy of the gradients (gradient_as_bucket_view=False)")
    if plan.zero == 3 and plan.gpus > 1:
        out.append("ZeRO-3: one gathered layer plus one prefetched layer of 16-bit weights per GPU")
    if memory.cpu_offload:
        out.append(f"offloaded to host RAM: {fmt_gib(memory.cpu_offload)} per GPU (optimizer state and "
                   "master weights)")
    return out + train.notes


def _warnings(spec: ModelSpec, plan: Plan, target: GpuTarget | None) -> list[str]:
    out = list(spec.warnings)
    gpu = target.gpu if target else None
    if gpu is not None:
        if plan.compute_dtype == "bf16" and not gpu.supports_bf16:
            out.append(f"{gpu.name} has no bf16 tensor cores (compute capability {gpu.compute_capability}); "
                       "use --precision fp16-mixed")
        if plan.attention == "flash" and gpu.predates_flash_attention:
            out.append(f"flash-attention 2 needs compute capability >= 8.0; {gpu.name} has "
                       f"{gpu.compute_capability}: use --attention sdpa")
    context = spec.max_position_embeddings
    if context and plan.seq_len > context:
        out.append(f"--seq-len {plan.seq_len:,} is longer than {spec.name}'s context ({context:,} tokens): "
                   "positions past it were never trained; set rope scaling in the config or shorten --seq-len")
    if plan.method == "qlora" and plan.precision == "fp16-mixed":
        out.append("QLoRA with fp16 compute can overflow in 4-bit dequantized matmuls; prefer bf16 if the GPU has it")
    return out
