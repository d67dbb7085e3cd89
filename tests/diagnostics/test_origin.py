"""Non-finite steps with a known origin, built here: each is named by its module, pass and step.

The truth is the construction: a forward hook that writes NaN into one module's output, weights that make one
module overflow fp32, a backward hook that poisons one module's input gradient, a hook on one parameter's
gradient. The replay must name that module, and never run on a healthy step.
"""

from __future__ import annotations

import json
import math

import pytest

from diagnostics.loop import run
from diagnostics.report import DiagnoseSettings, DiagnosticReport
from planner.plan import Plan

V_PROJ = "model.layers.3.self_attn.v_proj"  # tiny-llama has 4 blocks: the last one's value projection


def settings(method: str = "full", steps: int = 4, **kw) -> DiagnoseSettings:
    plan_kw = {"batch_size": 2, "grad_accum": 1, "seq_len": 96, "lora_rank": 4, "precision": "fp32"}
    plan_kw.update({k: kw.pop(k) for k in list(kw) if k in Plan.model_fields})
    return DiagnoseSettings(model="tiny-llama", steps=steps, plan=Plan(method=method, **plan_kw), **kw)


def submodule(model, suffix: str):
    return next(m for n, m in model.named_modules() if n.endswith(suffix))


def non_finite(report: DiagnosticReport):
    assert report.status == "non_finite"
    return next(f for f in report.findings if f.code == "non_finite")


@pytest.mark.parametrize("method", ["full", "lora"])
def test_nan_written_into_a_forward_output_names_that_module(method: str) -> None:
    """From the third forward on (step 3, and its replay), layer 3's v_proj outputs a NaN."""

    def poison(model):
        calls = [0]

        def hook(module, args, output):
            calls[0] += 1
            if calls[0] >= 3:
                output = output.clone()
                output[..., 0] = float("nan")
                return output
            return None

        submodule(model, "layers.3.self_attn.v_proj").register_forward_hook(hook)

    report = run(settings(method, steps=5), prepare_model=poison)
    finding = non_finite(report)
    assert finding.data.items() >= {"step": 3, "phase": "forward", "module": V_PROJ, "where": "output",
                                    "micro_batch": 0}.items()
    assert len(report.records) == 3 and all(math.isfinite(r.loss) for r in report.records[:2])
    assert "the loss became nan at step 3: the forward pass" in finding.evidence
    assert report.message == f"stopped at step 3: non-finite loss, first in {V_PROJ}"


def test_a_forward_overflow_in_down_proj_is_named() -> None:
    """Layer 0's MLP with gate = up (so every silu(g) * g >= 0, and they sum to about 150) and a down_proj of
    1e37: the product overflows fp32 inside down_proj, from finite inputs and finite weights."""
    import torch

    def overflow(model):
        mlp = submodule(model, "layers.0.mlp")
        with torch.no_grad():
            mlp.gate_proj.weight.mul_(10)
            mlp.up_proj.weight.copy_(mlp.gate_proj.weight)
            mlp.down_proj.weight.fill_(1e37)

    finding = non_finite(run(settings("full", steps=3), prepare_model=overflow))
    assert finding.data["module"] == "model.layers.0.mlp.down_proj"
    assert finding.data["phase"] == "forward" and finding.data["where"] == "output"


def test_a_non_finite_weight_is_named_as_the_weight() -> None:
    """A NaN in layer 1's o_proj weight, as a broken checkpoint would load it."""
    import torch

    def corrupt(model):
        with torch.no_grad():
            submodule(model, "layers.1.self_attn.o_proj").weight[0, 0] = float("nan")

    finding = non_finite(run(settings("full", steps=2), prepare_model=corrupt))
    assert finding.data["module"] == "model.layers.1.self_attn.o_proj" and finding.data["where"] == "weights"
    assert "checkpoint" in finding.fix


@pytest.mark.parametrize("method", ["full", "lora"])
def test_nan_in_a_backward_input_gradient_names_that_module(method: str) -> None:
    """A backward hook makes layer 3's v_proj pass back NaN: the loss stays finite, the gradients do not."""

    def poison(model):
        submodule(model, "layers.3.self_attn.v_proj").register_full_backward_hook(
            lambda module, grad_input, grad_output: (grad_input[0] * float("nan"),))

    report = run(settings(method, steps=3), prepare_model=poison)
    finding = non_finite(report)
    assert finding.data["phase"] == "backward" and finding.data["module"] == V_PROJ
    assert finding.data["where"] == "input gradient" and finding.data["step"] == 1
    assert math.isfinite(report.records[0].loss)
    # the poisoned gradient reaches what lies below v_proj, never what lies above it
    assert "block.0" in finding.data["layers"] and not {"final_norm", "head"} & set(finding.data["layers"])
    assert "while the loss stayed finite" in finding.evidence
    assert report.message == f"stopped at step 1: non-finite gradients, first in {V_PROJ}"


def test_nan_in_one_parameter_gradient_names_the_parameter() -> None:
    target = "model.layers.2.mlp.down_proj.weight"

    def poison(model):
        dict(model.named_parameters())[target].register_hook(lambda g: g * float("nan"))

    finding = non_finite(run(settings("full", steps=3), prepare_model=poison))
    assert finding.data.items() >= {"phase": "backward", "where": "parameter gradient",
                                    "module": "model.layers.2.mlp.down_proj", "parameter": target}.items()
    assert finding.data["layers"] == ["block.2"]


def test_the_replay_runs_on_the_bad_step_only(monkeypatch) -> None:
    import diagnostics.loop as loop

    replayed = []
    real = loop.locate

    def spy(model, forward, backward, indices, record):
        replayed.append(record.step)
        return real(model, forward, backward, indices, record)

    monkeypatch.setattr(loop, "locate", spy)
    assert run(settings("lora", steps=4)).status == "completed" and replayed == []
    done = [0]

    def poison(model):  # an inf gradient from step 3 on
        dict(model.named_parameters())["model.layers.1.mlp.up_proj.weight"].register_hook(
            lambda g: g * float("inf") if done[0] >= 2 else g)

    report = run(settings("full", steps=5), prepare_model=poison, on_step=lambda r: done.__setitem__(0, r.step))
    assert replayed == [3] and [r.step for r in report.records] == [1, 2, 3]


def test_a_huge_finite_norm_is_exploding_not_non_finite() -> None:
    """From step 6 every gradient is 1e21 times larger: norms near 1e20, whose squares overflow fp32 (3.4e38)
    while the norms themselves do not. They must stay finite, in the records and in the JSON."""
    steps = [0]

    def blow_up(model):
        for p in model.parameters():
            if p.requires_grad:
                p.register_hook(lambda g: g * 1e21 if steps[0] >= 5 else g)

    def count(record):
        steps[0] = record.step

    report = run(settings("full", steps=8, max_grad_norm=1.0), prepare_model=blow_up, on_step=count)
    assert report.status == "completed"
    huge = [r.grad_norm for r in report.records[5:]]
    assert all(math.isfinite(n) and 1e18 < n < 1e24 for n in huge), huge
    assert all(math.isfinite(v) for r in report.records for v in r.layer_norms.values())
    codes = {f.code for f in report.findings}
    assert "exploding_gradients" in codes and "non_finite" not in codes
    stored = json.loads(report.model_dump_json())["records"]
    assert [r["grad_norm"] for r in stored[5:]] == pytest.approx(huge)


@pytest.mark.parametrize(("overflows", "code"), [(5, "loss_scale_collapse"), (2, "fp16_skipped_steps")])
def test_fp16_skipped_steps_are_counted_exactly(overflows: int, code: str) -> None:
    """The first `overflows` backward passes give an inf gradient: torch's GradScaler skips those steps and
    halves its scale each time (2^16 -> 2^16 / 2^overflows), which is the truth the records must match."""
    seen = [0]

    def overflow(model):
        dict(model.named_parameters())["model.layers.1.mlp.up_proj.weight"].register_hook(
            lambda g: g * float("inf") if seen[0] < overflows else g)

    def count(record):
        seen[0] = record.step

    report = run(settings("full", steps=overflows + 2, precision="fp16-mixed", lr=1e-4), prepare_model=overflow,
                 on_step=count)
    assert report.status == "completed"
    assert [r.step for r in report.records if r.skipped] == list(range(1, overflows + 1))
    assert report.records[0].loss_scale == 2.0 ** 16
    assert report.records[overflows].loss_scale == 2.0 ** 16 / 2 ** overflows
    finding = next(f for f in report.findings if f.code == code)
    assert finding.data["count"] == overflows
    assert {f.code for f in report.findings} & {"loss_scale_collapse", "fp16_skipped_steps"} == {code}
    assert finding.severity == ("error" if overflows >= 5 else "info")
