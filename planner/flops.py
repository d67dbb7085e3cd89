"""Compute per step and an estimated step time.

Training FLOPs per token follow the accounting used for MFU (Kaplan et al. 2020;
Chowdhery et al. 2022, PaLM, App. B): 2 FLOPs per multiply-accumulate, forward = 2N
plus attention 4·L·s·d_attn (QKᵀ and AV, counted dense as PaLM does), backward = 2x forward.
What changes with the method:

* frozen weights need no weight gradient: their backward is 2N (input grads) not 4N;
* layers below the first trainable one need no backward at all (freeze: the first
  layers; LoRA always has adapters from layer 0, so every layer runs backward);
* gradient checkpointing recomputes the forward once more (Chen et al. 2016).

MoE models count only the parameters a token passes through (top-k experts).
"""

from __future__ import annotations

from pydantic import BaseModel

from planner.hardware import GpuSpec
from planner.methods import TrainingLayout
from planner.params import ParamCounts
from planner.plan import Plan
from planner.spec import ModelSpec

DEFAULT_MFU = {"full": 0.40, "freeze": 0.40, "lora": 0.35, "qlora": 0.25}


class TimeEstimate(BaseModel):
    flops_per_token: float
    flops_per_step: float  # one optimizer step, all GPUs
    mfu: float
    peak_tflops_per_gpu: float
    step_seconds: float
    tokens_per_second: float
    steps: int | None = None
    total_seconds: float | None = None
    note: str


def _attention_flops_per_token(spec: ModelSpec, seq: int) -> float:
    total = 0
    for group in spec.blocks:
        att = group.block.attention
        total += group.count * 2 * 2 * seq * att.num_heads * (att.head_dim + att.v_head_dim) / 2
    return total


def training_flops_per_token(spec: ModelSpec, counts: ParamCounts, train: TrainingLayout, plan: Plan) -> float:
    matmul = counts.active_per_token  # blocks (top-k experts only) + LM head; the embedding is a lookup
    attention = _attention_flops_per_token(spec, plan.seq_len)
    forward = 2 * matmul + attention
    head = spec.vocab_size * spec.hidden_size
    if train.method == "full":
        backward = 2 * forward
    elif train.method == "freeze":
        first = min(train.trainable_layers)
        active_share = matmul / max(1, counts.total - counts.embeddings)
        above = sum(counts.per_layer[first:]) * active_share + head
        backward = 2 * above + attention * (spec.num_layers - first) / spec.num_layers
        backward += 2 * train.trainable_params * active_share
    else:
        backward = forward + 4 * train.adapter_params  # input grads everywhere, weight grads for adapters only
        forward += 2 * train.adapter_params
    recompute = forward if plan.gradient_checkpointing else 0
    return forward + backward + recompute


def estimate_time(spec: ModelSpec, counts: ParamCounts, train: TrainingLayout, plan: Plan, gpu: GpuSpec,
                  mfu: float | None = None, samples: int | None = None, epochs: float = 1.0) -> TimeEstimate:
    mfu = mfu if mfu is not None else DEFAULT_MFU[plan.method]
    per_token = training_flops_per_token(spec, counts, train, plan)
    tokens_per_step = plan.global_batch * plan.seq_len
    flops_step = per_token * tokens_per_step
    peak = gpu.peak_tflops(plan.compute_dtype) * 1e12
    seconds = flops_step / (peak * mfu * plan.gpus)
    steps = total = None
    if samples:
        steps = max(1, int(-(-samples * epochs // plan.global_batch)))
        total = steps * seconds
    note = (f"at {mfu:.0%} MFU of {gpu.name}'s {peak / 1e12:.0f} TFLOP/s "
            f"({plan.compute_dtype}{', TF32' if plan.compute_dtype == 'fp32' else ''}) per GPU; "
            "sequences assumed full length")
    return TimeEstimate(flops_per_token=per_token, flops_per_step=flops_step, mfu=mfu,
                        peak_tflops_per_gpu=peak / 1e12, step_seconds=seconds,
                        tokens_per_second=tokens_per_step / seconds, steps=steps, total_seconds=total, note=note)
