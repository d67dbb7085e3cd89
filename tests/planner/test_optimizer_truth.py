"""Optimizer state bytes against one real optimizer step, for every optimizer ftplan offers.

The truth is the optimizer `transformers.Trainer.create_optimizer` builds for the matching `optim`
(what LLaMA-Factory and TRL run): torch AdamW (for-each / fused), bitsandbytes AdamW8bit /
PagedAdamW8bit (both run on CPU in bitsandbytes 0.50; paging falls back to plain buffers there),
transformers' Adafactor with the Trainer's `scale_parameter=False, relative_step=False`, torch
SGD with and without momentum. After one step, every tensor in `optimizer.state` is summed,
each storage once (bitsandbytes shares its two 256-entry quantile maps across parameters).

Per-parameter 0-dim scalars are left out of the comparison, explicitly: torch Adam's `step`
(fp32; on the host for the for-each kernel, on the GPU for the fused one) and Adafactor's `RMS`
(fp32, on the parameter's device). They are 4 bytes per parameter tensor (on CUDA, one 512-byte
allocator block each: ~150 KiB for a 291-tensor 8B model), which the planner does not model;
`test_left_out_scalars_are_one_per_tensor` bounds them.
"""

from __future__ import annotations

import pytest

from planner.memory import optimizer_state_bytes
from planner.methods import layout
from planner.params import count_params
from planner.plan import Plan
from planner.spec import spec_from_config
from tests.planner.truth import build_model
from tests.planner.truth_training import (
    TRAINER_OPTIM,
    optimizer_state_tensors,
    reset_bitsandbytes_overrides,
    step_once,
    tensor_bytes,
    trainer_optimizer,
)

# Every matrix, LoRA A/B included (rank 16 x 256), has at least bitsandbytes' min_8bit_size (4096)
# elements, so only norms stay in 32-bit state, and the embedding, which the Trainer registers as 32-bit
# (`GlobalOptimManager.register_module_override`); GQA below puts LoRA matrices under the threshold too.
CONFIG = {
    "model_type": "llama", "vocab_size": 512, "hidden_size": 256, "intermediate_size": 512,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4, "tie_word_embeddings": False,
    "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
}
RANK = 16
# one key/value head of 64: the k/v projections' lora_B (64 x 16 = 1,024 elements) keep 32-bit state,
# their lora_A (16 x 256 = 4,096) is 8-bit; the tied embedding is the head, registered 32-bit once
GQA_CONFIG = {**CONFIG, "num_key_value_heads": 1, "tie_word_embeddings": True}
SCALARS = ("step", "RMS")  # 0-dim per-parameter tensors, see the module docstring
PRECISIONS = ["fp32", "bf16", "bf16-mixed"]
EIGHT_BIT = ("adamw-8bit", "paged-adamw-8bit", "lion-8bit", "paged-lion-8bit")
BITSANDBYTES = (*EIGHT_BIT, "paged-adamw", "lion", "paged-lion")
# every optimizer the Trainer builds from torch, transformers and bitsandbytes; those with their own packages
# (torchao, galore-torch, apollo-torch, adam-mini, lomo-optim): tests/planner/test_optimizer_packages_truth.py
RUNNABLE = tuple(TRAINER_OPTIM)

def _cases():
    for optimizer in RUNNABLE:
        for method in ("full", "lora"):
            for precision in PRECISIONS:
                marks = [] if (method, precision) in (("full", "bf16-mixed"), ("lora", "bf16")) else [pytest.mark.slow]
                yield pytest.param(optimizer, method, precision, marks=marks, id=f"{optimizer}-{method}-{precision}")


@pytest.fixture(autouse=True)
def _fresh_bitsandbytes_overrides():
    reset_bitsandbytes_overrides()
    yield
    reset_bitsandbytes_overrides()


def _real_step(optimizer: str, method: str, precision: str, tmp_path, config: dict = CONFIG):
    if optimizer in BITSANDBYTES:
        pytest.importorskip("bitsandbytes")
    model = build_model(config, method=method, precision=precision, lora_rank=RANK, lora_target="all")
    optim = trainer_optimizer(model, optimizer, tmp_path)
    try:
        step_once(model, optim, config["vocab_size"])
    except (NotImplementedError, RuntimeError) as exc:  # a bitsandbytes build without CPU kernels
        if optimizer in BITSANDBYTES:
            pytest.skip(f"{optimizer} does not run on CPU with this bitsandbytes: {exc}")
        raise
    return model, optim


def _planner_bytes(optimizer: str, method: str, precision: str, config: dict = CONFIG) -> int:
    spec = spec_from_config(config, source="test")
    plan = Plan(method=method, precision=precision, optimizer=optimizer, lora_rank=RANK, lora_target="all")
    return optimizer_state_bytes(layout(spec, count_params(spec), plan), plan, spec)


@pytest.mark.parametrize(("optimizer", "method", "precision"), list(_cases()))
def test_optimizer_state_matches_one_real_step(optimizer: str, method: str, precision: str, tmp_path) -> None:
    _, optim = _real_step(optimizer, method, precision, tmp_path)
    state = optimizer_state_tensors(optim)
    real = sum(tensor_bytes(ts) for key, ts in state.items() if key not in SCALARS)
    ours = _planner_bytes(optimizer, method, precision)
    by_key = {key: tensor_bytes(ts) for key, ts in state.items()}
    assert ours == real, f"ours {ours:,} vs real {real:,} ({by_key})"


@pytest.mark.parametrize("optimizer", EIGHT_BIT)
@pytest.mark.parametrize("method", ["full", "lora"])
def test_8bit_small_tensors_and_tied_embedding_keep_32bit_state(optimizer: str, method: str, tmp_path) -> None:
    """Under bitsandbytes' min_8bit_size: GQA's LoRA B of k/v (1,024 elements); the tied embedding-head is 32-bit."""
    _, optim = _real_step(optimizer, method, "bf16", tmp_path, GQA_CONFIG)
    state = optimizer_state_tensors(optim)
    real = sum(tensor_bytes(ts) for key, ts in state.items() if key not in SCALARS)
    fp32_state1 = [t.numel() for t in state["state1"] if t.dtype.is_floating_point]
    assert (1_024 in fp32_state1) == (method == "lora") and (512 * 256 in fp32_state1) == (method == "full")
    assert _planner_bytes(optimizer, method, "bf16", GQA_CONFIG) == real


def test_trainer_builds_the_optimizers_ftplan_names(tmp_path) -> None:
    """The truth really is the implementation named: fused AdamW is fused, momentum is set, 8-bit is 8-bit."""
    fused = trainer_optimizer(build_model(CONFIG, method="lora", lora_rank=RANK), "adamw-fused", tmp_path)
    assert all(group["fused"] for group in fused.param_groups)
    momentum = trainer_optimizer(build_model(CONFIG, method="lora", lora_rank=RANK), "sgd-momentum", tmp_path)
    assert all(group["momentum"] == 0.9 for group in momentum.param_groups)
    plain = trainer_optimizer(build_model(CONFIG, method="lora", lora_rank=RANK), "sgd", tmp_path)
    assert all(group["momentum"] == 0 for group in plain.param_groups)
    pytest.importorskip("bitsandbytes")
    for name in BITSANDBYTES:
        _, optim = _real_step(name, "lora", "bf16", tmp_path)
        bits = 8 if name in EIGHT_BIT else 32
        state = optimizer_state_tensors(optim)
        assert {str(t.dtype) for t in state["state1"]} == {"torch.uint8" if bits == 8 else "torch.float32"}
        assert optim.args.optim_bits == bits and optim.is_paged == name.startswith("paged")
        assert ("state2" in state) == ("adamw" in name) and type(optim).__name__ == ("Lion" if "lion" in name
                                                                                    else "AdamW")


@pytest.mark.parametrize("optimizer", ["adamw", "adamw-fused", "adafactor"])
def test_left_out_scalars_are_one_per_tensor(optimizer: str, tmp_path) -> None:
    """What the comparison leaves out is one 4-byte 0-dim tensor per trainable parameter tensor, nothing more."""
    model, optim = _real_step(optimizer, "full", "bf16-mixed", tmp_path)
    scalars = [t for key, ts in optimizer_state_tensors(optim).items() if key in SCALARS for t in ts]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert all(t.dim() == 0 and t.element_size() == 4 for t in scalars)
    assert len(scalars) == len(trainable)
