"""Per-GPU model states under FSDP2, parameter offload, tensor / expert / pipeline and context parallel,
against torch's own partitioning (tests/planner/truth_parallel.py) and the bytes autograd saves.

The planner's side is the breakdown's persistent parts for a pure-bf16 full fine-tune (weights and gradients
2 bytes per parameter, as the truth model's bf16 parameters and their same-shaped gradients). Dimensions are
multiples of the world size so that FSDP2's dim-0 padding and torch's uneven chunks do not enter; the
uneven case is checked as a bound.
"""

from __future__ import annotations

import pytest

from planner.errors import FtplanError
from planner.memory import estimate_memory
from planner.plan import Plan
from planner.spec import spec_from_config
from planner.target import Machine
from tests.planner.truth import measure_saved_bytes
from tests.planner.truth_parallel import (
    causal_lm,
    chunk_bytes_per_rank,
    fake_world,
    fsdp2_sharded,
    local_bytes,
    pipeline_stage_bytes,
    tensor_parallel,
    unsharded_unit_bytes,
)

torch = pytest.importorskip("torch")
CPU = Machine(device="cpu")
LLAMA = {"model_type": "llama", "vocab_size": 128, "hidden_size": 64, "intermediate_size": 256,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": False}
MIXTRAL = {"model_type": "mixtral", "vocab_size": 128, "hidden_size": 32, "intermediate_size": 64,
           "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "num_local_experts": 4,
           "num_experts_per_tok": 2, "tie_word_embeddings": False}


def _estimate(config: dict, **plan):
    return estimate_memory(spec_from_config(config, source="test"),
                           Plan(method="full", precision="bf16", **plan), machine=CPU)


def test_fsdp2_full_shard_weights_and_gradients_are_rank0_shards() -> None:
    with fake_world(4):
        model = fsdp2_sharded(causal_lm(LLAMA), 4)
        real = local_bytes(model.parameters())
        gathered = unsharded_unit_bytes(model.model.layers[0])
    est = _estimate(LLAMA, zero=3, gpus=4)
    assert est.largest["weights"] == real
    assert est.largest["gradients"] == real  # FSDP2 reduce-scatters into the parameter's shard shape
    # backward holds one unit gathered and the next prefetched (FSDP2's default backward prefetch of 1)
    assert est.details.zero3_gather == 2 * gathered


def test_fsdp2_uneven_shards_stay_within_torch_chunks() -> None:
    config = {**LLAMA, "vocab_size": 130}  # 130 rows over 4 ranks: chunks of 33, 33, 33, 31
    per_rank = chunk_bytes_per_rank(causal_lm(config), 4)
    ours = _estimate(config, zero=3, gpus=4).largest["weights"]
    assert min(per_rank) <= ours <= max(per_rank)
    assert abs(ours - max(per_rank)) / max(per_rank) < 0.01


@pytest.mark.parametrize("optimizer_too", [False, True])
def test_offloaded_parameters_live_on_the_host(optimizer_too: bool) -> None:
    with fake_world(4):
        model = fsdp2_sharded(causal_lm(LLAMA), 4, offload=True)
        real = local_bytes(model.parameters())
        assert {p.device.type for p in model.parameters()} == {"cpu"}
    est = _estimate(LLAMA, zero=3, gpus=8, nodes=2, offload_params=True, offload_optimizer=optimizer_too)
    on_host = _estimate(LLAMA, zero=3, gpus=4, offload_params=True, offload_optimizer=optimizer_too)
    assert on_host.largest["weights"] == 0
    assert on_host.host_params == real * (2 if optimizer_too else 1)  # gradient shards follow the optimizer
    assert on_host.largest["gradients"] == (0 if optimizer_too else real)
    # the node's host memory: each of its GPUs' offloaded state (8 GPUs on 2 nodes: 4 per node)
    assert est.host_per_node == 4 * (est.host_params + est.cpu_offload)


def test_tensor_parallel_weights_are_the_rank0_shards() -> None:
    with fake_world(4):
        model = tensor_parallel(causal_lm(LLAMA), 4, 2)
        real = local_bytes(model.parameters())
    est = _estimate(LLAMA, gpus=2, tensor_parallel=2)
    assert est.largest["weights"] == real
    assert est.largest["gradients"] == real


def test_expert_and_pipeline_parallel_hold_the_heavier_stage() -> None:
    with fake_world(4):
        stages = pipeline_stage_bytes(causal_lm(MIXTRAL), 2, 2)
    est = _estimate(MIXTRAL, gpus=4, pipeline_parallel=2, expert_parallel=2)
    assert est.largest["weights"] == max(stages)
    assert est.largest["gradients"] == max(stages)


def test_context_parallel_activations_are_a_chunk_of_the_sequence() -> None:
    """A CP rank runs every layer on seq / CP tokens (ring attention: its chunk's q, k, v; Ulysses with sdpa:
    the whole sequence at heads / CP, the same bytes): truth is a forward on one chunk."""
    seq, cp = 64, 4
    config = {**LLAMA, "num_attention_heads": 8, "num_key_value_heads": 8}
    real = measure_saved_bytes(causal_lm(config), 1, seq // cp, config["vocab_size"])
    est = _estimate(config, gpus=cp, context_parallel=cp, seq_len=seq)
    whole = _estimate(config, gpus=cp, seq_len=seq)
    ours = est.largest["activations"] + est.largest["logits"]
    assert abs(ours - real) / real <= 0.10, (ours, real)
    assert ours < whole.largest["activations"] + whole.largest["logits"]


def test_context_parallel_groups_do_not_add_data_parallel_ranks() -> None:
    # axolotl core/trainers/grpo/sampler.py: num_sp_groups = world_size // context_parallel_size; each group
    # reads one batch; Megatron: data-parallel size = world / (TP x PP x CP)
    plan = Plan(gpus=16, context_parallel=4, tensor_parallel=2, batch_size=2, grad_accum=3)
    assert plan.global_batch == 2 * 3 * (16 // (4 * 2))
    assert Plan(gpus_per_node=8, nodes=2).gpus == 16  # --nodes N --gpus-per-node G: N x G GPUs


@pytest.mark.parametrize(("fields", "field"), [
    ({"gpus": 3, "tensor_parallel": 2}, "gpus"),
    ({"gpus": 2, "expert_parallel": 4}, "expert_parallel"),
    ({"gpus": 6, "nodes": 4}, "nodes"),
    ({"offload_params": True, "zero": 2, "gpus": 2}, "offload_params"),
    ({"gpus": 4, "gpus_per_node": 4, "nodes": 2}, "gpus_per_node"),
    ({"context_parallel": 0}, "context_parallel"),
])
def test_bad_layouts_name_the_setting(fields: dict, field: str) -> None:
    with pytest.raises(FtplanError) as err:
        Plan.build(**fields)
    assert err.value.field == field
