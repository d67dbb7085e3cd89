"""Optimizer state against the real packages: torchao, galore-torch, apollo-torch, adam-mini, lomo-optim.

Each optimizer is built as a framework builds it (tests/planner/truth_optimizers.py: the HF Trainer's
`create_optimizer` for the `optim` name, LLaMA-Factory's call for Adam-mini), stepped twice on CPU, and every
storage it keeps is counted once: `optimizer.state` (torchao's quantized subclasses by their inner tensors,
GaLore's/APOLLO's projector by its `ortho_matrix`), each per-parameter optimizer of a layer-wise one, and
tensors kept as attributes (AdaLomo's state dicts). ftplan's `optimizer_state_bytes` must equal it.

Left out, by key, as in tests/planner/test_optimizer_truth.py: the 0-dim per-parameter scalars the planner does
not model (`step`: torchao's fp32 step counter; `scaled_grad`: APOLLO's norm-growth limiter; `RMS`).
Adam-mini's 0-dim `vmean` of a norm is state the planner counts, so it stays in.
"""

from __future__ import annotations

import pytest

from planner.memory import optimizer_state_bytes
from planner.methods import layout
from planner.params import count_params
from planner.plan import Plan
from planner.spec import spec_from_config
from tests.planner.truth import build_model
from tests.planner.truth_optimizers import adam_mini_optimizer, cpu_only, kept_storages, optimizers_of, step
from tests.planner.truth_optimizers import trainer_optimizer as build

# GQA (2 kv heads) so Adam-mini's per-head rule differs between q and k; 256 x 512 MLP matrices are taller
# than wide one way and wider than tall the other, so GaLore/APOLLO project on both sides
CONFIG = {
    "model_type": "llama", "vocab_size": 512, "hidden_size": 256, "intermediate_size": 512,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": False,
    "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
}
RANK = 16
SCALARS = ("step", "scaled_grad", "RMS")
PACKAGE = {"adamw_torch": "torchao", "galore": "galore_torch", "apollo": "apollo_torch", "lomo": "lomo_optim",
           "adalomo": "lomo_optim", "adam-mini": "adam_mini"}


def _package(optim: str) -> None:
    pytest.importorskip(next(v for k, v in PACKAGE.items() if optim.startswith(k)))


def _ours(optimizer: str, method: str, precision: str, **extra) -> int:
    spec = spec_from_config(CONFIG, source="test")
    plan = Plan(method=method, precision=precision, optimizer=optimizer, lora_rank=RANK, lora_target="all",
                **extra)
    return optimizer_state_bytes(layout(spec, count_params(spec), plan), plan, spec)


def _real(optim: str, method: str, precision: str, tmp_path, optim_args: str | None = None, freeze: int = 2):
    """The optimizer after two real steps, and the bytes it keeps by key."""
    _package(optim)
    model = build_model(CONFIG, method=method, precision=precision, lora_rank=RANK, lora_target="all",
                        freeze_trainable_layers=freeze)
    with cpu_only():
        optimizer = adam_mini_optimizer(model) if optim == "adam-mini" else build(model, optim, tmp_path, optim_args)
        step(model, optimizer, CONFIG["vocab_size"])
    return optimizer, kept_storages(optimizer)


LOW_RANK = f"rank={RANK},update_proj_gap=1"  # a new projection every step: the old one must not stay alive
CASES = [
    # (ftplan optimizer, Trainer optim, optim_args, method, precision, Plan extras, slow)
    ("adamw-torch-8bit", "adamw_torch_8bit", None, "full", "bf16-mixed", {}, False),
    ("adamw-torch-4bit", "adamw_torch_4bit", None, "full", "bf16", {}, False),
    ("adamw-torch-8bit", "adamw_torch_8bit", None, "lora", "bf16", {}, True),
    ("galore-adamw-8bit", "galore_adamw_8bit", LOW_RANK, "full", "bf16", {}, False),
    ("galore-adamw-8bit", "galore_adamw_8bit", LOW_RANK, "lora", "bf16", {}, True),
    ("galore-adafactor", "galore_adafactor", LOW_RANK, "full", "bf16", {}, False),
    ("galore-adafactor", "galore_adafactor", LOW_RANK, "full", "bf16-mixed", {}, True),
    ("galore-adamw", "galore_adamw_layerwise", LOW_RANK, "full", "bf16-mixed", {"optimizer_in_backward": True},
     False),
    ("apollo-adamw", "apollo_adamw", LOW_RANK, "full", "bf16-mixed", {}, False),
    ("apollo-adamw", "apollo_adamw_layerwise", LOW_RANK, "full", "bf16", {"optimizer_in_backward": True}, False),
    ("apollo-adamw", "apollo_adamw", LOW_RANK, "lora", "bf16", {}, True),
    ("lomo", "lomo", None, "full", "bf16", {}, False),
    ("adalomo", "adalomo", None, "full", "bf16", {}, False),
    ("adalomo", "adalomo", None, "lora", "bf16", {}, False),
    ("adam-mini", "adam-mini", None, "full", "bf16", {}, False),
    ("adam-mini", "adam-mini", None, "full", "bf16-mixed", {}, True),
]


def _params():
    for opt, optim, args, method, precision, extra, slow in CASES:
        yield pytest.param(opt, optim, args, method, precision, extra, marks=[pytest.mark.slow] if slow else [],
                           id=f"{optim}-{method}-{precision}")


@pytest.mark.parametrize(("optimizer", "optim", "optim_args", "method", "precision", "extra"), list(_params()))
def test_state_matches_the_real_optimizer(optimizer, optim, optim_args, method, precision, extra, tmp_path):
    _, kept = _real(optim, method, precision, tmp_path, optim_args)
    real = sum(n for key, n in kept.items() if key not in SCALARS)
    ours = _ours(optimizer, method, precision, projection_rank=RANK, **extra)
    assert ours == real, f"ours {ours:,} vs real {real:,} ({kept})"


def test_adam_mini_under_freeze_tuning(tmp_path) -> None:
    """Only the trainable layer's parameters get state (Adam-mini skips `requires_grad=False`)."""
    _, kept = _real("adam-mini", "freeze", "bf16", tmp_path, freeze=1)
    assert _ours("adam-mini", "freeze", "bf16", freeze_trainable_layers=1) == sum(kept.values())


def test_the_truth_is_the_implementation_named(tmp_path) -> None:
    """Layer-wise really is one optimizer per parameter; torchao's state really is quantized; AdaLomo's state
    covers frozen weights (LoRA's base) too, which is why the planner counts them."""
    layerwise, _ = _real("apollo_adamw_layerwise", "full", "bf16", tmp_path, LOW_RANK)
    inner = optimizers_of(layerwise)
    assert len(inner) == sum(1 for _ in build_model(CONFIG).parameters()) and type(inner[0]).__name__ == "AdamW"
    torchao, _ = _real("adamw_torch_4bit", "full", "bf16", tmp_path)
    kinds = {type(s["exp_avg"]).__name__ for s in torchao.state.values()}
    assert kinds == {"OptimState4bit", "Tensor"}  # norms (256 values, under 4096) stay plain
    _, lora = _real("adalomo", "lora", "bf16", tmp_path)
    _, full = _real("adalomo", "full", "bf16", tmp_path)
    assert lora["exp_avg_sq_row"] > full["exp_avg_sq_row"]
