"""The rules on synthetic step records: each fires on its pattern and stays quiet on noise."""

from __future__ import annotations

import math
import random

from diagnostics.report import DiagnoseSettings, StepRecord
from diagnostics.rules import advise, analyze, noise_scale
from planner.plan import Plan

BLOCKS = [f"block.{i}" for i in range(6)]


def records(losses, norms, *, clipped=None, scales=None, skipped=(), zero_params=None, micro=None, layer=None):
    out = []
    for i, (loss, norm) in enumerate(zip(losses, norms, strict=True)):
        out.append(StepRecord(
            step=i + 1, loss=loss, lr=1e-4, grad_norm=norm, clipped=bool(clipped and clipped[i]),
            layer_norms=layer(i) if layer else {b: norm / 3 for b in BLOCKS}, kind_norms={},
            loss_scale=scales[i] if scales else None, skipped=i + 1 in skipped,
            zero_params=(zero_params or [[]] * len(losses))[i], micro_grad_sq=micro[i] if micro else None))
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
    assert "loss_scale_collapse" in codes(records(noisy(20), [1.0] * 20, scales=scales, skipped=range(1, 20)))


def test_five_skipped_fp16_steps_are_a_collapse_and_fewer_are_reported() -> None:
    """The scale each step ran at (before update()): five skips from the first step on halve it five times."""
    norms = [math.inf] * 5 + [1.0] * 5
    scales = [65536 / 2 ** min(i, 5) for i in range(10)]
    found = analyze(records(noisy(10), norms, scales=scales, skipped={1, 2, 3, 4, 5}), DiagnoseSettings(model="x"))
    collapse = next(f for f in found if f.code == "loss_scale_collapse")
    assert collapse.data["skipped_steps"] == [1, 2, 3, 4, 5] and collapse.severity == "error"
    assert "skipped 5 of 10 steps (1, 2, 3, 4, 5)" in collapse.evidence
    assert "from 65536 at step 1 to 2048 at step 10" in collapse.evidence
    assert "non_finite" not in {f.code for f in found}  # a skipped step is not a failed one
    scales = [65536.0] * 2 + [16384.0] * 8
    few = analyze(records(noisy(10), [math.inf] * 2 + [1.0] * 8, scales=scales, skipped={1, 2}),
                  DiagnoseSettings(model="x"))
    info = next(f for f in few if f.code == "fp16_skipped_steps")
    assert info.severity == "info" and info.data["count"] == 2
    assert "loss_scale_collapse" not in {f.code for f in few}


def test_non_finite_says_which_pass_and_where() -> None:
    from diagnostics.report import NonFiniteOrigin

    recs = records([3.0, 2.9, math.nan], [1.0, 1.0, math.nan])
    recs[-1].origin = NonFiniteOrigin(phase="forward", module="model.layers.0.mlp.down_proj", where="output",
                                      micro_batch=1, layers=["block.0", "block.1"])
    finding = next(f for f in analyze(recs, DiagnoseSettings(model="x")) if f.code == "non_finite")
    assert finding.evidence.startswith("the loss became nan at step 3: the forward pass went non-finite; "
                                       "replaying micro-batch 1 with forward hooks, model.layers.0.mlp.down_proj "
                                       "is the first module to output non-finite values from finite inputs")
    assert finding.evidence.endswith("gradient norms non-finite in 2 of 6 layers: block.0, block.1")
    # a record without a replay (a dead child's stream): the pass still comes from the loss
    recs = records([3.0, 2.9], [1.0, math.inf])
    finding = next(f for f in analyze(recs, DiagnoseSettings(model="x")) if f.code == "non_finite")
    assert finding.data["phase"] == "backward" and finding.data["module"] is None
    assert "while the loss stayed finite (2.9): the backward pass" in finding.evidence


def test_dropped_records_are_information_until_a_tenth_of_the_data() -> None:
    from diagnostics.report import DataSummary
    from diagnostics.rules import data_findings

    (few,) = data_findings(DataSummary(records=48, examples=45, seq_len=96, dropped=[42, 43, 44], needed_len=222))
    assert few.severity == "info" and few.code == "dropped_records" and few.field == "seq_len"
    assert few.evidence.startswith("3 of 48 records (6%) train nothing and are left out: 3 (records 42, 43, 44) "
                                   "keep no answer token within seq_len=96: the prompt fills it; seq_len 222 keeps")
    assert "raise seq_len (cutoff_len) to 222" in few.fix
    (many,) = data_findings(DataSummary(records=20, examples=17, seq_len=96, dropped=[1, 2], unanswered=[7]))
    assert many.severity == "warning" and "1 (records 7) have no assistant answer" in many.evidence
    assert data_findings(DataSummary(records=20, examples=20, seq_len=96)) == []


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
