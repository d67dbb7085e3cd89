"""Loss spikes against a local trend, built here: an early-descent curve with a bump of known size and step,
its control without the bump, and the previous batch's re-evaluation telling a hard batch from an instability."""

from __future__ import annotations

import math
import random

from diagnostics.report import DiagnoseSettings, StepRecord
from diagnostics.rules import analyze


def descent(n=30, start=6.2, floor=2.5, rate=0.25, noise=0.02, seed=0):
    """An exponential early descent with multiplicative noise: steep first steps, then a bend."""
    rng = random.Random(seed)
    return [(floor + (start - floor) * math.exp(-rate * i)) * (1 + rng.gauss(0, noise)) for i in range(n)]


def records(losses, norms=None, recheck=None):
    return [StepRecord(step=i + 1, loss=loss, lr=1e-4, grad_norm=(norms or [1.0] * len(losses))[i], clipped=False,
                       layer_norms={}, kind_norms={}, recheck_loss=(recheck or {}).get(i + 1))
            for i, loss in enumerate(losses)]


def spikes(recs):
    return next((f for f in analyze(recs, DiagnoseSettings(model="x")) if f.code == "loss_spikes"), None)


def test_a_bump_in_the_early_descent_is_found_and_its_control_is_quiet() -> None:
    for seed in range(5):
        control = descent(seed=seed)
        assert spikes(records(control)) is None, seed
        bumped = list(control)
        bumped[3] *= 1.38  # step 4, in the steepest part of the descent
        found = spikes(records(bumped))
        assert found is not None and found.data["steps"] == [4], seed


def test_a_gradient_spike_with_a_loss_spike_counts_early() -> None:
    losses = descent(seed=1)
    losses[2] *= 1.25  # step 3: under a fifth over the steep trend, too small a rise alone
    assert spikes(records(losses)) is None
    norms = [1.0] * 30
    norms[2] = 15.0  # below the early gradient bar alone (30x), above the usual one (10x)
    found = {f.code: f for f in analyze(records(losses, norms), DiagnoseSettings(model="x"))}
    assert found["loss_spikes"].data["steps"] == [3]
    assert found["exploding_gradients"].data["spike_steps"] == [3]


def test_hard_batches_are_information_and_an_instability_a_warning() -> None:
    rng = random.Random(2)
    losses = [3.0 * (1 + rng.gauss(0, 0.01)) for _ in range(30)]
    for step in (8, 16, 24):  # recurring harder batches
        losses[step - 1] *= 1.5
    # re-evaluated at the spiking weights, the previous batch lost no more than before: hard batches
    hard = {s: losses[s - 2] * 0.99 for s in (8, 16, 24)}
    found = spikes(records(losses, recheck=hard))
    assert found.severity == "info" and found.data["hard_batches"] == [8, 16, 24]
    # the previous batch got worse by about as much as the spike itself: the model was damaged
    worse = {**hard, 16: losses[14] * 1.45}
    found = spikes(records(losses, recheck=worse))
    assert found.severity == "warning" and found.data["instabilities"] == [16]
    assert found.data["hard_batches"] == [8, 24]


def test_a_garbage_batch_in_the_early_descent_is_a_hard_batch_and_its_control_is_quiet(tmp_path) -> None:
    """Full fine-tuning at lr 3e-3 on the sample data, descending fast; the control is that run as it is (also
    the healthy full-run check: no warning). The garbage run replaces the answers of the two records that make
    up step 10's micro-batch (found through the data pipeline, diagnostics.data) with 200 Cyrillic letters, bytes
    the sample never shows: that step's loss rises, the model is not damaged."""
    import json

    from diagnostics.data import Batches, ByteTokenizer, build_examples, load_records, sample_path, to_turns
    from diagnostics.loop import run
    from planner.plan import Plan

    step, seq_len = 10, 128
    plan = Plan(method="full", precision="fp32", batch_size=2, grad_accum=1, seq_len=seq_len)
    control = run(DiagnoseSettings(model="tiny-llama", steps=12, lr=3e-3, plan=plan))
    assert control.warnings == [] and "loss_spikes" not in {f.code for f in control.findings}

    records = load_records(sample_path("alpaca"))
    tokenizer = ByteTokenizer(512)  # the fallback tokenizer of a config-only model
    batches = Batches(build_examples(records, tokenizer, seq_len), plan.batch_size, 0, control.settings.seed)
    targets = [e.input_ids for e in batches.pick(step - 1)]
    garbage = "".join(chr(0x400 + (i * 37) % 0xFF) for i in range(200))
    hit = 0
    for record in records:
        if tokenizer.conversation(to_turns(record, "sample"))[0][:seq_len] in targets:
            record["output"], hit = garbage, hit + 1
    assert hit == 2
    path = tmp_path / "garbage.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    report = run(DiagnoseSettings(model="tiny-llama", data=str(path), steps=12, lr=3e-3, plan=plan))
    before = [r.loss for r in report.records[:step - 1]]
    assert before == [r.loss for r in control.records[:step - 1]]  # the same run up to the garbage
    assert report.records[step - 1].loss > 1.2 * control.records[step - 1].loss
    finding = next(f for f in report.findings if f.code == "loss_spikes")
    assert finding.data["steps"] == [step] and finding.data["hard_batches"] == [step]
    assert finding.severity == "info" and report.records[step - 1].recheck_loss is not None
