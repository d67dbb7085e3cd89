"""Independent truth from the real stack: transformers models, peft, autograd.

Only tests and benchmarks import this module; `planner` itself never imports torch.
"""

from __future__ import annotations

import warnings


def meta_model(config: dict):
    import torch
    from transformers import AutoModelForCausalLM

    from diagnostics.models import hf_config

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(hf_config(config))


def linear_like_types():
    import torch
    from transformers.pytorch_utils import Conv1D

    return (torch.nn.Linear, Conv1D)


def build_model(config: dict, *, method: str = "full", precision: str = "bf16", kernel: str = "sdpa",
                lora_rank: int = 4, lora_target: str = "all", lora_dropout: float = 0.0,
                freeze_trainable_layers: int = 1, double_quant: bool = True, tmp_dir=None, seed: int = 0):
    """A real CPU model, set up as LLaMA-Factory would (see diagnostics.models)."""
    from diagnostics.models import build_model as build
    from planner.plan import Plan

    plan = Plan(method=method, precision=precision, attention=kernel, lora_rank=lora_rank, lora_target=lora_target,
                lora_dropout=lora_dropout, freeze_trainable_layers=freeze_trainable_layers,
                double_quant=double_quant)
    return build(config, plan, seed=seed, workdir=tmp_dir)


def model_storages(model) -> set[int]:
    """Data pointers of every parameter, buffer and bitsandbytes quantization constant."""
    import torch

    ptrs = set()
    for t in list(model.parameters()) + list(model.buffers()):
        ptrs.add(t.untyped_storage().data_ptr())
        state = getattr(t, "quant_state", None)
        for obj in (state, getattr(state, "state2", None)):
            for value in vars(obj).values() if obj is not None else ():
                if isinstance(value, torch.Tensor):
                    ptrs.add(value.untyped_storage().data_ptr())
    return ptrs


def measure_saved_bytes(model, batch: int, seq: int, vocab: int, *, seed: int = 0, autocast=None) -> int:
    """Unique storages autograd saves during forward + loss, parameters excluded."""
    import contextlib

    import torch

    exclude = model_storages(model)
    seen: dict[int, int] = {}
    keep = []

    def pack(t):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in exclude and ptr not in seen:
            seen[ptr] = storage.nbytes()
            keep.append(t)
        return t

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, seq), generator=g)
    from diagnostics.models import torch_dtype

    ctx = torch.autocast("cpu", dtype=torch_dtype(autocast)) if autocast else contextlib.nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), ctx:
        out = model(input_ids=ids, labels=ids)
    del out
    keep.clear()
    return sum(seen.values())
