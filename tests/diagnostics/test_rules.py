"""The rules on synthetic step records: each fires on its pattern and stays quiet on noise."""

from __future__ import annotations

import math
import random

from diagnostics.report import DiagnoseSettings, StepRecord
from diagnostics.rules import advise, analyze, noise_scale
from planner.plan import Plan

BLOCKS = [f"block.{i}" for i in range(6)]


def records(losses, norms, *, clipped=None, scales=None, zero_params=None, micro=None, layer=None):
    out = []
    for i, (loss, norm) in enumerate(zip(losses, norms, strict=True)):
        out.append(StepRecord(
            step=i + 1, loss=loss, lr=1e-4, grad_norm=norm, clipped=bool(clipped and clipped[i]),
            layer_norms=layer(i) if layer else {b: norm / 3 for b in BLOCKS}, kind_norms={},
            loss_scale=scales[i] if scales else None, zero_params=(zero_params or [[]] * len(losses))[i],
            micro_grad_sq=micro[i] if micro else None))
    return out


def noisy(n, start=3.0, end=2.0, noise=0.02, seed=0):
    rng = random.Random(seed)
    return [start + (end - start) * i / (n - 1) + rng.gauss(0, noise) for i in range(n)]


def codes(recs, settings=None):
    return {f.code for f in analyze(recs, settings or DiagnoseSettings(model="x"))}


def test_a_healthy_noisy_run_raises_nothing() -> None:
    rng = random.Random(1)
    recs = records(noisy(40, noise=0.05), [1.0 + 0.3 * rng.random() for _ in range(40)])
    assert {f for f in codes(recs) if f != "loss_plateau"} == set()


def test_loss_spike_is_found_at_its_step() -> None:
    losses = noisy(30)
    losses[20] = 6.0
    found = analyze(records(losses, [1.0] * 30), DiagnoseSettings(model="x"))
    spike = next(f for f in found if f.code == "loss_spikes")
    assert spike.data["steps"] == [21]


def test_gradient_spike_and_steady_growth() -> None:
    norms = [1.0] * 30
    norms[15] = 50.0
    assert "exploding_gradients" in codes(records(noisy(30), norms))
    growing = [1.2 ** i for i in range(30)]
    assert "exploding_gradients" in codes(records([3.0] * 30, growing))


def test_plateau_is_only_information() -> None:
    found = analyze(records([2.0] * 30, [1.0] * 30), DiagnoseSettings(model="x"))
    plateau = next(f for f in found if f.code == "loss_plateau")
    assert plateau.severity == "info"


def test_clipping_on_most_steps_with_a_large_cut() -> None:
    settings = DiagnoseSettings(model="x", max_grad_norm=1.0)
    recs = records(noisy(20), [4.0] * 20, clipped=[True] * 20)
    assert "clipping_most_steps" in codes(recs, settings)
    mild = records(noisy(20), [1.2] * 20, clipped=[True] * 20)
    assert "clipping_most_steps" not in codes(mild, settings)
    found = analyze(recs, settings)
    clip = next(a for a in advise(recs, found, settings) if "max_grad_norm" in a.changes)
    assert clip.changes == {"max_grad_norm": 4.0} and clip.current == {"max_grad_norm": 1.0}
    assert clip.title == "Clip gradients at 4"
    finding = next(f for f in found if f.code == "clipping_most_steps")
    assert finding.field == "max_grad_norm" and finding.change == clip  # the remedy is that one setting


def test_loss_scale_collapse() -> None:
    scales = [65536 / 2 ** i for i in range(20)]
    assert "loss_scale_collapse" in codes(records(noisy(20), [1.0] * 20, scales=scales))


def test_dead_parameters_ignore_lora_first_step() -> None:
    lora = DiagnoseSettings(model="x", plan=Plan(method="lora"))
    first_only = [["model.layers.0.q_proj.lora_A.weight"]] + [[]] * 9
    assert "dead_parameters" not in codes(records(noisy(10), [1.0] * 10, zero_params=first_only), lora)
    always = [["model.layers.0.q_proj.lora_A.weight"]] * 10
    assert "dead_parameters" in codes(records(noisy(10), [1.0] * 10, zero_params=always), lora)


def test_vanishing_needs_orders_of_magnitude() -> None:
    def shrunk(factor):
        return lambda i: {b: (factor if b in ("block.0", "block.1") else 1.0) for b in BLOCKS}

    assert "vanishing_gradients" in codes(records(noisy(10), [1.0] * 10, layer=shrunk(1e-5)))
    assert "vanishing_gradients" not in codes(records(noisy(10), [1.0] * 10, layer=shrunk(0.1)))


def test_noise_scale_recovers_a_known_value() -> None:
    """Synthetic |g|^2 from G^2 = 1 and tr(Sigma) = 32: B_simple = 32 whatever the batches."""
    settings = DiagnoseSettings(model="x", plan=Plan(batch_size=2, grad_accum=2))
    small, big = 1 + 32 / 2, 1 + 32 / 4
    recs = records(noisy(12), [math.sqrt(big)] * 12, micro=[small] * 12)
    assert abs(noise_scale(recs, settings) - 32) < 1e-6
    advice = {k: a for a in advise(recs, [], settings) for k in a.changes}
    assert advice["grad_accum"].changes["grad_accum"] == 16  # 2 x 16 = 32 sequences
    assert advice["grad_accum"].current == {"grad_accum": 2}


def test_advice_names_planner_fields() -> None:
    """Every piece of advice a run can get is keyed by a planner field, never a framework's config key."""
    from diagnostics.report import DiagnosticReport
    from planner.fields import FIELDS
    from planner.findings import Change, Finding

    norms = [1.0] * 30
    norms[1] = 80.0  # an early spike: clipping, warmup and a lower learning rate
    recs = records(noisy(30), norms)
    fp16 = DiagnoseSettings(model="x", plan=Plan(precision="fp16-mixed"))
    pure = DiagnoseSettings(model="x", plan=Plan(precision="bf16"))
    given = advise(recs, analyze(recs, fp16), fp16)
    given += advise(recs, [Finding(severity="warning", code="fp16_underflow", message="m")], fp16)
    given += advise(recs, [Finding(severity="warning", code="bf16_updates_round_away", message="m")], pure)
    names = {s.name for s in FIELDS}
    assert {k for a in given for k in a.changes} == {"max_grad_norm", "warmup_ratio", "learning_rate", "precision"}
    assert all(set(a.changes) <= names and set(a.current) == set(a.changes) and a.title and a.reason for a in given)
    assert [a.current["precision"] for a in given if "precision" in a.changes] == ["fp16-mixed", "bf16"]
    report = DiagnosticReport(status="completed", settings=fp16, findings=analyze(recs, fp16), advice=given)
    data = report.model_dump(mode="json")  # the --json shape: code/message findings, Change advice
    assert {"code", "message", "evidence", "fix", "field", "change"} <= set(data["findings"][0])
    assert {"title", "changes", "current", "reason"} <= set(data["advice"][0])
    assert all(isinstance(a, Change) for a in DiagnosticReport.model_validate(data).advice)
