"""Path to fit (issue 14): the cheapest combination of changes really fits (per plan_run, the service every
front end calls), no cheaper single change fits, and the smallest catalog GPU is the smallest that fits as is."""

from __future__ import annotations

import pytest

from planner.hardware import catalog
from planner.path_to_fit import candidates, change_cost, path_to_fit
from planner.plan import Plan
from planner.service import plan_run
from planner.spec import load_spec
from planner.target import GpuTarget

CASES = [  # (model, plan, GPU): none fits as planned
    ("7b", Plan(method="full", seq_len=2048, batch_size=4, gradient_checkpointing=False), "RTX-4090"),
    ("llama-3.1-8b", Plan(method="lora", seq_len=4096, batch_size=8, gradient_checkpointing=False), "RTX-4090"),
    ("llama-3.1-70b", Plan(method="full", seq_len=2048, batch_size=1), "H100-80GB"),
    ("qwen2.5-7b-instruct", Plan(method="full", stage="dpo", seq_len=1024, batch_size=2), "A100-40GB"),
]


def fits(spec, plan, gpu: str) -> bool:
    return plan_run(spec, plan, GpuTarget.of_catalog(gpu)).fit.fits


@pytest.mark.parametrize(("model", "plan", "gpu"), CASES, ids=[c[0] + "-" + c[1].method for c in CASES])
def test_the_path_fits_and_no_cheaper_single_change_does(model, plan, gpu) -> None:
    spec, target = load_spec(model), GpuTarget.of_catalog(gpu)
    planned = plan_run(spec, plan, target).plan
    assert not fits(spec, planned, gpu)
    path = path_to_fit(spec, planned, target)
    assert path.change is not None
    after = plan_run(spec, planned.with_(**path.change.changes), target)
    assert after.fit.fits and after.memory.total == path.change.new_total
    for _, _, single in candidates(spec, planned, target.capacity, target):
        if change_cost(single, planned) < path.cost:
            try:
                cheaper = planned.with_(**single)
            except ValueError:
                continue
            assert not fits(spec, cheaper, gpu), single


@pytest.mark.parametrize(("model", "plan", "gpu"), CASES[:3], ids=[c[0] for c in CASES[:3]])
def test_the_smallest_gpu_fits_as_is_and_every_smaller_one_does_not(model, plan, gpu) -> None:
    spec = load_spec(model)
    path = path_to_fit(spec, plan_run(spec, plan, GpuTarget.of_catalog(gpu)).plan, GpuTarget.of_catalog(gpu))
    by_memory = sorted(catalog(), key=lambda g: g.memory_bytes)
    fitting = [g.name for g in by_memory if fits(spec, plan, g.name)]
    if not fitting:
        assert path.smallest_gpu is None
        return
    assert path.smallest_gpu is not None and fits(spec, plan, path.smallest_gpu)
    smaller = [g for g in by_memory if g.memory_bytes < next(x.memory_bytes for x in by_memory
                                                              if x.name == path.smallest_gpu)]
    assert not any(fits(spec, plan, g.name) for g in smaller)


def test_a_plan_nothing_rescues_says_so() -> None:
    spec = load_spec("llama-3.1-70b")
    plan = Plan(method="qlora", quant_bits=4, seq_len=32768, batch_size=64, gradient_checkpointing=False)
    target = GpuTarget.of_catalog("T4")
    path = path_to_fit(spec, plan_run(spec, plan, target).plan, target)
    assert path.change is None and path.smallest_gpu is None
