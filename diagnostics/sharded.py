"""Where a trainable parameter's gradient and weight live on this rank, however the model is sharded.

The monitor (diagnostics.monitor) computes per-parameter squared norms of this rank's pieces and, where the
pieces are disjoint shards of one tensor, sums them over the ranks in one all-reduce: |g|^2 is the sum of the
shards' |g_i|^2, so the result equals the unsharded run's norm without gathering a full gradient.

- plain / DDP: `p.grad` and `p`, whole on every rank (nothing to sum).
- FSDP1 (use_orig_params): `p.grad` is this rank's flat shard; the weights are left as they were measured.
- FSDP2 (`fully_shard`): `p` and `p.grad` are DTensors sharded over the ranks; their local tensors are summed.
- DeepSpeed ZeRO-1/2: after the last backward of a step, before `engine.step()`, each rank holds the averaged
  gradient of its optimizer partition in DeepSpeed's buffers (`p.grad` is None); `_hp_mapping` names the
  fragment of each parameter that falls in it. `safe_get_full_grad` reads the same fragments but all-reduces a
  full-size buffer per parameter; the fragment's own norm needs one all-reduce of one scalar per parameter for
  all of them. The weights are whole on every rank.
- DeepSpeed ZeRO-3: `safe_get_local_grad` is this rank's partition of the fp32 gradient and `ds_tensor` its
  partition of the weight; both are summed.

DeepSpeed clips inside `engine.step()` (its `gradient_clipping`), so under DeepSpeed the monitor measures only.
Its fp16 loss scale is not divided out: under DeepSpeed fp16 the norms are the scaled ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


def _whole_grad(p):
    return p.grad


def _whole_weight(p):
    return p.detach()


@dataclass(frozen=True)
class GradAccess:
    """How the monitor reads one rank's piece of each trainable parameter's gradient and weight."""

    name: str
    grad: Callable = _whole_grad  # parameter -> this rank's piece of its gradient, or None
    weight: Callable = _whole_weight  # parameter -> this rank's piece of its weight
    reduce_grads: Callable | None = None  # sums a tensor over the ranks, where the gradient pieces are shards
    reduce_weights: Callable | None = None  # the same, where the weight pieces are shards
    clips: bool = True  # the monitor clips (False where the engine clips itself)
    micro_batches: bool = True  # gradients are readable between micro-batches (noise-scale estimate)


def all_reduce_sum(tensor):
    """The tensor summed over every rank of the default process group (a new tensor)."""
    import torch.distributed as dist

    out = tensor.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def _local(tensor):
    """A DTensor's local shard (a view: an in-place change reaches the DTensor); any other tensor as it is."""
    to_local = getattr(tensor, "to_local", None)
    return to_local() if to_local is not None else tensor


def _fsdp2_grad(p):
    return None if p.grad is None else _local(p.grad)


def _fsdp2_weight(p):
    return _local(p.detach())


def _zero12_grad(p):
    mapping = getattr(p, "_hp_mapping", None)
    if mapping is None:  # no element of this parameter falls in this rank's optimizer partition
        return None
    fragment = mapping.get_lp_grad_fragment(p._index_in_param_group).flatten()
    address = mapping.lp_fragment_address
    if fragment.numel() == p.numel() and address.numel != p.numel():
        # DeepSpeed's bf16 optimizer keeps a full accumulation buffer on every rank: only this rank's fragment
        # counts, as in deepspeed.utils.tensor_fragment.get_full_hp_grad
        fragment = fragment.narrow(0, address.start, address.numel)
    return fragment


def _zero3_grad(p):
    from deepspeed.utils import safe_get_local_grad

    return safe_get_local_grad(p)


def _zero3_weight(p):
    return p.ds_tensor.detach()


PLAIN = GradAccess("plain")


def fsdp1(reduce: Callable = all_reduce_sum) -> GradAccess:
    return GradAccess("fsdp", reduce_grads=reduce)


def fsdp2(reduce: Callable = all_reduce_sum) -> GradAccess:
    return GradAccess("fsdp2", grad=_fsdp2_grad, weight=_fsdp2_weight, reduce_grads=reduce, reduce_weights=reduce)


def deepspeed_zero(stage: int, reduce: Callable = all_reduce_sum) -> GradAccess:
    if stage >= 3:
        return GradAccess("zero3", grad=_zero3_grad, weight=_zero3_weight, reduce_grads=reduce,
                          reduce_weights=reduce, clips=False, micro_batches=False)
    return GradAccess(f"zero{stage}", grad=_zero12_grad, reduce_grads=reduce, clips=False, micro_batches=False)


def detect(model, zero_stage: int | None = None, reduce: Callable = all_reduce_sum) -> GradAccess:
    """The access for a model as the engine left it: ZeRO-3 marks its parameters with `ds_id`, ZeRO-1/2 with
    `_hp_mapping` (set when the engine builds its optimizer), FSDP2 makes them DTensors, FSDP1 wraps modules. `zero_stage` (from the
    DeepSpeed config) decides when the parameters carry no mark yet."""
    params = [p for p in model.parameters() if p.requires_grad]
    if any(hasattr(p, "ds_id") for p in params) or (zero_stage or 0) >= 3:
        return deepspeed_zero(3, reduce)
    if any(hasattr(p, "_hp_mapping") for p in params) or zero_stage:
        return deepspeed_zero(zero_stage or 2, reduce)
    if any(hasattr(p, "to_local") for p in params):
        return fsdp2(reduce)
    if any(type(m).__name__ == "FullyShardedDataParallel" for m in model.modules()):
        return fsdp1(reduce)
    return PLAIN


def per_rank(memory: dict[str, int | None], world: int) -> dict[str, int | None]:
    """Rank 0's memory readings as they are plus every rank's under `rank<N>.<key>` (a collective: every rank
    calls it)."""
    if world <= 1:
        return memory
    import torch.distributed as dist

    gathered: list = [None] * world
    dist.all_gather_object(gathered, memory)
    out = dict(memory)
    for rank, reading in enumerate(gathered):
        out.update({f"rank{rank}.{key}": value for key, value in (reading or {}).items()})
    return out
