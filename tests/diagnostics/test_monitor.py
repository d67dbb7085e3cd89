"""Parameter names and grouping, and the monitor's numbers against torch's own norms."""

from __future__ import annotations

import math

import pytest

from diagnostics.monitor import GradMonitor, classify, normalize_name


@pytest.mark.parametrize(("raw", "clean"), [
    ("module.model.layers.3.mlp.down_proj.weight", "model.layers.3.mlp.down_proj.weight"),
    ("_orig_mod.model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.q_proj.weight"),
    ("base_model.model.model.layers.1.self_attn.v_proj.lora_A.default.weight",
     "model.layers.1.self_attn.v_proj.lora_A.weight"),
    ("module._fsdp_wrapped_module.model.layers.2._fsdp_wrapped_module.mlp.up_proj.weight",
     "model.layers.2.mlp.up_proj.weight"),
    ("base_model.model.model.layers.0.mlp.experts.base_layer.lora_B.default.weight",
     "model.layers.0.mlp.experts.lora_B.weight"),
])
def test_wrapper_prefixes_are_removed(raw: str, clean: str) -> None:
    assert normalize_name(raw) == clean


@pytest.mark.parametrize(("name", "group"), [
    ("model.embed_tokens.weight", ("embeddings", "embedding")),
    ("transformer.wte.weight", ("embeddings", "embedding")),
    ("model.layers.5.self_attn.o_proj.weight", ("block.5", "attention")),
    ("model.layers.5.mlp.gate_proj.weight", ("block.5", "mlp")),
    ("model.layers.5.mlp.gate.weight", ("block.5", "router")),
    ("model.layers.5.mlp.experts.gate_up_proj", ("block.5", "experts")),
    ("model.layers.5.input_layernorm.weight", ("block.5", "norm")),
    ("model.layers.5.self_attn.q_proj.lora_A.weight", ("block.5", "lora_A")),
    ("transformer.h.2.attn.c_attn.weight", ("block.2", "attention")),
    ("model.norm.weight", ("final_norm", "norm")),
    ("lm_head.weight", ("head", "head")),
])
def test_parameters_are_grouped_by_layer_and_kind(name: str, group: tuple[str, str]) -> None:
    assert classify(name) == group


def test_norms_match_torch_and_clipping_matches_clip_grad_norm() -> None:
    import torch

    from diagnostics.models import build_model
    from planner.plan import Plan
    from tests.planner.configs import random_config

    config = random_config("llama", 0, layers=2)
    model = build_model(config, Plan(method="full", precision="fp32"))
    ids = torch.randint(3, config["vocab_size"], (2, 16), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    monitor = GradMonitor(model)
    parts = monitor.after_backward(max_grad_norm=0.5)
    stats = monitor.finish(parts, extra=[1.5])
    reference = torch.nn.utils.get_total_norm(grads)
    assert stats.total_norm == pytest.approx(float(reference), rel=1e-5)
    block0 = [g for (n, _), g in zip(model.named_parameters(), grads, strict=True) if ".layers.0." in n]
    assert stats.layer_norms["block.0"] == pytest.approx(float(torch.nn.utils.get_total_norm(block0)), rel=1e-5)
    assert math.isclose(sum(v ** 2 for v in stats.layer_norms.values()), stats.total_norm ** 2, rel_tol=1e-5)
    coef = 0.5 / (float(reference) + 1e-6)  # torch.nn.utils.clip_grad_norm_'s coefficient
    clipped = [p.grad for p in model.parameters()]
    assert all(torch.allclose(a, g * coef, rtol=1e-5, atol=1e-9) for a, g in zip(clipped, grads, strict=True))
    assert stats.extra == [1.5]


def test_a_norm_whose_square_overflows_fp32_stays_finite_and_exact() -> None:
    """Gradients scaled to norms near 1e21: their squares (1e42) overflow fp32 (3.4e38), the norms do not."""
    import torch

    from diagnostics.models import build_model
    from planner.plan import Plan
    from tests.planner.configs import random_config

    config = random_config("llama", 1, layers=2)
    model = build_model(config, Plan(method="full", precision="fp32"))
    ids = torch.randint(3, config["vocab_size"], (2, 16), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()
    for p in model.parameters():
        p.grad.mul_(1e21)
    truth = torch.linalg.vector_norm(torch.cat([p.grad.double().flatten() for p in model.parameters()]))
    block0 = torch.cat([p.grad.double().flatten() for n, p in model.named_parameters() if ".layers.0." in n])
    assert math.isinf(float(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])))  # fp32's answer
    monitor = GradMonitor(model)
    stats = monitor.finish(monitor.after_backward(max_grad_norm=1.0))
    assert stats.total_norm == pytest.approx(float(truth), rel=1e-6) and stats.nonfinite_param is None
    assert stats.layer_norms["block.0"] == pytest.approx(float(torch.linalg.vector_norm(block0)), rel=1e-6)
    clipped = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
    assert float(clipped) == pytest.approx(1.0, rel=1e-4)  # and the clip brought them back to max_grad_norm


def test_non_finite_values_survive_json() -> None:
    """JSON has no NaN or Infinity: a record writes them as strings and reads them back; finite numbers stay
    numbers, however large."""
    from diagnostics.report import StepRecord

    record = StepRecord(step=3, loss=math.nan, lr=1e-4, grad_norm=math.inf, clipped=False,
                        layer_norms={"block.0": 3.2e21, "block.1": -math.inf}, kind_norms={})
    text = record.model_dump_json()
    assert '"loss":"NaN"' in text and '"grad_norm":"Infinity"' in text and '"block.0":3.2e+21' in text
    again = StepRecord.model_validate_json(text)
    assert math.isnan(again.loss) and again.grad_norm == math.inf and again.layer_norms["block.1"] == -math.inf
