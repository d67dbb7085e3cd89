"""Truth for sharded and model-parallel layouts: torch's own partitioning, on a fake process group.

`torch.testing._internal.distributed.fake_pg` gives one process a world of N ranks whose collectives do
nothing, so FSDP2's `fully_shard` and the tensor-parallel styles run their real sharding code on CPU: the
local shards they leave on rank 0 are what rank 0 holds. Other ranks' shards come from `torch.chunk`, the
split FSDP2 shards a parameter's dim 0 with (`_fsdp_param.py`, `_chunk_with_empty`). Imports nothing from
the code under test.
"""

from __future__ import annotations

import contextlib
import warnings

from tests.planner.truth import hf_config


@contextlib.contextmanager
def fake_world(size: int):
    """A process group of `size` ranks in this process (this one is rank 0), torn down afterwards."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=size)
    try:
        yield
    finally:
        dist.destroy_process_group()


def causal_lm(config: dict, dtype: str = "bfloat16"):
    import torch
    from transformers import AutoModelForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AutoModelForCausalLM.from_config(hf_config(config)).to(getattr(torch, dtype))


def local_bytes(params) -> int:
    """Bytes of this rank's pieces of the parameters (a DTensor's local shard, a plain tensor whole)."""
    from torch.distributed.tensor import DTensor

    total = 0
    for p in params:
        t = p.to_local() if isinstance(p, DTensor) else p
        total += t.numel() * t.element_size()
    return total


def fsdp2_sharded(model, ranks: int, *, offload: bool = False):
    """FSDP2 as accelerate and axolotl apply it: every decoder layer a unit, then the root (the embedding,
    final norm and head), sharded over `ranks`; `offload` is CPUOffloadPolicy (unpinned: no accelerator)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, fully_shard

    mesh = init_device_mesh("cpu", (ranks,))
    policy = {"offload_policy": CPUOffloadPolicy(pin_memory=False)} if offload else {}
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh, **policy)
    fully_shard(model, mesh=mesh, **policy)
    return model


def chunk_bytes_per_rank(model, ranks: int) -> list[int]:
    """Each rank's FSDP2 shard bytes of an unsharded model: dim 0 split by torch.chunk."""
    import torch

    out = [0] * ranks
    for p in model.parameters():
        for r, piece in enumerate(torch.chunk(p.detach(), ranks, dim=0)):
            out[r] += piece.numel() * piece.element_size()
    return out


def unsharded_unit_bytes(unit) -> int:
    """Bytes an FSDP2 unit holds all-gathered (`unshard()`), then resharded again."""
    unit.unshard()
    try:
        return local_bytes(unit.parameters())
    finally:
        unit.reshard()


def megatron_tp_plan(model) -> dict:
    """Megatron's tensor-parallel layout as torch's styles: q/k/v and gate/up column-parallel, o and down
    row-parallel, the embedding split by vocabulary (RowwiseParallel on an nn.Embedding shards dim 0), the LM
    head column-parallel (vocabulary-parallel logits); norms replicated."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    plan = {"model.embed_tokens": RowwiseParallel(), "lm_head": ColwiseParallel()}
    for i, _ in enumerate(model.model.layers):
        for name in ("q_proj", "k_proj", "v_proj"):
            plan[f"model.layers.{i}.self_attn.{name}"] = ColwiseParallel()
        plan[f"model.layers.{i}.self_attn.o_proj"] = RowwiseParallel()
        for name in ("gate_proj", "up_proj"):
            plan[f"model.layers.{i}.mlp.{name}"] = ColwiseParallel()
        plan[f"model.layers.{i}.mlp.down_proj"] = RowwiseParallel()
    return plan


def tensor_parallel(model, world: int, tp: int):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import parallelize_module

    mesh = init_device_mesh("cpu", (world // tp, tp), mesh_dim_names=("dp", "tp"))["tp"]
    return parallelize_module(model, mesh, megatron_tp_plan(model))


def pipeline_stage_bytes(model, stages: int, expert_ranks: int) -> list[int]:
    """Bytes of each pipeline stage on its rank: the first stage the embedding, the last the final norm and
    LM head, decoder layers split evenly; fused routed-expert tensors (dim 0: experts) sharded over
    `expert_ranks` by `distribute_tensor(Shard(0))`, the rest whole."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (dist.get_world_size() // expert_ranks, expert_ranks),
                            mesh_dim_names=("rest", "ep"))["ep"]

    def held(name: str, p) -> int:
        if ".experts." in name:
            p = distribute_tensor(p.detach(), mesh, [Shard(0)]).to_local()
        return p.numel() * p.element_size()

    layers = model.model.layers
    per = len(layers) // stages
    out = []
    for s in range(stages):
        total = sum(held(n, p) for layer in layers[s * per:(s + 1) * per] for n, p in layer.named_parameters(
            prefix="model.layers.x"))
        if s == 0:
            total += sum(held(n, p) for n, p in model.model.embed_tokens.named_parameters())
        if s == stages - 1:
            total += sum(held(n, p) for n, p in model.model.norm.named_parameters())
            total += sum(held(n, p) for n, p in model.lm_head.named_parameters())
        out.append(total)
    return out
