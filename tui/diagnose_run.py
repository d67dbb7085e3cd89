"""What the Diagnose tab runs: its own micro-batch, accumulation, sequence and steps, sized for the device,
and a refusal when a CPU run would take more than a few minutes.

Pure functions of planner objects (no torch): the tab calls them before it starts the child process.
"""

from __future__ import annotations

import os

from planner.flops import step_flops
from planner.methods import layout
from planner.params import count_params
from planner.plan import Plan
from planner.spec import ModelSpec
from planner.stages import stage_spec
from tui.views import duration

# A CPU run is for seeing the diagnostics work, not for training: small enough to take seconds per step
# (DiagnoseSettings' own default plan is this size too).
CPU_RUN = {"batch_size": 2, "grad_accum": 1, "seq_len": 256}
STEPS = 20
# fp32 FLOP/s one core sustains in a training step: a 1024x1024 fp32 matmul ran at 24 GFLOP/s per core (torch
# 2.13, 2 cores); a diagnose step of Qwen2.5-0.5B LoRA (128 tokens, 2.6e11 FLOPs by planner.flops) took 189 s
# on those 2 cores shared with other work, about 1.4 GFLOP/s, or ~4 per core had they been free: small matmuls,
# the 152k-wide head, norms and the monitor's per-layer statistics run far below the matmul peak.
CPU_FLOPS_PER_CORE = 24e9
CPU_EFFICIENCY = 0.15
CPU_STARTUP_S = 15.0  # the child imports torch and transformers and builds the model before the first step
CPU_LIMIT_S = 300.0  # "a few minutes": longer runs are refused with what to change


def run_defaults(plan: Plan, on_gpu: bool) -> dict[str, int]:
    """The run's micro-batch, accumulation and sequence when its fields are blank: the plan's on a GPU,
    a small run on the CPU."""
    if on_gpu:
        return {"batch_size": plan.batch_size, "grad_accum": plan.grad_accum, "seq_len": plan.seq_len}
    return dict(CPU_RUN)


def run_plan(plan: Plan, sizes: dict[str, int]) -> Plan:
    """The plan the child runs: one process on one device (no data parallelism, no ZeRO, no offload)."""
    return plan.with_(gpus=1, zero=0, offload_optimizer=False, **sizes)


def not_used(plan: Plan) -> str | None:
    """The plan's multi-GPU settings the run cannot use, said once, so a ZeRO-3 plan is not read as tested."""
    parts = ([f"{plan.gpus} GPUs"] if plan.gpus > 1 else []) + ([f"ZeRO-{plan.zero}"] if plan.zero else []) \
        + (["optimizer offload"] if plan.offload_optimizer else [])
    if not parts:
        return None
    return f"the plan's {', '.join(parts)} are not used: the run is one process on one device"


def cpu_seconds(spec: ModelSpec, plan: Plan, steps: int, cores: int | None = None) -> float:
    """About how long `steps` optimizer steps of `plan` take on this machine's CPU, start-up included."""
    cores = cores or os.cpu_count() or 1
    spec = stage_spec(spec, plan)
    counts = count_params(spec)
    per_token, tokens = step_flops(spec, counts, layout(spec, counts, plan), plan)
    return CPU_STARTUP_S + steps * per_token * tokens / (cores * CPU_FLOPS_PER_CORE * CPU_EFFICIENCY)


def cpu_refusal(spec: ModelSpec, plan: Plan, steps: int, cores: int | None = None) -> str | None:
    """Why a CPU run is refused (it would take more than CPU_LIMIT_S), with what to lower; None to run it."""
    seconds = cpu_seconds(spec, plan, steps, cores)
    if seconds <= CPU_LIMIT_S:
        return None
    return (f"not run: {steps} steps of {spec.name} at micro-batch {plan.batch_size} x {plan.grad_accum} x "
            f"sequence {plan.seq_len} would take about {duration(seconds)} on this CPU (no GPU is visible); "
            f"lower steps, batch or sequence, pick a smaller model, or run it on a GPU")


def config_only(source: str) -> bool:
    """A model read from a preset, the hub or the HF cache has no weights here: the run initialises them at
    random and tokenizes with the fallback byte tokenizer."""
    return source.startswith(("preset:", "hub:", "HF cache:"))


def weights_banner(random_init: bool, tokenizer: str | None) -> str | None:
    """What a run on random weights or the byte tokenizer means for its findings."""
    parts = (["random weights (config only)"] if random_init else []) + (
        ["the fallback byte tokenizer"] if tokenizer and "byte" in tokenizer else [])
    if not parts:
        return None
    return (f"runs on {' and '.join(parts)}: the gradients, memory and numerics are real, but the loss is not "
            "a pretrained model's (a loss plateau or a high first loss is expected, not a problem); give a "
            "model directory with weights and a tokenizer to judge the loss")
