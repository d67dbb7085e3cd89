"""Static checks of a training config: what can be said before anything runs.

Each check names the config key, says why, and where there is a clear fix, the value
to set (framework-neutral field names; `planner.frameworks.config_changes` turns them
into the framework's keys).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel

from planner.frameworks import RunConfig
from planner.hardware import GpuSpec

Severity = Literal["error", "warning", "info"]

HIGH_LR = {"full": 2e-5, "freeze": 5e-5, "lora": 2e-4, "qlora": 2e-4}  # above these, warm up
TOO_HIGH_LR = {"full": 1e-4, "freeze": 2e-4, "lora": 1e-3, "qlora": 1e-3}


class Check(BaseModel):
    severity: Severity
    key: str | None = None  # the config key concerned, in the framework's naming
    message: str
    fix: dict[str, Any] = {}  # framework-neutral: Plan fields or Hyper fields -> value


def total_steps(run: RunConfig, gpus: int) -> int | None:
    if run.hyper.max_steps:
        return run.hyper.max_steps
    train = run.data.train_samples
    if not train:
        return None
    per_epoch = math.ceil(train / (run.plan.batch_size * run.plan.grad_accum * gpus))
    return max(1, math.ceil(per_epoch * run.hyper.epochs))


def static_checks(run: RunConfig, gpu: GpuSpec | None, gpus: int) -> list[Check]:
    plan, h, names = run.plan, run.hyper, run.key_names
    out: list[Check] = []
    lr = h.learning_rate or 0.0
    method = plan.method
    warm = h.warmup_ratio > 0 or h.warmup_steps > 0
    if lr > TOO_HIGH_LR[method]:
        out.append(Check(severity="warning", key=names.get("learning_rate"),
                         message=f"learning_rate {lr:g} is high for {method} fine-tuning (usual range up to "
                                 f"{HIGH_LR[method]:g}); expect spikes or divergence — check with --diagnose",
                         fix={"learning_rate": HIGH_LR[method]}))
    if lr > HIGH_LR[method] and not warm:
        out.append(Check(severity="warning", key=names.get("warmup_ratio"),
                         message=f"no warmup with learning_rate {lr:g}: Adam's first steps are the least reliable; "
                                 "warm up over a few percent of the run",
                         fix={"warmup_ratio": 0.05}))
    if h.max_grad_norm is None or h.max_grad_norm <= 0:
        out.append(Check(severity="warning", key=names.get("max_grad_norm"),
                         message="gradient clipping is off (max_grad_norm unset or 0): one bad batch can blow up "
                                 "training", fix={"max_grad_norm": 1.0}))
    if gpu is not None:
        if h.fp16 and gpu.supports_bf16:
            out.append(Check(severity="warning", key=names.get("fp16"),
                             message=f"fp16 on {gpu.name}, which has bf16: bf16 needs no loss scaling and does not "
                                     "underflow", fix={"bf16": True, "fp16": False}))
        if plan.compute_dtype == "bf16" and not gpu.supports_bf16:
            out.append(Check(severity="error", key=names.get("bf16"),
                             message=f"bf16 on {gpu.name} (compute capability {gpu.compute_capability}), which has "
                                     "no bf16: the run will fail; use fp16", fix={"bf16": False, "fp16": True}))
        if plan.attention == "flash" and gpu.predates_flash_attention:
            out.append(Check(severity="error", key=names.get("attention"),
                             message=f"flash-attention 2 needs compute capability 8.0; {gpu.name} has "
                                     f"{gpu.compute_capability}", fix={"attention": "sdpa"}))
    if method in ("lora", "qlora"):
        alpha = h.lora_alpha if h.lora_alpha is not None else (2 * plan.lora_rank if run.format == "llamafactory"
                                                                 else None)
        if alpha is not None:
            scale = alpha / (math.sqrt(plan.lora_rank) if h.use_rslora else plan.lora_rank)
            if scale > 4:
                out.append(Check(severity="warning", key="lora_alpha",
                                 message=f"LoRA scaling alpha/r = {scale:g}: updates are {scale:g}x larger than "
                                         "the adapters' own; lower lora_alpha or learning_rate"))
        if plan.lora_rank >= 64 and not h.use_rslora:
            out.append(Check(severity="info", key="use_rslora",
                             message=f"lora_rank {plan.lora_rank} with alpha/r scaling shrinks updates as the rank "
                                     "grows; rank-stabilised LoRA (use_rslora: true) scales by alpha/sqrt(r)"))
    steps = total_steps(run, gpus)
    if steps is not None:
        global_batch = plan.batch_size * plan.grad_accum * gpus
        train = run.data.train_samples
        if train is not None and global_batch > train:
            out.append(Check(severity="warning", key=names.get("grad_accum"),
                             message=f"the global batch ({global_batch}) is larger than the {train} training "
                                     "examples: one step per epoch", fix={"grad_accum": max(1, plan.grad_accum // 2)}))
        elif steps < 30:
            out.append(Check(severity="warning", key=names.get("grad_accum"),
                             message=f"only {steps} optimizer steps in the whole run (global batch {global_batch}); "
                                     "the schedule and warmup have little room"))
        else:
            warm_steps = h.warmup_steps or int(h.warmup_ratio * steps)
            out.append(Check(severity="info", message=f"{steps} optimizer steps of {global_batch} examples"
                                                     + (f", {warm_steps} of them warmup" if warm_steps else "")))
    for key in run.ignored:
        out.append(Check(severity="warning" if "did you mean" in key else "info", key=key.split(" ")[0],
                         message=f"key '{key}' is not a {run.format} setting ftplan knows; it was ignored"))
    return out
