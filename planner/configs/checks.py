"""Static checks of a training config: what can be said before anything runs.

Each check is a `Finding` on a setting (its field), says why, and where there is a clear fix,
carries the `Change` (framework-neutral field names; `planner.configs.fix.config_changes`
turns them into the framework's keys).
"""

from __future__ import annotations

import math
from typing import Any

from planner.configs.common import RunConfig
from planner.configs.read import FRAMEWORKS
from planner.findings import Change, Finding
from planner.hardware import GpuSpec

HIGH_LR = {"full": 2e-5, "freeze": 5e-5, "lora": 2e-4, "qlora": 2e-4}  # above these, warm up
TOO_HIGH_LR = {"full": 1e-4, "freeze": 2e-4, "lora": 1e-3, "qlora": 1e-3}
# The other PEFT methods train far fewer, differently scaled parameters, at the rates their papers and peft's
# examples use: soft prompts 3e-2 (peft's prompt-tuning example; Lester et al. 2021 went to 0.3 with Adafactor),
# P-tuning and prefix tuning 1e-3 (peft's examples), IA3 3e-3 (Liu et al. 2022, T-Few), Houlsby adapters up to
# 3e-3 (Houlsby et al. 2019's sweep), OFT 1e-4 (LLaMA-Factory's OFT examples)
HIGH_LR |= {"prompt": 3e-2, "ptuning": 1e-3, "prefix": 1e-3, "ia3": 3e-3, "adapter": 1e-3, "oft": 5e-4}
TOO_HIGH_LR |= {"prompt": 0.3, "ptuning": 1e-2, "prefix": 1e-2, "ia3": 3e-2, "adapter": 1e-2, "oft": 5e-3}


def total_steps(run: RunConfig, gpus: int) -> int | None:
    if run.hyper.max_steps:
        return run.hyper.max_steps
    train = run.data.train_samples
    if not train:
        return None
    per_epoch = math.ceil(train / (run.plan.batch_size * run.plan.grad_accum * gpus))
    return max(1, math.ceil(per_epoch * run.hyper.epochs))


def _change(title: str, changes: dict[str, Any], current: dict[str, Any], reason: str) -> Change:
    return Change(title=title, changes=changes, current=current, reason=reason)


def static_checks(run: RunConfig, gpu: GpuSpec | None, gpus: int) -> list[Finding]:
    """What the config itself says about stability and schedule. Settings are named `{field}` in the
    messages and `field` on each finding; the preflight words them with the framework's keys. The GPU's
    own limits (bf16, flash-attention) are the estimate's findings (`planner.service.warnings`)."""
    plan, h = run.plan, run.hyper
    out: list[Finding] = []
    lr = h.learning_rate or 0.0
    method = plan.method
    warm = h.warmup_ratio > 0 or h.warmup_steps > 0
    if lr > TOO_HIGH_LR[method]:
        out.append(Finding(
            severity="warning", code="high_lr", field="learning_rate",
            message=f"{{learning_rate}} {lr:g} is high for {method} fine-tuning (usual range up to "
                    f"{HIGH_LR[method]:g}); expect spikes or divergence — check with --diagnose",
            change=_change(f"Lower the learning rate to {HIGH_LR[method]:g}", {"learning_rate": HIGH_LR[method]},
                           {"learning_rate": lr}, f"the usual top of the range for {method}")))
    if lr > HIGH_LR[method] and not warm:
        out.append(Finding(
            severity="warning", code="no_warmup", field="warmup_ratio",
            message=f"no warmup with {{learning_rate}} {lr:g}: Adam's first steps are the least reliable; warm up "
                    "over a few percent of the run",
            change=_change("Warm up over 5% of the steps", {"warmup_ratio": 0.05}, {"warmup_ratio": h.warmup_ratio},
                           "Adam's second-moment estimate is poor in the first steps")))
    if h.max_grad_norm is None or h.max_grad_norm <= 0:
        out.append(Finding(
            severity="warning", code="no_clipping", field="max_grad_norm",
            message="gradient clipping is off ({max_grad_norm} unset or 0): one bad batch can blow up training",
            change=_change("Clip gradients at 1.0", {"max_grad_norm": 1.0}, {"max_grad_norm": h.max_grad_norm},
                           "bounds the update of an outlier batch")))
    if gpu is not None and h.fp16 and gpu.supports_bf16:
        out.append(Finding(
            severity="warning", code="fp16_on_bf16_gpu", field="precision",
            message=f"fp16 on {gpu.name}, which has bf16: bf16 needs no loss scaling and does not underflow",
            change=_change("Train in bf16", {"precision": "bf16-mixed"}, {"precision": plan.precision},
                           "bf16 has fp32's range")))
    if method in ("lora", "qlora"):
        alpha, default_alpha = h.lora_alpha, FRAMEWORKS[run.format].default_lora_alpha
        if alpha is None and default_alpha is not None:
            alpha = default_alpha(plan.lora_rank)
        if alpha is not None:
            scale = alpha / (math.sqrt(plan.lora_rank) if h.use_rslora else plan.lora_rank)
            if scale > 4:
                out.append(Finding(severity="warning", code="lora_scale",
                                   message=f"LoRA scaling alpha/r = {scale:g}: updates are {scale:g}x larger than "
                                           "the adapters' own; lower lora_alpha or {learning_rate}"))
        if plan.lora_rank >= 64 and not h.use_rslora:
            out.append(Finding(severity="info", code="rslora", field="lora_rank",
                               message=f"{{lora_rank}} {plan.lora_rank} with alpha/r scaling shrinks updates as the "
                                       "rank grows; rank-stabilised LoRA (use_rslora: true) scales by alpha/sqrt(r)"))
    steps = total_steps(run, gpus)
    if steps is not None:
        global_batch = plan.batch_size * plan.grad_accum * gpus
        train = run.data.train_samples
        if train is not None and global_batch > train:
            fewer = max(1, plan.grad_accum // 2)
            out.append(Finding(
                severity="warning", code="batch_over_dataset", field="grad_accum",
                message=f"the global batch ({global_batch}) is larger than the {train} training examples: one step "
                        "per epoch",
                change=_change(f"Accumulate {fewer} micro-batches", {"grad_accum": fewer},
                               {"grad_accum": plan.grad_accum}, "more optimizer steps per epoch")))
        elif steps < 30:
            # advice on the schedule, not a risk to the run: info, so --strict does not fail on it
            out.append(Finding(severity="info", code="few_steps", field="grad_accum",
                               message=f"only {steps} optimizer steps in the whole run (global batch {global_batch}); "
                                       "the schedule and warmup have little room"))
        else:
            warm_steps = h.warmup_steps or int(h.warmup_ratio * steps)
            out.append(Finding(severity="info", code="steps",
                               message=f"{steps} optimizer steps of {global_batch} examples"
                                       + (f", {warm_steps} of them warmup" if warm_steps else "")))
    framework = FRAMEWORKS[run.format]
    for entry in run.ignored:
        strict = framework.rejects_unknown
        key, _, close = entry.partition(" (did you mean ")  # the reader's "key (did you mean other?)"
        out.append(Finding(
            severity="warning" if strict or close else "info", code="unknown_key",
            message=f"key '{key}' is not a setting ftplan knows for {framework.display}"
                    + (f" (did you mean {close}" if close else "") + "; it was ignored"
                    + (f" ({framework.display} itself stops on keys it does not know)" if strict else ""),
            data={"key": key}))
    # settings the reader could not plan, each saying which way the estimate is off
    out += run.warnings
    if plan.zero and gpus == 1:
        sharding = f"ZeRO-{plan.zero}"
        out.append(Finding(
            severity="warning", code="sharding_on_one_gpu", field="zero",
            message=f"{sharding} sharding ({{zero}}) is planned on 1 GPU, where it divides nothing"
                    + (f"; the config implies {run.gpus} GPUs" if run.gpus and run.gpus > 1 else "")
                    + ": if the launcher starts more processes (NPROC_PER_NODE, accelerate's num_processes, "
                      "WORLD_SIZE), pass --gpus N; per-GPU memory is then lower than this estimate",
            data={"direction": "overstates", "gpus": run.gpus}))
    return out
