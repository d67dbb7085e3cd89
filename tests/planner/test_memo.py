"""Memoization must not change a result: the planner's memos (planner.memo) against the same work done cold.

There is no outside truth for "the same number as before the caches"; the truth here is the planner itself run with
every memo emptied on a fresh copy of the model (nothing can hit), compared with runs whose memos were warmed by
other plans, other models and other micro-batches first. benchmarks/check_grid.py checks the numbers against the
stored baseline over 4096 plans.
"""

from __future__ import annotations

import gc

import pytest

from planner import memo
from planner.fit import max_batch_size, max_seq_len
from planner.memory import estimate_memory
from planner.plan import Plan
from planner.service import plan_run
from planner.spec import load_spec
from planner.target import GpuTarget

# every recipe setting at once, as benchmarks/bench_estimate.py plans them
ALL_ON = dict(batch_size=2, seq_len=1024, gradient_checkpointing=True, liger_kernels="default", fused_loss=True,
              activation_offload="saved", packing=True, gpus=8, context_parallel=2)
PLANS = [
    dict(method="lora", use_dora=True, optimizer="paged-adamw-8bit", precision="fp16-mixed", zero=3, **ALL_ON),
    dict(method="qlora", optimizer="galore-adamw-8bit", weights_dtype="fp16", zero=3, **ALL_ON),
    dict(method="full", optimizer="apollo-adamw", tensor_parallel=2, zero=1, **ALL_ON),
    dict(method="freeze", optimizer="adamw-8bit", batch_size=3, seq_len=512),
    dict(method="lora", stage="dpo", framework="trl", batch_size=2, seq_len=512),
    dict(method="lora", batch_size=4, seq_len=512, padding_free=True, token_fill=0.5, attention="flash"),
    # the optimizer's state, its step and ZeRO-3's sub-group share one memoized tensor list
    dict(method="freeze", optimizer="adafactor", freeze_trainable_layers=3, gpus=4, zero=3, batch_size=2,
         seq_len=512),
    dict(method="lora", optimizer="adalomo", gpus=2, zero=3, batch_size=2, seq_len=512),
]


def _cold(model: str, fields: dict, target=None) -> dict:
    memo.clear()
    spec = load_spec(model).model_copy(deep=True)  # a new object: no identity memo can hit
    return plan_run(spec, Plan.build(**fields), target).model_dump()


@pytest.mark.parametrize("model", ["qwen2.5-0.5b-instruct", "mixtral-8x7b"])
def test_warm_estimates_equal_cold_ones(model):
    target = GpuTarget.of_catalog("A100 80GB")
    cold = [_cold(model, fields, target) for fields in PLANS]
    spec = load_spec(model)
    other = load_spec("gemma-2-2b")
    for _ in range(2):  # the second round runs on memos warmed by every plan, shape and model
        for fields, expected in zip(PLANS, cold, strict=True):
            for batch in (1, 5):  # other shapes of the same plan share its layout and model states
                plan_run(spec, Plan.build(**{**fields, "batch_size": batch}), target)
            plan_run(other, Plan.build(**fields), target)
            assert plan_run(spec, Plan.build(**fields), target).model_dump() == expected


def test_stage_copy_of_a_spec_is_not_confused_with_it():
    # TRL's reward model is a copy of the spec with a one-wide head: same blocks, other counts and memory
    spec = load_spec("qwen2.5-0.5b-instruct")
    sft = Plan.build(method="lora", framework="trl")
    rm = sft.with_(stage="rm")
    first, second = estimate_memory(spec, sft).total, estimate_memory(spec, rm).total
    assert first != second
    assert estimate_memory(spec, sft).total == first and estimate_memory(spec, rm).total == second


@pytest.mark.parametrize("fields", [PLANS[0], PLANS[1], PLANS[3]])  # their peak grows with both sizes
def test_searches_agree_with_validated_plans(fields):
    """The searches probe unvalidated copies (`fit._sized`); the answer must hold for validated plans: it fits
    and one more does not."""
    spec = load_spec("qwen2.5-0.5b-instruct")
    plan = Plan.build(**fields)
    capacity = estimate_memory(spec, plan.with_(batch_size=100)).total - 1  # some micro-batch under 100 fits
    batch = max_batch_size(spec, plan, capacity, limit=512)
    assert 0 < batch < 100
    assert estimate_memory(spec, plan.with_(batch_size=batch)).total <= capacity
    assert estimate_memory(spec, plan.with_(batch_size=batch + 1)).total > capacity
    one = plan.with_(batch_size=1)
    capacity = estimate_memory(spec, one.with_(seq_len=5000)).total - 1  # some length under 5000 fits
    seq = max_seq_len(spec, one, capacity, limit=1 << 15)
    assert 0 < seq < 5000
    assert estimate_memory(spec, one.with_(seq_len=seq)).total <= capacity
    assert estimate_memory(spec, one.with_(seq_len=seq + 1)).total > capacity


def test_memo_keys_on_identity_and_pins_its_objects():
    calls = []

    @memo.by_identity(objects=1)
    def size(obj: list, scale: int) -> int:
        calls.append(1)
        return len(obj) * scale

    a, b = [1, 2], [1, 2]
    assert size(a, 3) == size(a, 3) == 6 and len(calls) == 1
    assert size(b, 3) == 6 and len(calls) == 2  # an equal object is another key
    assert size(a, 4) == 8 and len(calls) == 3  # so is another value of the hashed arguments
    ids = {id(a)}
    del a, b
    gc.collect()
    # the memo holds its objects: a new list cannot take a cached one's id and read its result
    fresh = [[9] * 5 for _ in range(100)]
    assert not ids & {id(f) for f in fresh}
    assert [size(f, 1) for f in fresh[:3]] == [5, 5, 5]
