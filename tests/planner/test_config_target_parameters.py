"""The readers' lora_target_parameters, which axolotl (loaders/adapter.py) and TRL (ModelConfig, get_peft_config)
hand to peft as target_parameters, on configs written here (pure Python, no torch)."""

from __future__ import annotations

import pytest
import yaml

from planner.configs import fix_config, read_run_config
from planner.configs.fix import config_changes_for
from planner.errors import FtplanError

MOE = {"base_model": "Qwen/Qwen3-30B-A3B", "learning_rate": 2e-4, "adapter": "lora", "lora_r": 16,
       "lora_dropout": 0, "datasets": [{"path": "tatsu-lab/alpaca", "type": "alpaca"}]}
EXPERTS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]


def read(tmp_path, **keys):
    path = tmp_path / "axolotl.yaml"
    path.write_text(yaml.safe_dump({**MOE, **keys}, sort_keys=False))
    return read_run_config(path)


def test_experts_are_planned_not_warned(tmp_path) -> None:
    run = read(tmp_path, lora_target_modules=["q_proj", "v_proj"], lora_target_parameters=EXPERTS)
    assert run.plan.lora_target == "q_proj,v_proj"
    assert run.plan.lora_target_parameters == "mlp.experts.down_proj,mlp.experts.gate_up_proj"
    assert not [w for w in run.warnings if "lora_target_parameters" in w.data["keys"]]


def test_parameters_alone_target_no_module(tmp_path) -> None:
    """adapter.py: `target_modules=cfg.lora_target_modules or []`, so the parameters are the only targets."""
    run = read(tmp_path, lora_target_parameters=["experts.gate_up_proj", "experts.down_proj", "mlp.gate.weight"])
    assert run.plan.lora_target == ""
    assert run.plan.lora_target_parameters == "experts.down_proj,experts.gate_up_proj,mlp.gate.weight"


def test_other_parameters_stay_a_warning(tmp_path) -> None:
    run = read(tmp_path, lora_target_modules=["q_proj"], lora_target_parameters=[*EXPERTS, "mlp.experts.bias"])
    assert run.plan.lora_target_parameters == "mlp.experts.down_proj,mlp.experts.gate_up_proj"
    found = [w for w in run.warnings if w.data["keys"] == ["lora_target_parameters"]]
    assert [(w.code, w.data["direction"]) for w in found] == [("not_modelled", "understates")]
    assert "mlp.experts.bias" in found[0].message


def test_without_an_adapter_the_key_does_nothing(tmp_path) -> None:
    run = read(tmp_path, adapter=None, lora_target_parameters=EXPERTS)
    assert run.plan.method == "full" and run.plan.lora_target_parameters == ""


def test_bad_type_names_the_key(tmp_path) -> None:
    with pytest.raises(FtplanError, match="lora_target_parameters"):
        read(tmp_path, lora_target_parameters=3)


def test_fix_writes_a_list(tmp_path) -> None:
    path = tmp_path / "axolotl.yaml"
    path.write_text(yaml.safe_dump({**MOE, "lora_target_modules": ["q_proj"]}, sort_keys=False))
    changes = config_changes_for("axolotl", {"lora_target_parameters": "mlp.experts.down_proj,mlp.experts.gate_up_proj"})
    written = yaml.safe_load(fix_config(path, changes, tmp_path / "fixed.yaml").read_text())
    assert written["lora_target_parameters"] == ["mlp.experts.down_proj", "mlp.experts.gate_up_proj"]
    assert read_run_config(tmp_path / "fixed.yaml").plan.lora_target_parameters == \
        "mlp.experts.down_proj,mlp.experts.gate_up_proj"


TRL = {"model_name_or_path": "Qwen/Qwen3-30B-A3B", "use_peft": True, "dtype": "bfloat16", "max_length": 512}


def read_trl(tmp_path, **keys):
    path = tmp_path / "trl.yaml"
    path.write_text(yaml.safe_dump({**TRL, **keys}, sort_keys=False))
    return read_run_config(path)


def test_trl_experts_are_planned(tmp_path) -> None:
    run = read_trl(tmp_path, lora_dropout=0.0, lora_target_parameters=EXPERTS)
    assert run.format == "hf" and run.plan.lora_target_parameters == "mlp.experts.down_proj,mlp.experts.gate_up_proj"
    assert run.plan.lora_target == "q_proj,v_proj"  # model_config.py's lora_target_modules default
    assert run.treatment["lora_target_parameters"] == "modelled" and not run.warnings


def test_trl_default_dropout_is_refused(tmp_path) -> None:
    """peft's ParamWrapper raises on lora_dropout != 0; TRL's ModelConfig defaults to 0.05."""
    with pytest.raises(FtplanError, match="lora_dropout: 0"):
        read_trl(tmp_path, lora_target_parameters=EXPERTS)


def test_trl_other_parameters_stay_a_warning(tmp_path) -> None:
    run = read_trl(tmp_path, lora_dropout=0.0, lora_target_parameters="experts.bias")
    assert run.plan.lora_target_parameters == "" and run.treatment["lora_target_parameters"] == "warned"
