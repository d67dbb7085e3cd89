"""Real training steps: the harness that compares estimates with measured peaks."""

from __future__ import annotations

import math

import pytest

from diagnostics.measure import measure_training_memory
from planner.plan import Plan
from tests.planner.configs import random_config


@pytest.mark.parametrize("method", ["full", "freeze", "lora", "qlora"])
def test_steps_run_on_cpu_and_report_the_estimate(method: str) -> None:
    config = random_config("llama", 0, layers=2)
    plan = Plan(method=method, precision="bf16-mixed", batch_size=2, seq_len=16, lora_rank=4,
                freeze_trainable_layers=1, grad_accum=2)
    check = measure_training_memory(config, plan, steps=2, device="cpu")
    assert len(check.losses) == 4 and all(math.isfinite(x) for x in check.losses)
    assert check.measured_allocated is None  # nothing to measure without CUDA
    assert 0 < check.estimate_allocated <= check.estimate_reserved <= check.estimate_total


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_estimate_matches_cuda_peak(method: str) -> None:
    """On a GPU: the allocated peak within 15% of torch's counter for a small real architecture."""
    import json
    from importlib import resources

    config = json.loads((resources.files("profiles") / "models" / "qwen2.5-0.5b-instruct.json").read_text())
    plan = Plan(method=method, precision="bf16-mixed", batch_size=2, seq_len=1024)
    check = measure_training_memory(config, plan, steps=3, device="cuda")
    assert abs(check.error(check.measured_allocated, check.estimate_allocated)) <= 0.15
