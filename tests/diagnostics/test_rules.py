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


def kinds(recs, settings=None):
    return {f.kind for f in analyze(recs, settings or DiagnoseSettings(model="x"))}


def test_a_healthy_noisy_run_raises_nothing() -> None:
    rng = random.Random(1)
    recs = records(noisy(40, noise=0.05), [1.0 + 0.3 * rng.random() for _ in range(40)])
    assert {f for f in kinds(recs) if f != "loss_plateau"} == set()


def test_loss_spike_is_found_at_its_step() -> None:
    losses = noisy(30)
    losses[20] = 6.0
    found = analyze(records(losses, [1.0] * 30), DiagnoseSettings(model="x"))
    spike = next(f for f in found if f.kind == "loss_spikes")
    assert spike.data["steps"] == [21]


def test_gradient_spike_and_steady_growth() -> None:
    norms = [1.0] * 30
    norms[15] = 50.0
    assert "exploding_gradients" in kinds(records(noisy(30), norms))
    growing = [1.2 ** i for i in range(30)]
    assert "exploding_gradients" in kinds(records([3.0] * 30, growing))


def test_plateau_is_only_information() -> None:
    found = analyze(records([2.0] * 30, [1.0] * 30), DiagnoseSettings(model="x"))
    plateau = next(f for f in found if f.kind == "loss_plateau")
    assert plateau.severity == "info"


def test_clipping_on_most_steps_with_a_large_cut() -> None:
    settings = DiagnoseSettings(model="x", max_grad_norm=1.0)
    recs = records(noisy(20), [4.0] * 20, clipped=[True] * 20)
    assert "clipping_most_steps" in kinds(recs, settings)
    mild = records(noisy(20), [1.2] * 20, clipped=[True] * 20)
    assert "clipping_most_steps" not in kinds(mild, settings)
    clip = next(a for a in advise(recs, analyze(recs, settings), settings) if a.key == "max_grad_norm")
    assert clip.value == 4.0


def test_loss_scale_collapse() -> None:
    scales = [65536 / 2 ** i for i in range(20)]
    assert "loss_scale_collapse" in kinds(records(noisy(20), [1.0] * 20, scales=scales))


def test_dead_parameters_ignore_lora_first_step() -> None:
    lora = DiagnoseSettings(model="x", plan=Plan(method="lora"))
    first_only = [["model.layers.0.q_proj.lora_A.weight"]] + [[]] * 9
    assert "dead_parameters" not in kinds(records(noisy(10), [1.0] * 10, zero_params=first_only), lora)
    always = [["model.layers.0.q_proj.lora_A.weight"]] * 10
    assert "dead_parameters" in kinds(records(noisy(10), [1.0] * 10, zero_params=always), lora)


def test_vanishing_needs_orders_of_magnitude() -> None:
    def shrunk(factor):
        return lambda i: {b: (factor if b in ("block.0", "block.1") else 1.0) for b in BLOCKS}

    assert "vanishing_gradients" in kinds(records(noisy(10), [1.0] * 10, layer=shrunk(1e-5)))
    assert "vanishing_gradients" not in kinds(records(noisy(10), [1.0] * 10, layer=shrunk(0.1)))


def test_noise_scale_recovers_a_known_value() -> None:
    """Synthetic |g|^2 from G^2 = 1 and tr(Sigma) = 32: B_simple = 32 whatever the batches."""
    settings = DiagnoseSettings(model="x", plan=Plan(batch_size=2, grad_accum=2))
    small, big = 1 + 32 / 2, 1 + 32 / 4
    recs = records(noisy(12), [math.sqrt(big)] * 12, micro=[small] * 12)
    assert abs(noise_scale(recs, settings) - 32) < 1e-6
    advice = {a.key: a for a in advise(recs, [], settings)}
    assert advice["gradient_accumulation_steps"].value == 16  # 2 x 16 = 32 sequences
