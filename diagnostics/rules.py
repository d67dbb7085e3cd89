"""Findings from a run's step records, and the advice that follows from them.

Both are the planner's types: a `Finding` per pattern (`code`, `message`, `evidence`, `fix`
in words, and `field` / `change` where one setting is the remedy), and a `Change` per piece
of advice, keyed by planner field names (`planner.fields`).

Every rule works on robust statistics (medians, median absolute deviations,
ratios of medians) over the recorded steps, and is deliberately conservative: a
healthy run must raise nothing. LoRA-aware: `lora_B` starts at zero, so at the
first step every `lora_A` gradient is exactly zero by construction; that step is
not evidence of vanishing or dead adapters.

Rules with their own reasoning live beside it: diagnostics.depth (norms over block depth),
diagnostics.spikes (loss spikes against a local trend; hard batch or instability),
diagnostics.lr_advice (learning rates into the method's usual range), diagnostics.data_rules
(label tokens, one-token answers, repeated examples) and diagnostics.preference_rules.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from diagnostics.data_rules import example_findings
from diagnostics.depth import depth_findings
from diagnostics.lr_advice import INDICATIVE, lower_lr, raise_lr
from diagnostics.lr_find import lr_find_result
from diagnostics.monitor import layer_index
from diagnostics.origin import not_located
from diagnostics.preference_rules import preference_advice, preference_findings
from diagnostics.report import DataSummary, DiagnoseSettings, DiagnosticReport, StepRecord
from diagnostics.spikes import loss_spikes
from planner.findings import Change, Finding

SPIKE_FACTOR = 10.0  # a gradient norm this many times its running median is a spike
GROWTH_FACTOR = 10.0  # last-third median norm / first-third median norm that counts as steady growth
UNDERFLOW_SHARE = 0.05  # share of exactly-zero gradient elements in a block that signals fp16 underflow
CLIP_SHARE = 0.5  # clipping on more steps than this acts as a learning-rate cut...
CLIP_CUT = 2.0  # ...when the median norm is this many times max_grad_norm (the step is at least halved)
CLIP_MIN_HEALTHY = 5  # healthy steps a clip value is read from
NOISE_MIN_STEPS = 5  # steps the gradient noise scale is averaged over
# |g_micro|^2 / |G|^2 this close to 1: the same gradient. Different data differ by the noise term tr(Sigma)/B,
# percents to hundreds of percents; summation order in fp32 accounts for about 1e-6
IDENTICAL_GRADIENTS = 1e-4
BF16_UNCHANGED = 0.5  # share of bf16 weights a step leaves bit-identical
# GradScaler starts at 2^16 and halves its scale on every skipped step; settling from there takes a skip or
# two, so five skips in a short run mean fp16 gradients overflow steadily, not once
SKIPPED_STEPS = 5
# records left out with nothing to train on within seq_len are the long prompts: past a tenth of the file the
# run learns from visibly different data; fewer is worth knowing, not a warning
DROPPED_SHARE = 0.1


def _median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _finite(xs) -> list[float]:
    return [x for x in xs if x is not None and math.isfinite(x)]


def _steps_text(steps: list[int], limit: int = 8) -> str:
    shown = ", ".join(str(s) for s in steps[:limit])
    return shown + (f" (+{len(steps) - limit} more)" if len(steps) > limit else "")


def spike_steps(records: list[StepRecord]) -> list[int]:
    """Steps whose gradient norm jumps SPIKE_FACTOR x over the median of the (up to 20) steps before it;
    in the first steps, with little history, the bar is three times higher, unless the loss spiked at the same
    step: two signs at once count early."""
    out = []
    norms = [r.grad_norm for r in records]
    with_loss = {s.step for s in loss_spikes(records)}
    for i in range(1, len(records)):
        base = _median(_finite(norms[max(0, i - 20):i]))
        factor = SPIKE_FACTOR if i >= 5 or records[i].step in with_loss else 3 * SPIKE_FACTOR
        if math.isfinite(norms[i]) and base > 0 and norms[i] > factor * base:
            out.append(records[i].step)
    return out


def healthy_norms(records: list[StepRecord], settings: DiagnoseSettings) -> list[float]:
    spikes = set(spike_steps(records))
    return _finite(r.grad_norm for r in records if r.step > settings.warmup_steps and r.step not in spikes)


def analyze(records: list[StepRecord], settings: DiagnoseSettings, *, vocab_size: int | None = None
            ) -> list[Finding]:
    """`vocab_size`: the model's, for the first loss against ln(vocab) (None: not said)."""
    if not records:
        return []
    plan = settings.plan
    findings: list[Finding] = []
    lora = plan.method in ("lora", "qlora")
    after_first = [r for r in records if r.step > 1] if lora else records

    # With a GradScaler an overflowing step is skipped by design; the loss-scale rule watches those.
    bad = next((r for r in records if r.stops_run), None)
    if bad is not None:
        findings.append(_non_finite(bad))

    spikes = spike_steps(records)
    norms = _finite(r.grad_norm for r in after_first)
    third = max(1, len(norms) // 3)
    growth = (_median(norms[-third:]) / _median(norms[:third])) if len(norms) >= 9 and _median(norms[:third]) > 0 \
        else 1.0
    jump = _median(norms[1:]) / norms[0] if len(norms) >= 4 and norms[0] > 0 else 1.0
    losses = _finite(r.loss for r in records)
    loss_not_falling = len(losses) >= 4 and _median(losses[-max(1, len(losses) // 3):]) >= losses[0]
    grew = (growth > GROWTH_FACTOR or jump > 3 * GROWTH_FACTOR) and loss_not_falling
    if spikes or grew:
        parts = []
        if spikes:
            parts.append(f"gradient norm jumped over {SPIKE_FACTOR:g}x its running median at steps "
                         f"{_steps_text(spikes)}")
        if grew:
            parts.append(f"the median norm grew {max(growth, jump):.0f}x over the run while the loss did not fall")
        findings.append(Finding(
            code="exploding_gradients", severity="error" if bad is not None else "warning",
            message="Exploding gradients", evidence="; ".join(parts),
            data={"spike_steps": spikes, "growth": growth, "max_norm": max(norms, default=0.0),
                  "median_norm": _median(norms)},
            fix="clip gradients (max_grad_norm, see advice), warm the learning rate up, or lower it"))

    findings += depth_findings(after_first, first_loss=records[0].loss, vocab_size=vocab_size)
    findings += _fp16_underflow(after_first, settings)
    # The DPO loss is -log sigmoid(margin) averaged over a few pairs: it starts at log 2 and its spikes and
    # plateaus mean something else, so preference_findings reads it; ORPO's is NLL-dominated, like SFT's.
    if settings.stage != "dpo":
        findings += _loss_findings(records, settings)
    if settings.preference:
        findings += preference_findings(records, settings)

    post = [r for r in records if r.step > settings.warmup_steps]
    if settings.max_grad_norm and post:
        clipped = [r.step for r in post if r.clipped]
        med = _median(_finite(r.grad_norm for r in post))
        # A clip that trims a little is harmless. One that halves most steps is, for SGD, a hidden
        # learning-rate cut; Adam's normalisation undoes a uniform rescaling, so there it only stops the clip
        # from singling out outliers (and reweights steps): worth knowing, not a warning.
        if len(clipped) > CLIP_SHARE * len(post) and med > CLIP_CUT * settings.max_grad_norm:
            sgd = plan.optimizer in ("sgd", "sgd-momentum")
            broken_init = any(f.code == "reversed_depth_profile" for f in findings)
            effect = (f"so the effective learning rate is about {settings.max_grad_norm / med:.2g}x the configured "
                      "one" if sgd else "so it no longer singles out outlier batches (Adam's normalisation undoes "
                      "a uniform rescale)")
            findings.append(Finding(
                code="clipping_most_steps", severity="warning" if sgd else "info", message="Clipping acts on most steps",
                evidence=f"max_grad_norm={settings.max_grad_norm:g} clipped {len(clipped)} of {len(post)} steps; "
                         f"median norm {med:.3g}, {effect}",
                data={"clipped_steps": clipped, "median_norm": med},
                fix=("the norms come from the initialisation (reversed_depth_profile): fix it rather than the clip"
                     if broken_init else "raise max_grad_norm to the healthy range (see advice)"
                     + (" or lower learning_rate deliberately" if sgd else "")),
                field="max_grad_norm", change=None if broken_init else clip_change(records, settings)))

    findings += _skipped_steps(records)

    dead = _dead_parameters(after_first)
    if dead and not any(f.code == "fp16_underflow" for f in findings):  # underflow already explains them
        in_blocks = [n for n in dead if layer_index(n) is not None]
        ckpt = plan.gradient_checkpointing and lora and len(in_blocks) == len(dead)
        findings.append(Finding(
            code="dead_parameters", severity="warning",
            message="Gradient checkpointing blocks gradients" if ckpt else "Trainable parameters never updated",
            evidence=f"{len(dead)} trainable tensors had an exactly zero (or no) gradient on every step, e.g. "
                     + ", ".join(dead[:4]),
            data={"parameters": dead[:50], "count": len(dead)},
            fix=("with reentrant gradient checkpointing and frozen embeddings no gradient reaches the adapters: "
                 "call model.enable_input_require_grads() or use use_reentrant=False"
                 if ckpt else "check that these parameters are used in forward, and the target modules / freeze "
                               "settings")))

    if plan.precision == "bf16":
        shares = [(r.step, _median([v for k, v in r.unchanged_fraction.items() if k.startswith("block.")]))
                  for r in post if r.unchanged_fraction and r.lr > 0]
        stuck = [(s, v) for s, v in shares if v > BF16_UNCHANGED]
        if shares and len(stuck) > len(shares) / 2:
            med = _median([v for _, v in stuck])
            findings.append(Finding(
                code="bf16_updates_round_away", severity="warning", message="Pure-bf16 updates round to nothing",
                evidence=f"on {len(stuck)} of {len(shares)} steps a median {med:.0%} of block weights were left "
                         "bit-identical: updates below half a bf16 step (2^-9 relative) vanish",
                data={"unchanged": dict(stuck)},
                fix="train in bf16-mixed (fp32 master weights; pure_bf16: false), use a Kahan-summation "
                    "optimizer, or raise learning_rate",
                field="precision", change=_mixed_precision(plan.precision, _KEEP_MASTER)))
    return findings


def _non_finite(bad: StepRecord) -> Finding:
    """The step that stopped the run: which pass went non-finite, where (the replay's module), which layers."""
    origin = bad.origin or not_located(bad)
    if origin.phase == "backward":
        what = (f"the gradients became non-finite at step {bad.step} while the loss stayed finite "
                f"({bad.loss:.4g}): the backward pass")
    elif math.isfinite(bad.loss):
        what = (f"activations became non-finite at step {bad.step} where the loss does not reach them (it stayed "
                f"{bad.loss:.4g}; padding, say), and the gradients with them: the forward pass")
    else:
        what = f"the loss became {bad.loss:g} at step {bad.step}: the forward pass"
    replay = f"replaying micro-batch {origin.micro_batch} with {origin.phase} hooks, "
    where = {
        "output": f"{replay}{origin.module} is the first module to output non-finite values from finite inputs",
        "weights": f"{replay}{origin.module} is the first module to output non-finite values: its weights are "
                   "non-finite",
        "loss": f"{replay}every module's output was finite: the loss computation itself was not",
        "input gradient": f"{replay}{origin.module} is the first module to pass back a non-finite gradient from "
                          "a finite one",
        "parameter gradient": f"{replay}the first non-finite gradient is that of {origin.parameter}, from a finite "
                              f"gradient at the output of {origin.module}",
    }.get(origin.where or "", f"no module named: {origin.note}" if origin.note else "")
    total = len(bad.layer_norms)
    layers = (f"gradient norms non-finite in {len(origin.layers)} of {total} layers: "
              f"{', '.join(origin.layers[:8])}{' ...' if len(origin.layers) > 8 else ''}" if origin.layers else "")
    fix = ("the weights were non-finite before the step: check the checkpoint they were loaded from"
           if origin.where == "weights" else
           "lower learning_rate (see advice), keep max_grad_norm set, add warmup; under fp16 keep loss scaling on or "
           "switch to bf16")
    return Finding(
        code="non_finite", severity="error", message="NaN/Inf in training",
        evidence="; ".join(part for part in (f"{what} went non-finite", where, layers) if part),
        data={"step": bad.step, "phase": origin.phase, "module": origin.module, "where": origin.where,
              "parameter": origin.parameter, "micro_batch": origin.micro_batch, "layers": origin.layers,
              "loss": bad.loss, "grad_norm": bad.grad_norm, "note": origin.note},
        fix=fix)


def _skipped_steps(records: list[StepRecord]) -> list[Finding]:
    """fp16: the steps the GradScaler skipped, counted exactly; SKIPPED_STEPS of them is a collapse."""
    scaled = [r for r in records if r.loss_scale is not None]
    skipped = [r.step for r in scaled if r.skipped]
    if not skipped:
        return []
    collapsed = len(skipped) >= SKIPPED_STEPS or min(r.loss_scale for r in scaled) < 1.0
    evidence = (f"the GradScaler skipped {len(skipped)} of {len(scaled)} steps ({_steps_text(skipped)}): their "
                f"gradients overflowed fp16 at the loss scale, which it halves on each skip (from "
                f"{scaled[0].loss_scale:g} at step {scaled[0].step} to {scaled[-1].loss_scale:g} at step "
                f"{scaled[-1].step})")
    data = {"skipped_steps": skipped, "count": len(skipped), "scales": [r.loss_scale for r in scaled]}
    if collapsed:
        return [Finding(code="loss_scale_collapse", severity="error", message="fp16 loss scale collapsed",
                        evidence=evidence, data=data, field="precision",
                        fix="use bf16 (bf16: true) if the GPU supports it, or lower learning_rate")]
    return [Finding(code="fp16_skipped_steps", severity="info", message="fp16 steps skipped",
                    evidence=f"{evidence}; a skip or two while the scale settles is normal", data=data,
                    fix=f"nothing unless skips recur ({SKIPPED_STEPS} or more is a collapse)")]


def data_findings(data: DataSummary | None) -> list[Finding]:
    """Records the run cannot train on, how many and why."""
    if data is None or not (data.dropped or data.unanswered):
        return []
    left_out = len(data.dropped) + len(data.unanswered)
    reasons = []
    if data.dropped:
        reasons.append(f"{len(data.dropped)} (records {_steps_text(data.dropped)}) keep no answer token within "
                       f"seq_len={data.seq_len}: the prompt fills it"
                       + (f"; seq_len {data.needed_len} keeps an answer token of each" if data.needed_len else ""))
    if data.unanswered:
        reasons.append(f"{len(data.unanswered)} (records {_steps_text(data.unanswered)}) have no assistant answer")
    share = left_out / data.records
    return [Finding(
        code="dropped_records", severity="warning" if share > DROPPED_SHARE else "info",
        message="Records left out of training",
        evidence=f"{left_out} of {data.records} records ({share:.0%}) train nothing and are left out: "
                 + "; ".join(reasons) + f"; the run trains on {data.examples} examples",
        data={"count": left_out, "records": data.records, "dropped": data.dropped, "unanswered": data.unanswered,
              "seq_len": data.seq_len, "needed_len": data.needed_len},
        field="seq_len" if data.dropped else None,
        fix="; ".join(fix for fix, needed in (
            (f"raise seq_len (cutoff_len) to {data.needed_len or 'fit them'} or shorten those prompts", data.dropped),
            ("give the unanswered records an assistant turn or remove them", data.unanswered)) if needed))]


def _fp16_underflow(records: list[StepRecord], settings: DiagnoseSettings) -> list[Finding]:
    out: list[Finding] = []
    if settings.plan.precision == "fp16-mixed":
        shares = {}
        for r in records:
            for b, v in (r.zero_fraction or {}).items():
                if b.startswith("block."):
                    shares.setdefault(b, []).append(v)
        flushed = {b: _median(v) for b, v in shares.items() if _median(v) > UNDERFLOW_SHARE}
        if flushed:
            worst = max(flushed.values())
            out.append(Finding(
                code="fp16_underflow", severity="warning", message="fp16 gradients flushed to zero",
                evidence=f"in {len(flushed)} block(s) a median {worst:.0%} of gradient elements were exactly zero "
                         + ("without loss scaling" if not settings.loss_scaling else "despite loss scaling"),
                data={"zero_share": flushed}, field="precision",
                fix="keep loss scaling on (fp16: true uses a GradScaler) or train in bf16 (bf16: true)"))
    return out


def _loss_findings(records: list[StepRecord], settings: DiagnoseSettings) -> list[Finding]:
    out: list[Finding] = []
    losses = [(r.step, r.loss) for r in records if math.isfinite(r.loss)]
    values = [v for _, v in losses]
    if len(values) >= 8:
        best_early = min(values[: max(3, len(values) // 2)])
        tail = _median(values[-5:])
        if tail > 1.5 * best_early:
            out.append(Finding(
                code="loss_divergence", severity="error", message="Loss is diverging",
                evidence=f"the loss rose from a best of {best_early:.4g} to {tail:.4g} (median of the last 5 steps)",
                data={"best": best_early, "last": tail}, field="learning_rate",
                fix="lower learning_rate (see advice) and add warmup"))
    out += _spike_findings(records)
    post = [v for s, v in losses if s > settings.warmup_steps]
    if len(post) >= 20:
        half = len(post) // 2
        first, second = _median(post[:half]), _median(post[half:])
        if first > 0 and abs(first - second) / first < 0.005:
            out.append(Finding(
                code="loss_plateau", severity="info", message="Loss plateau",
                evidence=f"the median loss moved {abs(first - second) / first:.2%} between the two halves of the run",
                data={"first_half": first, "second_half": second},
                fix="a learning rate too low (see the update ratios) or data the model already fits"))
    return out


def _spike_findings(records: list[StepRecord]) -> list[Finding]:
    spikes = loss_spikes(records)
    if not spikes:
        return []
    hard = [s.step for s in spikes if s.kind == "hard batch"]
    unstable = [s.step for s in spikes if s.kind == "instability"]
    unknown = [s.step for s in spikes if s.kind is None]
    parts = ["the loss rose over its local trend at steps "
             + ", ".join(f"{s.step} (+{s.rise:.0%}{', with a gradient spike' if s.grad_confirmed else ''})"
                         for s in spikes[:8]) + (f" (+{len(spikes) - 8} more)" if len(spikes) > 8 else "")]
    if hard:
        parts.append(f"at steps {_steps_text(hard)} the previous batch, re-evaluated at the spiking weights, "
                     "lost no more than before: hard batches, the model is fine")
    if unstable:
        parts.append(f"at steps {_steps_text(unstable)} the previous batch got worse too: the update before "
                     "damaged the model (an instability)")
    only_hard = not unstable and not unknown
    return [Finding(
        code="loss_spikes", severity="info" if only_hard else "warning",
        message="Hard batches" if only_hard else "Loss spikes", evidence="; ".join(parts),
        data={"steps": [s.step for s in spikes], "hard_batches": hard, "instabilities": unstable,
              "rise": {s.step: s.rise for s in spikes}, "recheck_rise": {s.step: s.recheck_rise for s in spikes}},
        fix="inspect those batches (data quality, very long or garbled answers)" if only_hard else
            "add warmup or lower learning_rate (see advice); keep clipping on; inspect those batches")]


def _dead_parameters(records: list[StepRecord]) -> list[str]:
    if len(records) < 3:
        return []
    dead = set(records[0].zero_params)
    for r in records[1:]:
        dead &= set(r.zero_params)
    return sorted(dead, key=records[0].zero_params.index)


# ---------------------------------------------------------------- advice


def noise_scale(records: list[StepRecord], settings: DiagnoseSettings, world: int = 1) -> float | None:
    """Gradient noise scale B_simple = tr(Sigma) / |G|^2, in sequences (McCandlish et al. 2018, App. A).

    From each step's first micro-batch gradient (batch b_small) and the accumulated one
    (b_big = b_small x accumulation x processes), averaged over steps before dividing.
    """
    plan = settings.plan
    b_small = plan.batch_size
    b_big = plan.batch_size * plan.grad_accum * world
    pairs = _micro_pairs(records)
    if b_big <= b_small or len(pairs) < NOISE_MIN_STEPS:
        return None
    small = statistics.fmean(p[0] for p in pairs)
    big = statistics.fmean(p[1] for p in pairs)
    g_sq = (b_big * big - b_small * small) / (b_big - b_small)
    trace = (small - big) / (1 / b_small - 1 / b_big)
    if g_sq <= 0 or trace <= 0:
        return None
    return trace / g_sq


_BF16_RANGE = "bf16 has fp32's exponent range: no underflow, no loss scaling needed"
_KEEP_MASTER = "keep fp32 master weights so small updates accumulate"


def _change(title: str, field: str, value, current, reason: str) -> Change:
    return Change(title=title, changes={field: value}, current={field: current}, reason=reason)


def _mixed_precision(current: str, reason: str) -> Change:
    title = {"fp16-mixed": "Train in bf16 instead of fp16", "bf16": "Keep fp32 master weights (bf16-mixed)"}.get(
        current, "Train in bf16-mixed")
    return _change(title, "precision", "bf16-mixed", current, reason)


def clip_change(records: list[StepRecord], settings: DiagnoseSettings) -> Change | None:
    """Clip at the 90th percentile of the healthy steps' norms: clipping then trims the spikes only.

    None from fewer than CLIP_MIN_HEALTHY healthy steps (a percentile of one or two norms is that norm), and
    after a non-finite step: the norms before it were on their way there, and no clip value cures a NaN."""
    if any(r.stops_run for r in records):
        return None
    healthy = healthy_norms(records, settings)
    if len(healthy) < CLIP_MIN_HEALTHY:
        return None
    p90 = sorted(healthy)[int(0.9 * (len(healthy) - 1))]
    value = float(f"{p90:.2g}")
    return _change(f"Clip gradients at {value:g}", "max_grad_norm", value, settings.max_grad_norm,
                   f"the 90th percentile of the {len(healthy)} healthy steps' gradient norms (median "
                   f"{_median(healthy):.3g}): clipping then trims the spikes only")


def advise(records: list[StepRecord], findings: list[Finding], settings: DiagnoseSettings,
           world: int = 1, bf16_supported: bool | None = None, random_init: bool = False) -> list[Change]:
    """The settings to change, as `Change`s keyed by planner field (`planner.fields`); on `random_init` weights
    each says it is indicative only."""
    return _indicative(_advice(records, findings, settings, world, bf16_supported), random_init)


def _indicative(changes: list[Change], random_init: bool) -> list[Change]:
    if not random_init:
        return changes
    return [c.model_copy(update={"reason": f"{c.reason} ({INDICATIVE})"}) for c in changes]


def _advice(records: list[StepRecord], findings: list[Finding], settings: DiagnoseSettings, world: int,
            bf16_supported: bool | None) -> list[Change]:
    codes = {f.code for f in findings}
    plan = settings.plan
    out: list[Change] = []
    clip = clip_change(records, settings)
    # a broken init makes the norms large on purpose: a clip at their size would only hide it
    if clip is not None and "reversed_depth_profile" not in codes \
            and codes & {"exploding_gradients", "clipping_most_steps", "loss_spikes"}:
        out.append(clip)
    early = [s for s in spike_steps(records) if s <= max(3, len(records) // 3)]
    if (early or "non_finite" in codes or "loss_divergence" in codes) and settings.warmup_ratio == 0:
        settle = max(early, default=max(1, len(records) // 5))
        what = f"the gradient norm spikes up to step {settle}" if early else "the run diverges from the start"
        out.append(_change(
            "Warm the learning rate up over 5% of the run", "warmup_ratio", 0.05, settings.warmup_ratio,
            f"{what} without warmup; warm up over at least {2 * settle} steps (warmup_steps) or 5% of the run"))
    if "non_finite" in codes:
        out.append(lower_lr(settings, "the training went non-finite"))
    elif codes & {"loss_divergence", "exploding_gradients"}:
        out.append(lower_lr(settings, "the run diverges or its gradients explode"))
    elif "loss_plateau" in codes:
        ratios = _finite(_median(list(r.update_ratio.values())) for r in records if r.update_ratio)
        if ratios and _median(ratios) < 1e-4:
            change = raise_lr(settings, f"the loss is flat and the median update is {_median(ratios):.1e} of the "
                                        "weights")
            out += [change] if change is not None else []
    b_noise = noise_scale(records, settings, world)
    global_batch = plan.batch_size * plan.grad_accum * world
    # The noise scale grows as the loss falls (McCandlish et al., Sec. 4), so one measured at the start of
    # training is a lower bound for the run: it can argue for a larger batch, never for a smaller one.
    if b_noise is not None and b_noise > 4 * global_batch:
        target = max(plan.batch_size * world, min(round(b_noise), 8 * global_batch))
        accum = max(1, round(target / (plan.batch_size * world)))
        out.append(_change(
            f"Accumulate {accum} micro-batches per step", "grad_accum", accum, plan.grad_accum,
            f"the gradient noise scale is about {b_noise:.0f} sequences (McCandlish et al. 2018) against a global "
            f"batch of {global_batch}: {accum} accumulation steps x micro-batch {plan.batch_size} gets the global "
            "batch near it"))
    if codes & {"fp16_underflow", "loss_scale_collapse"} and bf16_supported is not False \
            and plan.precision != "bf16-mixed":
        out.append(_mixed_precision(plan.precision, _BF16_RANGE))
    if "bf16_updates_round_away" in codes:
        out.append(_mixed_precision(plan.precision, _KEEP_MASTER))
    if settings.preference:
        out += preference_advice(records, findings, settings, {k for c in out for k in c.changes})
    return out


def _micro_pairs(records: list[StepRecord]) -> list[tuple[float, float]]:
    """(|g_micro|^2, |G|^2) of the steps that measured both (from the second: LoRA's first step is special)."""
    return [(r.micro_grad_sq, r.grad_norm ** 2) for r in records if r.micro_grad_sq is not None
            and math.isfinite(r.grad_norm) and math.isfinite(r.micro_grad_sq) and r.step > 1]


def gradient_data_findings(records: list[StepRecord], settings: DiagnoseSettings, world: int = 1) -> list[Finding]:
    """Data seen through the gradients: micro-batches that give the accumulated gradient exactly are the same
    data; a noise scale that cannot be measured says the micro-batches are hardly noisier than their sum."""
    plan = settings.plan
    pairs = _micro_pairs(records)
    if plan.batch_size * plan.grad_accum * world <= plan.batch_size or len(pairs) < NOISE_MIN_STEPS:
        return []
    same = [r.step for r in records if r.micro_grad_sq is not None and r.step > 1 and math.isfinite(r.grad_norm)
            and r.grad_norm > 0 and abs(r.micro_grad_sq / r.grad_norm ** 2 - 1) < IDENTICAL_GRADIENTS]
    if len(same) > len(pairs) / 2:
        return [Finding(
            code="identical_micro_batches", severity="warning", message="Every micro-batch gives the same gradient",
            evidence=f"on {len(same)} of {len(pairs)} steps the first micro-batch's gradient equals the accumulated "
                     f"one (|g|^2 within {IDENTICAL_GRADIENTS:.0e}): the micro-batches hold the same data, so the "
                     "gradient noise scale is 0 and accumulation adds nothing",
            data={"steps": same}, fix="check the data: one record repeated, or fewer examples than a micro-batch")]
    if noise_scale(records, settings, world) is None:
        return [Finding(
            code="noise_scale_unmeasurable", severity="info", message="Gradient noise scale not measurable",
            evidence=f"over {len(pairs)} steps the first micro-batch's gradient was on average no noisier than the "
                     "accumulated one: near-duplicate data, or too few steps for the estimate",
            data={"steps": len(pairs)}, fix="run more steps (--steps), or check the data for repeats")]
    return []


def conclude(report: DiagnosticReport, world: int = 1) -> DiagnosticReport:
    """Findings, the noise scale and advice from the report's records: the end of every run,
    a finished one or one whose child process died."""
    if report.settings.lr_find:  # the ramp diverges by design: the range test is the whole verdict
        findings, advice = lr_find_result(report.records, report.settings)
        report.advice = _indicative(advice, bool(report.environment.get("random_init")))
        for finding in findings:  # the finding's remedy is the advice, worded the same
            finding.change = report.advice[0] if finding.change is not None else None
        report.findings += findings + data_findings(report.data) + example_findings(report.data)
        return report
    report.findings += analyze(report.records, report.settings,
                               vocab_size=report.environment.get("vocab_size"))
    report.findings += data_findings(report.data) + example_findings(report.data)
    report.findings += gradient_data_findings(report.records, report.settings, world)
    report.noise_scale = noise_scale(report.records, report.settings, world)
    report.advice = advise(report.records, report.findings, report.settings, world=world,
                           bf16_supported=report.environment.get("bf16_supported"),
                           random_init=bool(report.environment.get("random_init")))
    return report
