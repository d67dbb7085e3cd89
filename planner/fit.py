"""Does a plan fit a GPU, and what is the largest micro-batch / sequence that does."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from planner.errors import FtplanError
from planner.hardware import GpuSpec, find_gpu
from planner.memory import estimate_memory
from planner.plan import Plan
from planner.spec import ModelSpec
from planner.units import parse_bytes


class GpuTarget(BaseModel):
    """The memory a plan must fit in, per GPU, and where that number came from."""

    name: str
    capacity: int  # bytes a job can use on each GPU
    source: Literal["catalog", "given", "measured"]
    gpu: GpuSpec | None = None  # catalog entry, for speed and bf16 support
    device_name: str | None = None  # the name NVML reports, for a measured GPU
    note: str | None = None  # e.g. memory held by other processes

    @classmethod
    def of_catalog(cls, name: str) -> GpuTarget:
        """A catalog GPU, matched leniently ('RTX 4090', 'rtx4090', '4090')."""
        gpu = find_gpu(name)
        return cls(name=gpu.name, capacity=gpu.memory_bytes, source="catalog", gpu=gpu)

    @classmethod
    def of_memory(cls, size: str, flag: str = "--gpu-memory") -> GpuTarget:
        """A GPU known only by its usable memory ('24GiB', '80GB'); errors name `flag`."""
        return cls(name=f"{size} GPU", capacity=parse_bytes(size, flag), source="given")


class FitReport(BaseModel):
    gpu: str
    source: str
    capacity: int
    required: int
    fits: bool
    headroom: int  # capacity - required (negative when it does not fit)
    headroom_fraction: float
    max_batch: int | None = None
    max_seq_len: int | None = None
    # the search stopped at its limit (the batch search's, or the model's context length): at least this much fits
    max_batch_capped: bool = False
    max_seq_len_capped: bool = False
    note: str | None = None

    @property
    def max_batch_label(self) -> str:
        if self.max_batch is None:
            return "not searched"
        if self.max_batch == 0:
            return "none (not even 1)"
        return f"{'≥ ' if self.max_batch_capped else ''}{self.max_batch:,}"


def total_bytes(spec: ModelSpec, plan: Plan) -> int:
    return estimate_memory(spec, plan).total


def _largest(fits, low: int, limit: int) -> int:
    """Largest n in [low, limit] with fits(n), assuming fits is monotone (0 when fits(low) fails)."""
    if not fits(low):
        return 0
    hi = low
    while hi < limit and fits(min(limit, hi * 2)):
        hi = min(limit, hi * 2)
    if hi >= limit:
        return limit
    lo, hi = hi, min(limit, hi * 2)  # fits(lo), not fits(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


BATCH_SEARCH_LIMIT = 1 << 16


def max_batch_size(spec: ModelSpec, plan: Plan, capacity: int, limit: int = BATCH_SEARCH_LIMIT) -> int:
    """Largest micro-batch that fits (0 if even batch 1 does not)."""
    return _largest(lambda b: total_bytes(spec, plan.with_(batch_size=b)) <= capacity, 1, limit)


def max_seq_len(spec: ModelSpec, plan: Plan, capacity: int, limit: int | None = None) -> int:
    """Longest sequence (tokens) that fits at the plan's micro-batch (0 if 1 token does not), up to the
    model's context length: positions beyond it were never trained."""
    limit = limit or seq_search_limit(spec, plan)
    return _largest(lambda s: total_bytes(spec, plan.with_(seq_len=s)) <= capacity, 1, limit)


def seq_search_limit(spec: ModelSpec, plan: Plan) -> int:
    return spec.max_position_embeddings or max(plan.seq_len, 1 << 17)


def fit_report(spec: ModelSpec, plan: Plan, target: GpuTarget, required: int, *, search_batch: bool = False,
               search_seq: bool = False) -> FitReport:
    if target.capacity <= 0:
        raise FtplanError(f"--gpu-memory: {target.name} leaves no usable memory")
    headroom = target.capacity - required
    batch = max_batch_size(spec, plan, target.capacity) if search_batch else None
    seq = max_seq_len(spec, plan, target.capacity) if search_seq else None
    return FitReport(
        gpu=target.name, source=target.source, capacity=target.capacity, required=required,
        fits=headroom >= 0, headroom=headroom, headroom_fraction=headroom / target.capacity,
        max_batch=batch, max_seq_len=seq, max_batch_capped=batch == BATCH_SEARCH_LIMIT,
        max_seq_len_capped=seq is not None and seq == seq_search_limit(spec, plan),
        note=target.note,
    )
