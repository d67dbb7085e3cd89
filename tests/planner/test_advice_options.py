"""Suggestions that use the newer options: 8-bit AdamW, Liger's fused cross-entropy, activation offloading.

Each suggestion's saving must be the difference of two `planner.estimate()` calls (the plan as asked and the
plan with the suggested flags), its title must quote that saving (or, for offloading, the bytes the changed
estimate reports in host memory), and it must appear only where it applies.
"""

from __future__ import annotations

import pytest

import planner
from planner.units import fmt_gib

FULL_8B = dict(method="full", precision="bf16-mixed", seq_len=2048, batch_size=2, gpu_memory="40GiB")
# a 128k vocabulary at 4 x 4096 tokens: the fp32 logits dominate a LoRA run of a 1B model
LORA_1B = dict(method="lora", seq_len=4096, batch_size=4, gpu_memory="8GiB")
QLORA_7B = dict(method="qlora", seq_len=4096, batch_size=4, gpu_memory="6GiB")


def _run(model: str, **settings):
    return planner.estimate(model, **settings)


def _find(estimate, changes: dict):
    return next((s for s in estimate.suggestions if s.changes == changes), None)


def _checked(model: str, settings: dict, changes: dict):
    """The suggestion for `changes`, after checking its numbers against a second estimate with them applied."""
    before, after = _run(model, **settings), _run(model, **settings, **changes)
    found = _find(before, changes)
    assert found is not None, [s.title for s in before.suggestions]
    assert found.saved == before.memory.total - after.memory.total > 0
    assert found.new_total == after.memory.total
    flags = " ".join(f"--{k.replace('_', '-')}" for k in changes)
    assert all(flag in found.how for flag in flags.split()), found.how
    return found, before, after


def test_8bit_adamw_for_full_tuning() -> None:
    found, _, _ = _checked("llama-3.1-8b", FULL_8B, {"optimizer": "adamw-8bit"})
    assert found.title == f"8-bit AdamW saves {fmt_gib(found.saved)}"


def test_no_8bit_adamw_when_the_optimizer_state_is_tiny() -> None:
    """QLoRA's adapters are ~0.6% of a 7B model: the 8-bit state would save a sliver of the total."""
    before = _run("pythia-6.9b", **QLORA_7B)
    after = _run("pythia-6.9b", **QLORA_7B, optimizer="adamw-8bit")
    assert 0 <= before.memory.total - after.memory.total < 0.05 * before.memory.total
    assert _find(before, {"optimizer": "adamw-8bit"}) is None


def test_no_8bit_adamw_for_another_optimizer() -> None:
    assert _find(_run("llama-3.1-8b", **FULL_8B, optimizer="adafactor"), {"optimizer": "adamw-8bit"}) is None


def test_liger_fused_cross_entropy_where_liger_patches_the_family() -> None:
    found, _, _ = _checked("llama-3.2-1b", LORA_1B, {"fused_loss": True})
    assert found.title == f"Liger's fused cross-entropy saves {fmt_gib(found.saved)}"


def test_no_liger_for_a_family_liger_does_not_patch() -> None:
    """gpt_neox (Pythia) is not in Liger's MODEL_TYPE_TO_APPLY_LIGER_FN (liger_kernel/transformers/
    monkey_patch.py): the fused loss would save memory, but Liger would not apply it."""
    before = _run("pythia-6.9b", **QLORA_7B)
    assert _run("pythia-6.9b", **QLORA_7B, fused_loss=True).memory.total < before.memory.total
    assert _find(before, {"fused_loss": True}) is None


# long rows with the logits fused away: what the checkpointed layers keep dominates
LORA_7B_LONG = dict(method="lora", seq_len=8192, batch_size=8, fused_loss=True, gpu_memory="24GiB")


@pytest.mark.parametrize(("model", "settings"), [("pythia-6.9b", QLORA_7B), ("7b", LORA_7B_LONG)])
def test_activation_offloading_says_what_moves_to_host(model: str, settings: dict) -> None:
    settings = {**settings, "gradient_checkpointing": True}
    found, _, after = _checked(model, settings, {"activation_offload": "saved"})
    moved = after.memory.host_activations
    assert moved > 0 and found.title == f"Activation offloading moves {fmt_gib(moved)} to host memory"
    assert f"needs {fmt_gib(moved)} of host RAM" in found.reason


def test_no_offloading_suggestion_when_already_offloaded_or_not_worth_it() -> None:
    assert _find(_run("pythia-6.9b", **QLORA_7B, activation_offload="saved"),
                 {"activation_offload": "saved"}) is None
    # without checkpointing, checkpointing is the cheaper change (no host RAM, no PCIe traffic) and comes first
    plain = _run("pythia-6.9b", **QLORA_7B)
    assert _find(plain, {"gradient_checkpointing": True}) is not None
    assert _find(plain, {"activation_offload": "saved"}) is None
    # full tuning of an 8B model peaks in the optimizer step, where no activation is alive
    full = _run("llama-3.1-8b", **FULL_8B)
    offloaded = _run("llama-3.1-8b", **FULL_8B, activation_offload="saved")
    assert full.memory.total - offloaded.memory.total < 0.05 * full.memory.total
    assert _find(full, {"activation_offload": "saved"}) is None
