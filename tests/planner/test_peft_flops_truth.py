"""Training FLOPs per token of the PEFT methods beyond LoRA against `FlopCounterMode` on real CPU models built with
peft (Houlsby adapters: tests/planner/truth.py's construction from the paper), as test_flops_truth does for full,
freeze and LoRA: prefix lengthens every layer's keys, prompt and P-tuning the sequence itself, OFT adds its
rotations, DoRA the B·A product of its weight norm, adapters their bottlenecks; every layer runs backward.

TOLERANCE = 5%: the planner does not take out what the first layer's backward skips for these methods (its input
carries no gradient: LoRA's saving, planner.flops._first_layer_saving, does not carry over as is), so it
over-counts by up to one of the four layers' input gradients; nothing else separates the counts."""

from __future__ import annotations

import pytest

from planner.flops import training_flops_per_token
from planner.methods import layout
from planner.params import count_params
from planner.plan import Plan
from planner.spec import spec_from_config
from tests.planner.test_flops_truth import CONFIGS
from tests.planner.truth import build_peft_method_model
from tests.planner.truth_training import training_flops

TOLERANCE = 0.05
BATCH, SEQ = 1, 128
CASES = [
    ("prefix", {"num_virtual_tokens": 7}),
    ("prompt", {"num_virtual_tokens": 5}),
    ("ptuning", {"num_virtual_tokens": 5, "encoder_hidden_size": 16}),
    ("ia3", {}),
    ("oft", {"lora_target": "all-linear", "oft_block_size": 32}),
    ("lora", {"lora_target": "all-linear", "lora_rank": 4, "use_dora": True}),
    ("adapter", {"adapter_reduction": 4}),
]


@pytest.mark.parametrize(("method", "kw"), CASES, ids=[m if m != "lora" else "dora" for m, _ in CASES])
def test_peft_method_flops_match_flop_counter(method: str, kw: dict) -> None:
    config = CONFIGS["llama"]
    spec = spec_from_config(config, source="test")
    counts = count_params(spec)
    plan = Plan(method=method, precision="fp32", attention="eager", batch_size=BATCH, seq_len=SEQ, **kw)
    ours = training_flops_per_token(spec, counts, layout(spec, counts, plan), plan)
    model = build_peft_method_model(config, method, kw, precision="fp32", kernel="eager")
    forward, backward, _ = training_flops(model, BATCH, SEQ, config["vocab_size"])
    real = (forward + backward) / (BATCH * SEQ)  # per token of text, virtual tokens included in the cost
    assert abs(ours - real) / real <= TOLERANCE, f"ours {ours:,.0f} vs real {real:,.0f} ({(ours - real) / real:+.2%})"
