"""ZeRO-sharded model states per GPU against DeepSpeed's own estimator functions.

DeepSpeed's estimators (installed source) for a mixed-precision Adam run, no offload, one node:

* ZeRO-2, `stage_1_and_2.estimate_zero2_model_states_mem_needs`: 2P + 18P/N, where "2 = params_16bit,
  18 = 2_grads_16bit + 4_grads_32bit + 4_params_32bit + 8_optimizer_states_32bit";
* ZeRO-3, `stage3.estimate_zero3_model_states_mem_needs`: 4·largest_layer + 18P/N (the 16-bit
  params are sharded too; the source gives no breakdown of this 18).

P and the largest layer (the module with most direct parameters) come from DeepSpeed's
`model_to_params` on a real bf16-mixed model. `additional_buffer_factor` scales only DeepSpeed's
host-memory figure, so nothing needs stripping from the GPU one. The planner's side is the sum of
its model-state components for `zero=2/3`, `gpus=N`: weights + gradients + optimizer + master
weights (2 + 2 + 8 + 4 bytes per parameter, the 16-bit ones sharded as the stage says), plus the
optimizer phase's `zero_gradient_partition`:

* the 4-byte fp32 gradient partition, 4P/N, DeepSpeed's "4_grads_32bit": `step()` builds it for each
  parameter group (`single_grad_partition = flat_grad_partition.to(fp32)`) and frees it after the
  group's update, so the planner has it as a temporary of the optimizer phase (ZeRO-1 runs the same
  `step()`; ZeRO-3 the same per sub-group of `sub_group_size` elements, `_prepare_fp32_grad_for_sub_group`);
* ZeRO-3: the estimator's 18P/N is 2P/N less than the planner's 16 + 4 (the source gives no breakdown
  of its 18), and its 4·largest_layer, the gathered 16-bit parameter and gradient of the largest
  module, is the planner's `zero3_gather`, a temporary compared separately.
The test asserts exactly these residuals, so either side changing shows.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from planner.memory import estimate_memory
from planner.plan import Plan
from planner.spec import spec_from_config
from planner.target import Machine
from tests.planner.configs import random_config
from tests.planner.truth import build_model, meta_model
from tests.planner.truth_training import deepspeed_model_params, deepspeed_zero_gpu_bytes

pytest.importorskip("deepspeed")

CPU = Machine(device="cpu")
MODEL_STATES = ("weights", "gradients", "optimizer", "master_weights")
ROUNDING = 4  # DeepSpeed truncates 18P/N once; the planner rounds each of its sharded parts up


def _sides(model_type: str, zero: int, gpus: int, optimizer: str = "adamw"):
    config = random_config(model_type, 0, layers=2)
    total, largest = deepspeed_model_params(build_model(config, method="full", precision="bf16-mixed"))
    est = estimate_memory(spec_from_config(config, source="test"),
                          Plan(method="full", precision="bf16-mixed", optimizer=optimizer, zero=zero, gpus=gpus),
                          machine=CPU)
    ours = {part: est.largest[part] for part in MODEL_STATES}
    return ours, deepspeed_zero_gpu_bytes(zero, total, largest, gpus), total, largest, est


def _preset(name: str) -> dict:
    return json.loads((Path(__file__).parents[2] / "profiles" / "models" / f"{name}.json").read_text())


@pytest.mark.parametrize("gpus", [1, 2, 8])
@pytest.mark.parametrize("model_type", ["llama", "qwen2", "gpt2", "mixtral"])
def test_zero2_model_states_match_deepspeed(model_type: str, gpus: int) -> None:
    ours, deepspeed, total, _, est = _sides(model_type, 2, gpus)
    fp32_grads = est.details.zero_gradient_partition  # DeepSpeed's "4_grads_32bit", in the optimizer phase
    assert abs(fp32_grads - 4 * total / gpus) <= ROUNDING
    assert abs(sum(ours.values()) + fp32_grads - deepspeed) <= ROUNDING, (ours, fp32_grads, deepspeed)
    assert ours["weights"] == 2 * total  # ZeRO-2 keeps the 16-bit weights whole: DeepSpeed's unsharded 2P
    step = est.phases[-1]
    assert step.name == "optimizer" and step.parts["temporaries"] >= fp32_grads


@pytest.mark.parametrize("optimizer", ["adamw", "adamw-fused"])
def test_zero_step_holds_the_fp32_gradient_partition(optimizer: str) -> None:
    """ZeRO-1 runs the same `step()` as ZeRO-2; the optimizer phase holds the fp32 partition, the 16-bit flat
    copy it is converted from (fused) or the for-each `sqrt` (for-each AdamW), whichever is larger."""
    *_, zero2 = _sides("llama", 2, 4, optimizer)
    *_, zero1 = _sides("llama", 1, 4, optimizer)
    assert zero1.details.zero_gradient_partition == zero2.details.zero_gradient_partition
    partition = zero2.details.zero_gradient_partition
    other = partition if optimizer == "adamw" else partition // 2  # sqrt(exp_avg_sq) in fp32, or the bf16 copy
    assert abs(zero2.details.optimizer_temporaries - (partition + other)) <= ROUNDING


@pytest.mark.parametrize("gpus", [1, 2, 8])
@pytest.mark.parametrize("model_type", ["llama", "qwen2", "gpt2", "mixtral"])
def test_zero3_model_states_match_deepspeed(model_type: str, gpus: int) -> None:
    ours, deepspeed, total, largest, est = _sides(model_type, 3, gpus)
    fp32_grads = est.details.zero_gradient_partition
    residual = 4 * largest - 2 * total / gpus  # see the module docstring
    assert abs(sum(ours.values()) + fp32_grads - (deepspeed - residual)) <= ROUNDING, (ours, fp32_grads, deepspeed)
    if gpus > 1:  # DeepSpeed gathers the largest module whole: its 16-bit parameter + gradient in backward
        assert est.details.zero3_gather >= 4 * largest, (est.details.zero3_gather, 4 * largest)


def test_zero3_gather_covers_the_largest_module_at_real_size() -> None:
    """At real size the largest module is the embedding / LM head (525M parameters in Llama-3.1-8B): ZeRO-3
    gathers it whole, 4 x 525M bytes with its gradient, more than two decoder layers' 16-bit weights."""
    config = _preset("llama-3.1-8b")
    total, largest = deepspeed_model_params(meta_model(config))
    est = estimate_memory(spec_from_config(config, source="test"),
                          Plan(method="full", precision="bf16-mixed", zero=3, gpus=8), machine=CPU)
    assert total == 8_030_261_248 and largest == 128_256 * 4096
    assert est.details.zero3_gather == 4 * largest, (est.details.zero3_gather, 4 * largest)
    forward = est.phases[0].parts["temporaries"] - est.details.loss_forward_transient
    assert forward == 2 * largest  # the LM head's 16-bit weight, kept gathered from its forward to backward


def test_zero3_steps_one_sub_group_at_a_time() -> None:
    """ZeRO-3's step converts one sub-group's gradients to fp32 at a time: sub-groups as DeepSpeed's own
    `_create_fp16_sub_groups` forms them (sub_group_size 1e9) over Llama-3.1-70B's partitions on 8 GPUs."""
    from types import SimpleNamespace

    from deepspeed.runtime.zero.stage3 import DeepSpeedZeroOptimizer_Stage3

    config, gpus = _preset("llama-3.1-70b"), 8
    class Partitioned:  # what `_create_fp16_sub_groups` reads of a ZeRO-3 parameter
        def __init__(self, numel: int) -> None:
            self.numel = -(-numel // gpus)

        def partition_numel(self) -> int:
            return self.numel

    params = [Partitioned(p.numel()) for p in meta_model(config).parameters()]
    groups = DeepSpeedZeroOptimizer_Stage3._create_fp16_sub_groups(SimpleNamespace(sub_group_size=10**9), params)
    largest_sub_group = max(sum(p.numel for p in group) for group in groups)
    est = estimate_memory(spec_from_config(config, source="test"),
                          Plan(method="full", precision="bf16-mixed", zero=3, gpus=gpus), machine=CPU)
    ours = est.details.zero_gradient_partition
    assert len(groups) > 1 and 4 * largest_sub_group <= ours < 4 * sum(p.numel for p in params)
    assert ours - 4 * largest_sub_group <= 4 * max(p.numel for p in params)
