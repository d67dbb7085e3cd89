"""Run a few real training steps and compare their peak memory with the planner's estimate.

On CUDA the truth is PyTorch's own counters (`max_memory_allocated` / `_reserved`)
and NVML's view of this process; on CPU the steps still run (a functional check)
but no memory is measured. Used by `scripts/gpu_check.sh` and by `ftplan diagnose`.
"""

from __future__ import annotations

import contextlib
import os

from pydantic import BaseModel

from diagnostics.models import build_model, torch_dtype
from planner.memory import estimate_memory
from planner.plan import Plan
from planner.spec import ModelSpec, spec_from_config
from planner.target import Machine


class MemoryCheck(BaseModel):
    model: str
    plan: Plan
    device: str
    steps: int
    losses: list[float]
    estimate_allocated: int
    estimate_reserved: int  # allocated peak + the planner's fragmentation allowance
    estimate_total: int  # + CUDA context: what NVML should see
    measured_allocated: int | None = None  # torch.cuda.max_memory_allocated
    measured_reserved: int | None = None  # torch.cuda.max_memory_reserved
    measured_process: int | None = None  # NVML: memory this process holds on the GPU

    def error(self, measured: int | None, estimated: int) -> float | None:
        return None if measured in (None, 0) else (estimated - measured) / measured


def make_optimizer(params, plan: Plan, lr: float = 1e-5, weight_decay: float = 0.0):
    """The optimizer the plan names, as the HF Trainer / LLaMA-Factory would create it."""
    import torch

    params = [p for p in params if p.requires_grad]
    if plan.optimizer in ("adamw", "adamw-fused"):
        fused = plan.optimizer == "adamw-fused"
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None,
                                 foreach=None if fused else True)
    if plan.optimizer in ("adamw-8bit", "paged-adamw-8bit"):
        import bitsandbytes as bnb

        cls = bnb.optim.PagedAdamW8bit if plan.optimizer.startswith("paged") else bnb.optim.AdamW8bit
        return cls(params, lr=lr, weight_decay=weight_decay)
    if plan.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=lr, relative_step=False, scale_parameter=False, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay,
                           momentum=0.9 if plan.optimizer == "sgd-momentum" else 0.0)


def _process_memory(device_index: int) -> int | None:
    """This process's memory on `cuda:<device_index>`, from one NVML probe (it lists the processes)."""
    from diagnostics.nvml import probe

    return next((p.used_memory for g in probe().visible if g.cuda_index == device_index
                 for p in g.processes if p.own), None)


def measure_training_memory(config: dict, plan: Plan, *, steps: int = 3, device: str = "cuda",
                            spec: ModelSpec | None = None, name: str | None = None) -> MemoryCheck:
    """Build the model for `plan`, train `steps` optimizer steps on random tokens, report the peaks."""
    import torch

    spec = spec or spec_from_config(config, source=name or "config")
    model = build_model(config, plan, device=device)
    optimizer = make_optimizer(model.parameters(), plan)
    on_cuda = device.startswith("cuda")
    index = torch.device(device).index or 0 if on_cuda else None
    scaler = torch.amp.GradScaler(device) if plan.precision == "fp16-mixed" else None
    autocast = (torch.autocast(device.split(":")[0], dtype=torch_dtype(plan.compute_dtype)) if plan.mixed
                else contextlib.nullcontext())
    if on_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    generator = torch.Generator(device="cpu").manual_seed(0)
    vocab = spec.vocab_size
    losses = []
    for _ in range(steps):
        for _ in range(plan.grad_accum):
            ids = torch.randint(0, vocab, (plan.batch_size, plan.seq_len), generator=generator).to(device)
            with autocast:
                loss = model(input_ids=ids, labels=ids).loss / plan.grad_accum
            (scaler.scale(loss) if scaler else loss).backward()
            losses.append(float(loss.detach()) * plan.grad_accum)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    machine = Machine(device="cuda" if on_cuda else "cpu")
    estimate = estimate_memory(spec, plan, machine=machine)
    check = MemoryCheck(
        model=name or spec.name, plan=plan, device=device, steps=steps, losses=losses,
        estimate_allocated=estimate.peak_allocated,
        estimate_reserved=int(estimate.peak_allocated * (1 + machine.fragmentation)),
        estimate_total=estimate.total,
    )
    if on_cuda:
        torch.cuda.synchronize()
        check.measured_allocated = torch.cuda.max_memory_allocated(device)
        check.measured_reserved = torch.cuda.max_memory_reserved(device)
        check.measured_process = _process_memory(index)
    del model, optimizer
    if on_cuda:
        torch.cuda.empty_cache()
    return check


def gpu_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available() and os.environ.get("CUDA_VISIBLE_DEVICES", "x") != ""
