"""Exports of a plan with LoRA on MoE parameters: axolotl and TRL write lora_target_parameters and read back to the
plan; LLaMA-Factory, which has no such key, says so in the file."""

from __future__ import annotations

import pytest

from planner.configs import read_run_config, write_export
from planner.plan import Plan
from planner.spec import load_spec

MODEL = "qwen3-30b-a3b"
EXPERTS = "mlp.experts.down_proj,mlp.experts.gate_up_proj"


@pytest.mark.parametrize("targets", ["q_proj,v_proj", "all"])
@pytest.mark.parametrize("fmt", ["axolotl", "trl"])
def test_exports_read_back_with_the_parameters(tmp_path, fmt, targets) -> None:
    plan = Plan.build(method="lora", lora_target=targets, lora_target_parameters=EXPERTS, seq_len=512)
    exported = write_export(fmt, MODEL, plan, tmp_path / "train.yaml", spec=load_spec(MODEL))
    assert "lora_target_parameters" in exported.text
    run = read_run_config(exported.path)
    assert run.plan.lora_target_parameters == EXPERTS
    assert run.plan.with_(gpus=1) == exported.plan


def test_llamafactory_export_says_it_cannot_follow(tmp_path) -> None:
    plan = Plan.build(method="lora", lora_target="q_proj,v_proj", lora_target_parameters=EXPERTS, seq_len=512)
    exported = write_export("llamafactory", MODEL, plan, tmp_path / "train.yaml", spec=load_spec(MODEL))
    assert exported.plan.lora_target_parameters == ""
    assert any("target_parameters" in note for note in exported.notes)
