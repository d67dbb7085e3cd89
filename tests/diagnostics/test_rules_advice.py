"""Advice that converges: learning rates into the method's usual range, clip values only from enough healthy
steps and never after a NaN, and advice on random weights marked as indicative only."""

from __future__ import annotations

import itertools
import math

from diagnostics.loop import run
from diagnostics.report import DiagnoseSettings, StepRecord
from diagnostics.rules import advise, analyze
from planner.plan import Plan


def records(losses, norms):
    return [StepRecord(step=i + 1, loss=loss, lr=1e-4, grad_norm=norm, clipped=False,
                       layer_norms={"block.0": norm / 2, "block.1": norm / 2}, kind_norms={})
            for i, (loss, norm) in enumerate(zip(losses, norms, strict=True))]


def lr_advice(recs, settings, **kw):
    return next(a for a in advise(recs, analyze(recs, settings), settings, **kw) if "learning_rate" in a.changes)


def test_a_far_too_high_rate_goes_into_the_usual_range_at_once() -> None:
    """LLaMA-Factory's usual tops: 2e-5 for full SFT (examples/train_full), 2e-4 for LoRA; DPO about 20x lower."""
    diverging = records([3.0 + 0.3 * i for i in range(12)], [1.0 * 2 ** i for i in range(12)])
    for method, lr, top in (("full", 1.0, 2e-5), ("lora", 0.1, 2e-4)):
        settings = DiagnoseSettings(model="x", lr=lr, plan=Plan(method=method))
        assert lr_advice(diverging, settings).changes["learning_rate"] == top
    # inside the range and still diverging: a tenth, not a third
    inside = DiagnoseSettings(model="x", lr=1e-5, plan=Plan(method="full"))
    assert lr_advice(diverging, inside).changes["learning_rate"] == 1e-6


def test_no_clip_advice_from_few_healthy_steps_or_after_a_nan() -> None:
    settings = DiagnoseSettings(model="x", max_grad_norm=1.0)
    short = records([3.0, 2.9, 2.8, 2.7], [1.0, 60.0, 1.0, 1.0])
    assert not any("max_grad_norm" in a.changes for a in advise(short, analyze(short, settings), settings))
    norms = [1.0] * 10 + [50.0, math.nan]
    nan = records([3.0 - 0.01 * i for i in range(11)] + [math.nan], norms)
    given = advise(nan, analyze(nan, settings), settings)
    assert not any("max_grad_norm" in a.changes for a in given)
    assert any("learning_rate" in a.changes for a in given)


def test_advice_on_random_weights_is_indicative_only() -> None:
    recs = records([3.0 + 0.3 * i for i in range(12)], [1.0 * 2 ** i for i in range(12)])
    settings = DiagnoseSettings(model="x", lr=1.0)
    given = advise(recs, analyze(recs, settings), settings, random_init=True)
    assert given and all("indicative only" in a.reason for a in given)
    assert not any("indicative" in a.reason for a in advise(recs, analyze(recs, settings), settings))


def test_the_lowered_rate_trains_in_one_round() -> None:
    """lr 1.0 on full fine-tuning explodes; the advised rate, applied once, trains without exploding or diverging."""
    plan = Plan(method="full", precision="fp32", batch_size=2, grad_accum=1, seq_len=64)
    first = run(DiagnoseSettings(model="tiny-llama", steps=8, lr=1.0, max_grad_norm=None, plan=plan))
    lr = next(a.changes["learning_rate"] for a in first.advice if "learning_rate" in a.changes)
    again = run(DiagnoseSettings(model="tiny-llama", steps=8, lr=lr, max_grad_norm=None, plan=plan))
    assert not {"exploding_gradients", "loss_divergence", "non_finite"} & {f.code for f in again.findings}


def test_lr_find_advises_a_rate_that_trains_below_one_that_diverges() -> None:
    """The range test's edge checked by two ordinary runs: a tenth of it trains, ten times it does not."""
    plan = Plan(method="full", precision="fp32", batch_size=2, grad_accum=1, seq_len=64)
    found = run(DiagnoseSettings(model="tiny-llama", steps=24, lr_find=True, plan=plan))
    lrs = [r.lr for r in found.records]
    assert all(b > a for a, b in itertools.pairwise(lrs))  # an exponential ramp
    finding = next(f for f in found.findings if f.code == "lr_find")
    advised = finding.change.changes["learning_rate"]
    assert found.advice == [finding.change] and "indicative only" in finding.change.reason
    edge = finding.data["edge_lr"]

    def trained(lr):
        report = run(DiagnoseSettings(model="tiny-llama", steps=8, lr=lr, max_grad_norm=None, plan=plan))
        codes = {f.code for f in report.findings}
        return report.status == "completed" and not codes & {"loss_divergence", "exploding_gradients"} \
            and report.records[-1].loss < report.records[0].loss

    assert trained(advised) and not trained(10 * edge)
