"""Does a plan fit a GPU, and what is the largest micro-batch / sequence that does."""

from __future__ import annotations

import math

from pydantic import BaseModel

from planner.errors import FtplanError
from planner.memory import estimate_memory
from planner.plan import Plan
from planner.spec import ModelSpec
from planner.target import GpuTarget, Machine


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
    batch_step: int = 1  # the stage takes multiples of this micro-batch (GRPO's whole prompt groups)

    @property
    def max_batch_label(self) -> str:
        if self.max_batch is None:
            return "not searched"
        if self.max_batch == 0:
            return f"none (not even {self.batch_step})"
        return f"{'≥ ' if self.max_batch_capped else ''}{self.max_batch:,}"


def total_bytes(spec: ModelSpec, plan: Plan, machine: Machine | None = None) -> int:
    return estimate_memory(spec, plan, machine=machine).total


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


def _whole_groups(plan: Plan, times: int) -> int:
    """The smallest n for which n x `times` completions are whole prompt groups. GRPO only: TRL's GRPOConfig
    refuses a generation batch (micro-batch x processes x steps_per_generation, which defaults to the
    accumulation) that is not a whole number of groups of `num_generations`."""
    if plan.stage != "grpo":
        return 1
    return plan.num_generations // math.gcd(plan.num_generations, times)


def batch_step(plan: Plan) -> int:
    """The micro-batches the stage's trainer accepts at the plan's accumulation and GPUs are multiples of this."""
    return _whole_groups(plan, plan.gpus * plan.grad_accum)


def accum_step(plan: Plan) -> int:
    """The accumulation steps the stage's trainer accepts at the plan's micro-batch are multiples of this."""
    return _whole_groups(plan, plan.batch_size * plan.gpus)


def prompt_groups_problem(plan: Plan) -> str | None:
    """Why the stage's trainer refuses the plan's micro-batch, `{field}` placeholders naming settings; None when
    it takes it."""
    step = batch_step(plan)
    if plan.batch_size % step == 0:
        return None
    return (f"TRL's GRPOConfig refuses this run: the generation batch ({{batch_size}} x {{gpus}} x {{grad_accum}} "
            f"= {plan.batch_size * plan.gpus * plan.grad_accum}) must hold whole groups of {{num_generations}} "
            f"{plan.num_generations} completions; use a {{batch_size}} that is a multiple of {step}")


def max_batch_size(spec: ModelSpec, plan: Plan, capacity: int, limit: int = BATCH_SEARCH_LIMIT,
                   machine: Machine | None = None, *, accepted_only: bool = True) -> int:
    """Largest micro-batch that fits (0 if even the smallest does not); with `accepted_only`, only the ones the
    stage's trainer accepts at the plan's accumulation and GPU count (`batch_step`)."""
    step = batch_step(plan) if accepted_only else 1
    units = _largest(lambda n: total_bytes(spec, _sized(plan, batch_size=n * step), machine) <= capacity, 1,
                     max(1, limit // step))
    return units * step


def max_seq_len(spec: ModelSpec, plan: Plan, capacity: int, limit: int | None = None,
                machine: Machine | None = None) -> int:
    """Longest sequence (tokens) that fits at the plan's micro-batch (0 if 1 token does not), up to the
    model's context length: positions beyond it were never trained."""
    limit = limit or seq_search_limit(spec, plan)
    shortest = shortest_seq(plan)
    if shortest > limit:
        return 0
    return _largest(lambda s: total_bytes(spec, _sized(plan, seq_len=s), machine) <= capacity, shortest, limit)


def _sized(plan: Plan, **size: int) -> Plan:
    """The plan at another micro-batch or sequence length, for a search's probes: no field's validity depends on
    them beyond being at least 1 (and the sequence holding `max_completion_len`), which the searches keep, so the
    copy skips the validation `Plan.with_` repeats (a fifth of a probe's time)."""
    return plan.model_copy(update=size)


def shortest_seq(plan: Plan) -> int:
    """The shortest sequence the plan can have: a stated completion length lies within it."""
    return plan.max_completion_len or 1


def seq_search_limit(spec: ModelSpec, plan: Plan) -> int:
    return spec.max_position_embeddings or max(plan.seq_len, 1 << 17)


def fit_report(spec: ModelSpec, plan: Plan, target: GpuTarget, required: int, *, search_batch: bool = False,
               search_seq: bool = False) -> FitReport:
    if target.capacity <= 0:
        raise FtplanError(f"{target.name} leaves no usable memory", field="gpu_memory")
    headroom = target.capacity - required
    batch = max_batch_size(spec, plan, target.capacity, machine=target) if search_batch else None
    seq = max_seq_len(spec, plan, target.capacity, machine=target) if search_seq else None
    step = batch_step(plan)
    return FitReport(
        gpu=target.name, source=target.source, capacity=target.capacity, required=required,
        fits=headroom >= 0, headroom=headroom, headroom_fraction=headroom / target.capacity,
        max_batch=batch, max_seq_len=seq, max_batch_capped=batch is not None and batch > BATCH_SEARCH_LIMIT - step,
        max_seq_len_capped=seq is not None and seq == seq_search_limit(spec, plan),
        note=target.note, batch_step=step,
    )


class FitsCell(BaseModel):
    method: str
    # total per GPU at the smallest micro-batch the stage takes (1; GRPO: one prompt group); None: the method
    # does not apply to this plan
    need: int | None
    max_batch: int = 0  # largest micro-batch that fits (0: not even 1)
    capped: bool = False  # the search stopped at its limit: at least this much fits


class FitsRow(BaseModel):
    gpu: str
    capacity: int
    cells: list[FitsCell]


def what_fits(spec: ModelSpec, plan: Plan, targets: list[GpuTarget], methods: tuple[str, ...],
              limit: int = 256) -> list[FitsRow]:
    """Every target GPU against every method at the plan's other settings: the largest micro-batch that fits,
    or what the smallest micro-batch needs. QLoRA keeps the plan's bits; other methods train unquantised. Each target
    brings its own machine facts (calibrated CUDA context) and, when it decides one, its GPU count."""
    rows = []
    for target in targets:
        cells = []
        for method in methods:
            try:
                trial = plan.with_(method=method, quant_bits=plan.quant_bits if method == "qlora" else None,
                                   **({"gpus": target.gpus} if target.gpus else {}))
                smallest = batch_step(trial)
                need = total_bytes(spec, trial.with_(batch_size=smallest), target)
            except FtplanError:
                cells.append(FitsCell(method=method, need=None))
                continue
            if need > target.capacity:
                cells.append(FitsCell(method=method, need=need))
                continue
            best = max_batch_size(spec, trial, target.capacity, limit=limit, machine=target)
            cells.append(FitsCell(method=method, need=need, max_batch=best, capped=best > limit - smallest))
        rows.append(FitsRow(gpu=target.gpu.name if target.gpu and target.source == "catalog" else target.name,
                            capacity=target.capacity, cells=cells))
    return rows
