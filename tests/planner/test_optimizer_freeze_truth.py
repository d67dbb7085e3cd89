"""Optimizer state under freeze tuning against one real optimizer step: only the trained layers keep state.

Adafactor's factored state is counted once per group of identical decoder layers (planner.optimizers), so the
case that matters is a group only some of whose layers train: the last 2 of 3 here, as LLaMA-Factory's
`freeze_trainable_layers: 2` picks them. The truth is the optimizer the Trainer builds (tests/planner/
truth_training.py), stepped once on the model tests/planner/truth.py freezes.
"""

from __future__ import annotations

import pytest

from planner.memory import optimizer_state_bytes
from planner.methods import layout
from planner.params import count_params
from planner.plan import Plan
from planner.spec import spec_from_config
from tests.planner.truth import build_model
from tests.planner.truth_training import optimizer_state_tensors, step_once, tensor_bytes, trainer_optimizer

CONFIG = {
    "model_type": "llama", "vocab_size": 256, "hidden_size": 128, "intermediate_size": 256,
    "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": False,
    "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
}
SCALARS = ("step", "RMS")  # one 0-dim fp32 tensor per parameter, left out as in test_optimizer_truth.py
TRAINED = 2


@pytest.mark.parametrize("optimizer", ["adafactor", "adamw", "sgd-momentum"])
def test_freeze_state_matches_one_real_step(optimizer: str, tmp_path) -> None:
    model = build_model(CONFIG, method="freeze", precision="bf16", freeze_trainable_layers=TRAINED)
    optim = trainer_optimizer(model, optimizer, tmp_path)
    step_once(model, optim, CONFIG["vocab_size"])
    real = sum(tensor_bytes(ts) for key, ts in optimizer_state_tensors(optim).items() if key not in SCALARS)

    spec = spec_from_config(CONFIG, source="test")
    plan = Plan(method="freeze", precision="bf16", optimizer=optimizer, freeze_trainable_layers=TRAINED)
    ours = optimizer_state_bytes(layout(spec, count_params(spec), plan), plan, spec)
    assert ours == real, f"ours {ours:,} vs real {real:,}"
