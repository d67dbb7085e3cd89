"""Path to fit: the cheapest set of changes that makes a plan fit, and the smallest catalog GPU that fits it as is.

`planner.advice` ranks single changes by memory saved; here they are combined (with sharding over 2, 4 or 8
GPUs) and the cheapest combination that fits wins. "Cheap" is what a change takes from the run, not the memory it
saves: nothing measurable (a fused kernel), a slower step, the quality of the result, or more hardware. The costs
below order those; they are a judgement stated once, not a measurement.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import combinations
from typing import Any

from pydantic import BaseModel

from planner.advice import single_changes
from planner.configs.fix import how
from planner.errors import FtplanError
from planner.fields import Vocabulary
from planner.findings import Change
from planner.memory import estimate_memory
from planner.plan import Plan
from planner.spec import ModelSpec
from planner.stages import stage_spec
from planner.target import GpuTarget, Machine, catalog_targets
from planner.units import fmt_gib

# What a change costs the run, by the setting it changes (the first one of a candidate's changes).
COST: dict[str, float] = {
    "attention": 1,  # flash attention: same math, less memory, usually faster
    "fused_loss": 1,  # a fused cross-entropy: same loss, no full logits
    "optimizer": 2,  # fused AdamW is free; an 8-bit state rounds the moments (method-specific below)
    "precompute_ref_log_probs": 2,  # one scoring pass over the data before training
    "gradient_checkpointing": 3,  # ~1/3 more compute per step (Chen et al. 2016)
    "vllm": 3,  # generation moves to other GPUs (a server to run)
    "batch_size": 4,  # the same global batch in more, smaller micro-batches: slower steps
    "lora_target": 5,  # fewer adapted modules: less capacity
    "method": 5,  # LoRA instead of full/freeze: less capacity (QLoRA adds quantisation error, below)
    "precision": 6,  # pure bf16: small updates can round away
    "offload_optimizer": 6,  # the optimizer step runs on the CPU: much slower steps
}
_METHOD_COST = {"lora": 5, "qlora": 6}
_OPTIMIZER_COST = {"adamw-fused": 1}
GPU_COST = 4  # per doubling of the GPU count (ZeRO-3 / FSDP): hardware
SHARDS = (2, 4, 8)
MAX_CHANGES = 3  # combinations of up to this many changes


class PathToFit(BaseModel):
    change: Change | None = None  # the cheapest combination that fits; None when none of up to MAX_CHANGES does
    cost: float | None = None
    smallest_gpu: str | None = None  # the smallest catalog GPU the plan fits as is; None: none does
    smallest_gpu_total: int | None = None  # the plan's total on that GPU (its own CUDA context)
    smallest_gpu_capacity: int | None = None


def change_cost(changes: dict[str, Any], plan: Plan) -> float:
    """The cost of one candidate change (see COST)."""
    if "gpus" in changes:
        doublings = max(1, (changes["gpus"] // max(1, plan.gpus)).bit_length() - 1)
        return GPU_COST * doublings
    key = next(iter(changes))
    if key == "method":
        return _METHOD_COST.get(changes["method"], COST["method"])
    if key == "optimizer":
        return _OPTIMIZER_COST.get(changes["optimizer"], COST["optimizer"])
    return COST.get(key, 5)


def candidates(spec: ModelSpec, plan: Plan, capacity: int, machine: Machine) -> list[tuple[str, str, dict[str, Any]]]:
    """advice's single changes that keep the data (no shorter sequences), with sharding over 2, 4 and 8 GPUs in
    place of advice's one (which only names a count that fits alone)."""
    out = [c for c in single_changes(spec, plan, capacity, machine) if "seq_len" not in c[2] and "gpus" not in c[2]]
    if plan.method != "qlora" and not plan.optimizer_in_backward:  # ZeRO-3 cannot shard 4-bit weights or a fused step
        out += [(f"Shard with ZeRO-3 / FSDP over {n} GPUs", "weights, gradients and optimizer state are divided "
                 "across the GPUs", {"gpus": n, "zero": 3}) for n in SHARDS if n > plan.gpus]
    return out


def cheapest_fit(spec: ModelSpec, plan: Plan, capacity: int, machine: Machine | None = None,
                 vocabulary: Vocabulary = "cli", stop: Callable[[], bool] | None = None) -> tuple[Change, float] | None:
    """The fitting combination of up to MAX_CHANGES candidates with the lowest total cost (ties: least memory).
    `stop`, asked before each trial, ends the search early (with None) once the asker no longer wants it."""
    machine = machine or Machine()
    base = estimate_memory(spec, plan, machine=machine).total
    found = candidates(spec, plan, capacity, machine)
    trials = []
    for size in range(1, MAX_CHANGES + 1):
        for combo in combinations(found, size):
            keys = [k for _, _, changes in combo for k in changes]
            if len(keys) != len(set(keys)):
                continue  # two changes of one setting (LoRA and QLoRA, 2 and 4 GPUs)
            trials.append((sum(change_cost(c, plan) for _, _, c in combo), size, combo))
    trials.sort(key=lambda t: (t[0], t[1]))
    best: tuple[float, int, tuple, int] | None = None
    for cost, size, combo in trials:
        if best is not None and cost > best[0]:
            break  # sorted by cost: nothing later is cheaper
        if stop is not None and stop():
            return None
        changes = {k: v for _, _, c in combo for k, v in c.items()}
        try:
            total = estimate_memory(spec, plan.with_(**changes), machine=machine).total
        except FtplanError:
            continue  # a combination the plan refuses (an 8-bit optimizer with LoRA's settings, ...)
        if total <= capacity and (best is None or total < best[3]):
            best = (cost, size, combo, total)
    if best is None:
        return None
    cost, _, combo, total = best
    changes = {k: v for _, _, c in combo for k, v in c.items()}
    title = " + ".join(t[0] for t in combo)
    together = f" (together {fmt_gib(total)})" if len(combo) > 1 else ""
    change = Change(title=title, reason="; ".join(t[1] for t in combo) + together,
                    changes=changes, how=how(changes, vocabulary), current={k: getattr(plan, k) for k in changes},
                    new_total=total, saved=base - total, fits=True)
    return change, cost


def smallest_gpu(spec: ModelSpec, plan: Plan, targets: list[GpuTarget] | None = None) -> tuple[GpuTarget, int] | None:
    """The catalog GPU with the least memory that holds the plan as is (each with its own calibration)."""
    targets = targets if targets is not None else catalog_targets()
    for target in sorted(targets, key=lambda t: t.capacity):
        total = estimate_memory(spec, plan, machine=target).total
        if total <= target.capacity:
            return target, total
    return None


def path_to_fit(spec: ModelSpec, plan: Plan, target: GpuTarget, vocabulary: Vocabulary = "cli",
                stop: Callable[[], bool] | None = None) -> PathToFit | None:
    """Both answers for a plan that does not fit `target` (the plan as plan_run returns it); None when `stop`
    (the TUI: a newer form change) ended the search: a few hundred plans that nobody will read."""
    spec = stage_spec(spec, plan)  # as plan_run plans it (a reward model's head, a reference's copy)
    cheapest = cheapest_fit(spec, plan, target.capacity, target, vocabulary, stop)
    if stop is not None and stop():
        return None
    gpu = smallest_gpu(spec, plan, catalog_targets(target.given_context, target.fragmentation))
    return PathToFit(change=cheapest[0] if cheapest else None, cost=cheapest[1] if cheapest else None,
                     smallest_gpu=gpu[0].name if gpu else None, smallest_gpu_total=gpu[1] if gpu else None,
                     smallest_gpu_capacity=gpu[0].capacity if gpu else None)
