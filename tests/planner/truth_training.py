"""Independent truth for a training step: optimizer state, FLOPs, DeepSpeed's ZeRO model states.

* optimizer state: the optimizer the HF Trainer (which LLaMA-Factory and TRL subclass) creates
  for an `optim` name, stepped once on a real model; the bytes are what `optimizer.state` holds;
* FLOPs: `torch.utils.flop_counter.FlopCounterMode` around one forward + backward;
* ZeRO: DeepSpeed's own estimator functions, fed the parameter counts DeepSpeed's
  `model_to_params` takes from a real model.

Like `truth.py`, it imports nothing from `planner`, `diagnostics` or `tui`.
"""

from __future__ import annotations

import warnings

from tests.planner.truth import random_ids

# ftplan's optimizer names -> the HF Trainer's `optim` (and `optim_args`), as LLaMA-Factory passes them on
TRAINER_OPTIM = {
    "adamw": ("adamw_torch", None),
    "adamw-fused": ("adamw_torch_fused", None),
    "adamw-8bit": ("adamw_bnb_8bit", None),
    "paged-adamw-8bit": ("paged_adamw_8bit", None),
    "adafactor": ("adafactor", None),
    "sgd": ("sgd", None),
    "sgd-momentum": ("sgd", "momentum=0.9"),
    "paged-adamw": ("paged_adamw_32bit", None),
    "lion": ("lion_32bit", None),
    "paged-lion": ("paged_lion_32bit", None),
    "lion-8bit": ("lion_8bit", None),
    "paged-lion-8bit": ("paged_lion_8bit", None),
}


def reset_bitsandbytes_overrides() -> None:
    """bitsandbytes keeps per-parameter overrides (keyed by `id(param)`) in a process-wide singleton, and the
    Trainer registers one per nn.Embedding: clear them so one test's ids cannot leak into the next."""
    try:
        from bitsandbytes.optim import GlobalOptimManager
    except ImportError:
        return
    GlobalOptimManager.get_instance().initialize()


def trainer_optimizer(model, optimizer: str, output_dir):
    """The optimizer `transformers.Trainer.create_optimizer` builds for `optimizer` (CPU run, no logging)."""
    from transformers import Trainer, TrainingArguments

    optim, optim_args = TRAINER_OPTIM[optimizer]
    args = TrainingArguments(output_dir=str(output_dir), optim=optim, optim_args=optim_args, use_cpu=True,
                             report_to="none", learning_rate=1e-3, save_strategy="no", logging_strategy="no")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = Trainer(model=model, args=args)
        return trainer.create_optimizer()


def step_once(model, optim, vocab: int, *, batch: int = 1, seq: int = 8) -> None:
    """One forward, backward and optimizer step on random tokens."""
    ids = random_ids(batch, seq, vocab)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bitsandbytes: "paged optimizers are not supported on CPU"
        optim.step()
    optim.zero_grad(set_to_none=True)


def optimizer_state_tensors(optim) -> dict[str, list]:
    """Every tensor in `optim.state`, by key, each storage once (bitsandbytes shares its quantile maps)."""
    import torch

    seen: set[int] = set()
    out: dict[str, list] = {}
    for state in optim.state.values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.untyped_storage().data_ptr() not in seen:
                seen.add(value.untyped_storage().data_ptr())
                out.setdefault(key, []).append(value)
    return out


def tensor_bytes(tensors) -> int:
    return sum(t.untyped_storage().nbytes() for t in tensors)


def training_flops(model, batch: int, seq: int, vocab: int) -> tuple[int, int, dict[str, int]]:
    """FLOPs of one forward (loss included) and of its backward, as FlopCounterMode counts them, and
    the per-op totals of both. MoE experts run their eager loop: FlopCounterMode has no formula for
    `torch._grouped_mm`, transformers 5's default experts kernel, so it would count them as zero."""
    from torch.utils.flop_counter import FlopCounterMode

    if hasattr(model, "set_experts_implementation") and getattr(model.config, "_experts_implementation", None):
        model.set_experts_implementation("eager")
    ids = random_ids(batch, seq, vocab)
    forward, backward = FlopCounterMode(display=False), FlopCounterMode(display=False)
    with forward:
        loss = model(input_ids=ids, labels=ids).loss
    with backward:
        loss.backward()
    by_op: dict[str, int] = {}
    for counter in (forward, backward):
        for op, n in counter.get_flop_counts().get("Global", {}).items():
            by_op[str(op)] = by_op.get(str(op), 0) + n
    return forward.get_total_flops(), backward.get_total_flops(), by_op


def deepspeed_model_params(model) -> tuple[int, int]:
    """(total parameters, largest layer's parameters) as DeepSpeed's ZeRO-3 estimator takes them."""
    from deepspeed.runtime.zero.stage3 import model_to_params

    total, largest = model_to_params(model)
    if any(p.is_meta for p in model.parameters()):
        # DeepSpeed de-duplicates tied weights by data_ptr, which is 0 for every meta tensor;
        # `parameters()` yields a shared parameter once already
        total = sum(p.numel() for p in model.parameters())
    return total, largest


def deepspeed_zero_gpu_bytes(stage: int, total_params: int, largest_layer_params: int, gpus: int) -> int:
    """Per-GPU model-state bytes from DeepSpeed's estimator, no offload, one node.

    ZeRO-2 (stage_1_and_2.py): 2P + 18P/N, "2 = params_16bit, 18 = 2_grads_16bit + 4_grads_32bit +
    4_params_32bit + 8_optimizer_states_32bit". ZeRO-3 (stage3.py): 4 * largest_layer + 18P/N. The
    `additional_buffer_factor` there multiplies the host (CPU) figure only.
    """
    if stage == 2:
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

        _, gpu = estimate_zero2_model_states_mem_needs(total_params, num_gpus_per_node=gpus, num_nodes=1,
                                                       cpu_offload=False)
        return gpu
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    _, gpu, _ = estimate_zero3_model_states_mem_needs(total_params, largest_layer_params, num_gpus_per_node=gpus,
                                                      num_nodes=1, cpu_offload=False, cpu_offload_params=False)
    return gpu
