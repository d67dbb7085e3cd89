"""The seed notes' comparison of fine-tuning methods, computed: one plan per method at the user's other settings
(sequence, batch, precision, optimizer, GPUs), each planned by `plan_run`, and the notes' qualitative contrasts
("LoRA vs Adapter", "LoRA vs soft prompts") stated in the numbers of those plans.

Front-end neutral: `ftplan compare` prints it (tui.report), the TUI's Compare screen shows it, `--json` dumps it.
"""

from __future__ import annotations

from pydantic import BaseModel

from planner.errors import FtplanError
from planner.fields import Vocabulary, worded
from planner.plan import METHODS, Plan
from planner.service import plan_run
from planner.spec import ModelSpec
from planner.target import Machine
from planner.units import fmt_count, fmt_gib

# What each method leaves in the model it serves: peft merges LoRA's B·A (DoRA's and QLoRA's too), IA3's scales
# and OFT's rotations into the weights (their `merge`), so inference runs the base model's layers; an adapter's
# bottleneck has a non-linearity and stays as extra layers; virtual tokens stay in every sequence.
UNMERGED = {"adapter": "layers", "prefix": "keys", "prompt": "tokens", "ptuning": "tokens"}


class CompareRow(BaseModel):
    """One method planned at the compared settings; `reason` instead of numbers when it cannot be planned."""

    label: str  # the method, "lora+DoRA" for LoRA with DoRA
    method: str
    use_dora: bool = False
    reason: str | None = None
    trainable: int | None = None
    trainable_fraction: float | None = None
    peak_bytes: int | None = None  # per GPU, at the peak phase, overhead included (what is fitted)
    peak_phase: str | None = None
    fits: bool | None = None  # None: no GPU to fit against
    headroom: int | None = None
    tokens_per_second: float | None = None  # None: no catalog GPU, so no peak FLOP/s
    mfu: float | None = None
    epoch_seconds: float | None = None  # with `samples`
    virtual_tokens: int = 0  # prepended to every sequence (prompt, ptuning) or every layer's keys (prefix)
    at_inference: str | None = None  # what stays in the served model beyond the base (UNMERGED), None: merged


class Comparison(BaseModel):
    model: str
    total_params: int
    layers: int
    context: int | None
    seq_len: int
    gpu: str | None  # the GPU fitted against (a catalog name, or the given memory's label)
    capacity: int | None
    rows: list[CompareRow]
    summary: list[str]  # the seed's contrasts, in these rows' numbers


def variants(plan: Plan) -> list[tuple[str, Plan | FtplanError]]:
    """Every method at `plan`'s other settings, LoRA twice (plain and DoRA). Settings only one method takes stay
    with it: QLoRA keeps the plan's bits, prefix its projection; a plan one method cannot take is its reason."""
    out: list[tuple[str, Plan | FtplanError]] = []
    for method in METHODS:
        for dora in (False, True) if method == "lora" else (False,):
            try:
                trial = plan.with_(method=method, use_dora=dora,
                                   quant_bits=plan.quant_bits if method == "qlora" else None,
                                   prefix_projection=plan.prefix_projection and method == "prefix")
            except FtplanError as exc:
                trial = exc
            out.append((method + ("+DoRA" if dora else ""), trial))
    return out


def compare(spec: ModelSpec, plan: Plan, target: Machine | None = None, *, mfu: float | None = None,
            samples: int | None = None, vocabulary: Vocabulary = "cli") -> Comparison:
    """One row per method (`variants`), each from `plan_run`; a method the model cannot take (peft refuses it,
    or it has no default targets there) gets the one-line reason in `vocabulary`. `samples`: one epoch of them."""
    rows, first = [], None
    for label, trial in variants(plan):
        try:
            if isinstance(trial, FtplanError):
                raise trial
            est = plan_run(spec, trial, target, mfu=mfu, samples=samples, vocabulary=vocabulary)
        except FtplanError as exc:
            rows.append(CompareRow(label=label, method=label.split("+")[0], use_dora="+" in label,
                                   reason=worded(exc, vocabulary)))
            continue
        first = first or est
        fit, time = est.fit, est.time
        rows.append(CompareRow(
            label=label, method=trial.method, use_dora=trial.use_dora, trainable=est.params.trainable,
            trainable_fraction=est.params.trainable_fraction, peak_bytes=est.memory.total,
            peak_phase=est.memory.peak_phase, fits=fit.fits if fit else None, headroom=fit.headroom if fit else None,
            tokens_per_second=time.tokens_per_second if time else None, mfu=time.mfu if time else None,
            epoch_seconds=time.total_seconds if time else None,
            virtual_tokens=trial.num_virtual_tokens if trial.prompt_learning else 0,
            at_inference=UNMERGED.get(trial.method)))
    if first is None:  # full fine-tuning plans on every model: only settings no method takes get here
        raise FtplanError(rows[0].reason or "no method can be planned")
    fit = first.fit
    out = Comparison(model=spec.name, total_params=first.params.total, layers=first.model.layers,
                     context=first.model.context, seq_len=plan.seq_len, gpu=fit.gpu if fit else None,
                     capacity=fit.capacity if fit else None, rows=rows, summary=[])
    return out.model_copy(update={"summary": summary(out)})


def _ratio(a: int, b: int) -> str:
    """How many times `a` is `b` (or the fraction of it), as people say it."""
    return f"{a / b:,.1f}x" if a >= b else f"1/{b / a:,.0f}"


def summary(comparison: Comparison) -> list[str]:
    """The seed's contrasts (LoRA vs Adapter, LoRA vs soft prompts, what fits) as lines of these rows' numbers;
    a contrast whose rows could not be planned is left out."""
    rows = {r.label: r for r in comparison.rows if r.reason is None}
    lines = []
    lora, adapter = rows.get("lora"), rows.get("adapter")
    if lora and adapter:
        lines.append(
            f"LoRA vs Adapter: the adapters train {fmt_count(adapter.trainable)} parameters "
            f"({_ratio(adapter.trainable, lora.trainable)} LoRA's {fmt_count(lora.trainable)}) and peak at "
            f"{fmt_gib(adapter.peak_bytes)} vs {fmt_gib(lora.peak_bytes)}; they stay in the served model as "
            f"{2 * comparison.layers} extra bottleneck layers (added inference latency), while LoRA's B·A merges "
            "into the weights (none)")
    prompt = rows.get("prompt") or rows.get("ptuning")
    if lora and prompt:
        n = prompt.virtual_tokens
        context = (f"; {comparison.context - n:,} of the model's {comparison.context:,} context tokens remain for "
                   "text, in training and at inference" if comparison.context else "")
        lines.append(
            f"LoRA vs soft prompts: {prompt.label} trains {fmt_count(prompt.trainable)} parameters "
            f"({_ratio(prompt.trainable, lora.trainable)} LoRA's) but its {n} virtual tokens run in front of every "
            f"sequence ({comparison.seq_len + n:,} tokens instead of {comparison.seq_len:,}){context}; peak "
            f"{fmt_gib(prompt.peak_bytes)} vs {fmt_gib(lora.peak_bytes)}")
    planned = list(rows.values())
    if planned:
        low = min(planned, key=lambda r: r.peak_bytes)
        high = max(planned, key=lambda r: r.peak_bytes)
        line = f"memory: {low.label} needs least ({fmt_gib(low.peak_bytes)}), {high.label} most ({fmt_gib(high.peak_bytes)})"
        if comparison.gpu is not None:
            fitting = [r.label for r in planned if r.fits]
            line += f"; {len(fitting)} of {len(planned)} fit {comparison.gpu}"
        timed = [r for r in planned if r.tokens_per_second]
        if timed:
            fast = max(timed, key=lambda r: r.tokens_per_second)
            line += f"; fastest: {fast.label} at {fast.tokens_per_second:,.0f} tokens/s"
        lines.append(line)
    return lines
