"""The compute dtype apart from the weights (issue 11): pure fp16, and QLoRA's base / bnb_4bit_compute_dtype.

Truth: bitsandbytes-quantized transformers models on CPU (tests/planner/truth.py `build_model`): the bytes of
every parameter by dtype, and the storages autograd saves (`measure_saved_bytes`)."""

from __future__ import annotations

import os

import pytest

from planner.memory import estimate_memory
from planner.methods import layout
from planner.params import count_params
from planner.plan import Plan
from planner.spec import spec_from_config
from planner.target import Machine
from tests.planner.configs import random_config
from tests.planner.truth import build_model, measure_saved_bytes

os.environ.setdefault("HF_HUB_OFFLINE", "1")
CPU = Machine(device="cpu")
TOLERANCE = 0.10  # test_activation_truth's
NAMES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def _weights_by_dtype(model) -> dict[str, int]:
    """Bytes of the non-quantized parameters, by dtype (bitsandbytes' packed Params4bit, stored in
    bnb_4bit_quant_storage's dtype, left out)."""
    out: dict[str, int] = {}
    for p in model.parameters():
        name = NAMES.get(str(p.dtype).removeprefix("torch."))
        if name and type(p).__name__ != "Params4bit":
            out[name] = out.get(name, 0) + p.numel() * p.element_size()
    return out


def _planned_by_dtype(spec, plan) -> dict[str, int]:
    out: dict[str, int] = {}
    for g in layout(spec, count_params(spec), plan).groups:
        if g.dtype in ("fp32", "bf16", "fp16"):
            out[g.dtype] = out.get(g.dtype, 0) + g.nbytes
    return out


# (precision, weights_dtype, autocast of the truth run): TRL's QLoRA with the default float32 `dtype` under bf16
# autocast; fp16 weights and fp16 compute under fp16 autocast (the T4 notebooks); pure fp16 with no autocast
CASES = [("bf16-mixed", "fp32", "bf16"), ("fp16-mixed", None, "fp16"), ("fp16", None, None)]


@pytest.mark.parametrize(("precision", "weights_dtype", "autocast"), CASES)
def test_qlora_weights_and_activations_follow_the_compute_dtype(tmp_path, precision, weights_dtype,
                                                                autocast) -> None:
    config = random_config("llama", 0, layers=2)
    spec = spec_from_config(config, source="test")
    plan = Plan(method="qlora", precision=precision, weights_dtype=weights_dtype, batch_size=2, seq_len=24,
                lora_rank=4, lora_target="all-linear")
    model = build_model(config, method="qlora", precision=precision, weights_dtype=weights_dtype, lora_rank=4,
                        lora_target="all-linear", tmp_dir=tmp_path)
    assert _planned_by_dtype(spec, plan) == _weights_by_dtype(model)
    real = measure_saved_bytes(model, 2, 24, config["vocab_size"], autocast=autocast)
    est = estimate_memory(spec, plan, machine=CPU)
    ours = est.largest["activations"] + est.largest["logits"]
    assert abs(ours - real) / real <= TOLERANCE, (ours, real)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_pure_fp16_weights_and_activations(method) -> None:
    config = random_config("llama", 0, layers=2)
    spec = spec_from_config(config, source="test")
    plan = Plan(method=method, precision="fp16", batch_size=2, seq_len=24, lora_rank=4, lora_target="all-linear")
    model = build_model(config, method=method, precision="fp16", lora_rank=4, lora_target="all-linear")
    assert _planned_by_dtype(spec, plan) == _weights_by_dtype(model)
    real = measure_saved_bytes(model, 2, 24, config["vocab_size"])
    est = estimate_memory(spec, plan, machine=CPU)
    assert abs(est.largest["activations"] + est.largest["logits"] - real) / real <= TOLERANCE


def test_full_fine_tune_refuses_a_separate_base_dtype() -> None:
    from planner.errors import FtplanError

    with pytest.raises(FtplanError, match="full fine-tune"):
        Plan.build(method="full", weights_dtype="fp32")
