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
from planner.plan import OPTIMIZERS, Plan
from planner.spec import spec_from_config
from tests.planner.truth import build_model
from tests.planner.truth_training import (
    optimizer_state_tensors,
    reset_bitsandbytes_overrides,
    step_once,
    tensor_bytes,
    trainer_optimizer,
)

# Every matrix, LoRA A/B included (rank 16 x 256), has at least bitsandbytes' min_8bit_size (4096)
# elements, so only norms stay in 32-bit state: the planner's documented rule is what is tested.
CONFIG = {
    "model_type": "llama", "vocab_size": 512, "hidden_size": 256, "intermediate_size": 512,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4, "tie_word_embeddings": False,
    "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
}
RANK = 16
SCALARS = ("step", "RMS")  # 0-dim per-parameter tensors, see the module docstring
PRECISIONS = ["fp32", "bf16", "bf16-mixed"]
EIGHT_BIT = ("adamw-8bit", "paged-adamw-8bit")

# Measured discrepancies (the planner is not changed here; see the numbers in each reason).
ABSMAX = ("bitsandbytes 0.50 keeps one fp32 absmax per 256-element block of each tensor (Optimizer2State."
          "init_state: blocksize = 256), the planner one per 2048: +{} B")
EMBEDDING = ("the HF Trainer registers every nn.Embedding with bitsandbytes as optim_bits=32 "
             "(Trainer.create_optimizer), so embeddings keep 8 bytes of state per parameter, not 2")
ADAFACTOR_FP32 = ("transformers' Adafactor up-casts bf16 gradients and allocates its factored state "
                  "`.to(grad)` in fp32; the planner sizes it in bf16 for pure bf16 weights (half)")


def _known(optimizer: str, method: str, precision: str) -> str | None:
    if optimizer in EIGHT_BIT:
        if method == "full":  # embedding +786,432 (131,072 params x 6), absmax +38,912, quantile maps +2,048
            return f"{EMBEDDING}; {ABSMAX.format('38,912')}: ours 3,162,112 vs real 3,989,504"
        return f"{ABSMAX.format('3,808')}, and 2,048 B of quantile maps: ours 279,072 vs real 284,928"
    if optimizer == "adafactor" and method == "full" and precision == "bf16":
        return f"{ADAFACTOR_FP32}: ours 23,040 vs real 46,080"  # LoRA adapters are fp32 anyway: exact
    return None


def _cases():
    for optimizer in OPTIMIZERS:
        for method in ("full", "lora"):
            for precision in PRECISIONS:
                marks = [] if (method, precision) in (("full", "bf16-mixed"), ("lora", "bf16")) else [pytest.mark.slow]
                reason = _known(optimizer, method, precision)
                if reason:
                    marks.append(pytest.mark.xfail(strict=True, reason=reason))
                yield pytest.param(optimizer, method, precision, marks=marks, id=f"{optimizer}-{method}-{precision}")


@pytest.fixture(autouse=True)
def _fresh_bitsandbytes_overrides():
    reset_bitsandbytes_overrides()
    yield
    reset_bitsandbytes_overrides()


def _real_step(optimizer: str, method: str, precision: str, tmp_path):
    if optimizer in EIGHT_BIT:
        pytest.importorskip("bitsandbytes")
    model = build_model(CONFIG, method=method, precision=precision, lora_rank=RANK, lora_target="all")
    optim = trainer_optimizer(model, optimizer, tmp_path)
    try:
        step_once(model, optim, CONFIG["vocab_size"])
    except (NotImplementedError, RuntimeError) as exc:  # a bitsandbytes build without CPU kernels
        if optimizer in EIGHT_BIT:
            pytest.skip(f"{optimizer} does not run on CPU with this bitsandbytes: {exc}")
        raise
    return model, optim


def _planner_bytes(optimizer: str, method: str, precision: str) -> int:
    spec = spec_from_config(CONFIG, source="test")
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


def test_trainer_builds_the_optimizers_ftplan_names(tmp_path) -> None:
    """The truth really is the implementation named: fused AdamW is fused, momentum is set, 8-bit is 8-bit."""
    fused = trainer_optimizer(build_model(CONFIG, method="lora", lora_rank=RANK), "adamw-fused", tmp_path)
    assert all(group["fused"] for group in fused.param_groups)
    momentum = trainer_optimizer(build_model(CONFIG, method="lora", lora_rank=RANK), "sgd-momentum", tmp_path)
    assert all(group["momentum"] == 0.9 for group in momentum.param_groups)
    plain = trainer_optimizer(build_model(CONFIG, method="lora", lora_rank=RANK), "sgd", tmp_path)
    assert all(group["momentum"] == 0 for group in plain.param_groups)
    pytest.importorskip("bitsandbytes")
    for name in EIGHT_BIT:
        _, optim = _real_step(name, "lora", "bf16", tmp_path)
        assert {str(t.dtype) for t in optimizer_state_tensors(optim)["state1"]} == {"torch.uint8"}
        assert optim.args.optim_bits == 8 and optim.is_paged == name.startswith("paged")


@pytest.mark.parametrize("optimizer", ["adamw", "adamw-fused", "adafactor"])
def test_left_out_scalars_are_one_per_tensor(optimizer: str, tmp_path) -> None:
    """What the comparison leaves out is one 4-byte 0-dim tensor per trainable parameter tensor, nothing more."""
    model, optim = _real_step(optimizer, "full", "bf16-mixed", tmp_path)
    scalars = [t for key, ts in optimizer_state_tensors(optim).items() if key in SCALARS for t in ts]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert all(t.dim() == 0 and t.element_size() == 4 for t in scalars)
    assert len(scalars) == len(trainable)
