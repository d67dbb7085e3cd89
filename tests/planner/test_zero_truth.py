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
weights (2 + 2 + 8 + 4 bytes per parameter, the 16-bit ones sharded as the stage says).

What DeepSpeed counts that the planner does not (measured, not fixed here):
* ZeRO-2: the 4-byte fp32 gradient partition, 4P/N. DeepSpeed builds it in `step()` for each
  parameter group (`single_grad_partition = flat_grad_partition.to(fp32)`) and frees it after the
  group's update, so it is a transient of the optimizer phase; the planner's optimizer phase has
  no such term (its only temporary there is the for-each AdamW `sqrt`, and none for adamw-fused).
* ZeRO-3: 2 bytes per sharded parameter more than the planner's 16, 2P/N, and 4·largest_layer,
  the gathered 16-bit parameter and gradient of the largest module (the planner's `zero3_gather`,
  two whole decoder layers, is a temporary and is compared separately).
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


def _sides(model_type: str, zero: int, gpus: int) -> tuple[dict[str, int], int, int, int, int]:
    config = random_config(model_type, 0, layers=2)
    total, largest = deepspeed_model_params(build_model(config, method="full", precision="bf16-mixed"))
    est = estimate_memory(spec_from_config(config, source="test"),
                          Plan(method="full", precision="bf16-mixed", optimizer="adamw", zero=zero, gpus=gpus),
                          machine=CPU)
    ours = {part: est.largest[part] for part in MODEL_STATES}
    return ours, deepspeed_zero_gpu_bytes(zero, total, largest, gpus), total, largest, est.details.zero3_gather


@pytest.mark.parametrize("gpus", [1, 2, 8])
@pytest.mark.parametrize("model_type", ["llama", "qwen2", "gpt2", "mixtral"])
def test_zero2_model_states_match_deepspeed(model_type: str, gpus: int) -> None:
    ours, deepspeed, total, _, _ = _sides(model_type, 2, gpus)
    fp32_grads = 4 * total / gpus  # DeepSpeed's "4_grads_32bit", not modelled by the planner
    assert abs(sum(ours.values()) - (deepspeed - fp32_grads)) <= ROUNDING, (ours, deepspeed)
    assert ours["weights"] == 2 * total  # ZeRO-2 keeps the 16-bit weights whole: DeepSpeed's unsharded 2P


@pytest.mark.parametrize("gpus", [1, 2, 8])
@pytest.mark.parametrize("model_type", ["llama", "qwen2", "gpt2", "mixtral"])
def test_zero3_model_states_match_deepspeed(model_type: str, gpus: int) -> None:
    ours, deepspeed, total, largest, gather = _sides(model_type, 3, gpus)
    residual = 4 * largest + 2 * total / gpus  # see the module docstring
    assert abs(sum(ours.values()) - (deepspeed - residual)) <= ROUNDING, (ours, deepspeed)
    if gpus > 1:  # the planner gathers two decoder layers; DeepSpeed reserves the largest module's 16-bit p + g
        assert gather >= 4 * largest, (gather, 4 * largest)


@pytest.mark.xfail(strict=True, reason=(
    "at real size the largest module is the embedding / LM head (525M parameters in Llama-3.1-8B), which "
    "ZeRO-3 gathers whole: DeepSpeed reserves 4 x 525M = 1.96 GiB, the planner's gather of two decoder "
    "layers is 0.81 GiB"))
def test_zero3_gather_covers_the_largest_module_at_real_size() -> None:
    config = json.loads((Path(__file__).parents[2] / "profiles" / "models" / "llama-3.1-8b.json").read_text())
    total, largest = deepspeed_model_params(meta_model(config))
    est = estimate_memory(spec_from_config(config, source="test"),
                          Plan(method="full", precision="bf16-mixed", zero=3, gpus=8), machine=CPU)
    assert total == 8_030_261_248
    assert est.details.zero3_gather >= 4 * largest, (est.details.zero3_gather, 4 * largest)
