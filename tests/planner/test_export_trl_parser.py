"""TRL's own parser reads ftplan's TRL exports as `trl <command> --config FILE` does (trl/cli/commands/training.py):
every key lands in a TRL dataclass except the launcher's, which accelerate's own parser takes. (LLaMA-Factory's
get_train_args and axolotl's config validation are not installed here; their exports are checked by ftplan's
readers in test_export.py.)"""

from __future__ import annotations

import importlib
import json
import shlex

import pytest

from planner.configs import write_export
from planner.plan import Plan
from planner.spec import load_spec

pytest.importorskip("trl")

MODEL = "8b"


@pytest.fixture(autouse=True)
def bf16_as_on_a_gpu(monkeypatch):
    """TrainingArguments refuse bf16 on a machine without a bf16 GPU; the parse is otherwise TRL's own."""
    import transformers.training_args as training_args

    monkeypatch.setattr(training_args, "is_torch_bf16_gpu_available", lambda: True)


def parse(path, launch: str):
    """What `trl <command> --config path` parses: TRL's dataclasses, and the arguments it hands accelerate."""
    from accelerate.commands.launch import launch_command_parser

    words = shlex.split(launch)
    assert words[0] == "trl" and words[2:] == ["--config", str(path)]
    module = importlib.import_module(f"trl.scripts.{words[1]}")
    parser = module.make_parser(prog=f"trl {words[1]}")
    *parsed, config_left, cli_left = parser.parse_args_and_config(
        ["--config", str(path)], return_remaining_strings=True, separate_remaining_strings=True)
    assert cli_left == []
    launcher = launch_command_parser().parse_args([*config_left, "train.py"])
    return parsed, config_left, launcher


@pytest.mark.parametrize("gpus", [1, 8])
@pytest.mark.parametrize("method", ["lora", "qlora", "full"])
@pytest.mark.parametrize("stage", ["sft", "pt", "dpo", "kto", "rm", "grpo"])
def test_trl_parses_the_export(tmp_path, stage, method, gpus) -> None:
    plan = Plan.build(method=method, stage=stage, gpus=gpus, zero=3 if gpus > 1 else 0, batch_size=2, grad_accum=4,
                      seq_len=2048, gradient_checkpointing=True, attention="flash", lora_rank=16)
    exported = write_export("trl", MODEL, plan, tmp_path / "train.yaml", spec=load_spec(MODEL))
    (script, training, model, _mixture), left, launcher = parse(exported.path, exported.launch)

    assert left == ["--num_processes", str(gpus)] and launcher.num_processes == gpus
    config = {"sft": "SFTConfig", "pt": "SFTConfig", "dpo": "DPOConfig", "kto": "KTOConfig", "rm": "RewardConfig",
              "grpo": "GRPOConfig"}[stage]
    assert type(training).__name__ == config
    assert model.model_name_or_path == "meta-llama/Llama-3.1-8B"
    assert script.dataset_name == "REPLACE-WITH-YOUR-DATASET"
    assert (training.per_device_train_batch_size, training.gradient_accumulation_steps) == (2, 4)
    assert training.gradient_checkpointing is True and training.bf16 is True and training.fp16 is False
    assert model.attn_implementation == "flash_attention_2"
    assert model.use_peft is (method != "full")
    if method != "full":
        assert model.lora_r == 16 and "q_proj" in model.lora_target_modules
    assert model.load_in_4bit is (method == "qlora")
    if method == "qlora":
        assert model.use_bnb_nested_quant is True and model.dtype == "bfloat16"
    if stage == "grpo":
        assert training.max_completion_length == 512 and training.num_generations == 8
        assert script.reward_funcs == ["REPLACE-WITH-YOUR-REWARD-FUNCTION"]
    else:
        assert training.max_length == 2048
    assert training.output_dir.startswith("outputs/")
    if gpus > 1:
        assert training.deepspeed == str(tmp_path / "train.ds_z3.json")
        assert json.loads((tmp_path / "train.ds_z3.json").read_text())["zero_optimization"]["stage"] == 3
        # launched as one process here, the Trainer's DeepSpeed check would stop it: 8 GPUs were planned
        assert any("train_batch_size=64" in m for m in training.hf_deepspeed_config.mismatches)
    else:
        assert training.deepspeed is None


@pytest.mark.parametrize("precision", ["fp32", "bf16", "bf16-mixed"])
def test_trl_parses_each_precision(tmp_path, precision) -> None:
    plan = Plan.build(method="full", precision=precision, zero=2, optimizer="adamw-8bit")
    exported = write_export("trl", MODEL, plan, tmp_path / "train.yaml", spec=load_spec(MODEL))
    (_script, training, model, _mixture), _left, _launcher = parse(exported.path, exported.launch)
    assert training.bf16 is (precision != "fp32") and training.optim == "adamw_bnb_8bit"
    assert model.dtype == {"fp32": "float32", "bf16": "bfloat16", "bf16-mixed": "float32"}[precision]
    assert training.hf_deepspeed_config.mismatches == []  # one GPU planned, one process here


@pytest.mark.parametrize(("checkpointing", "mode"), [(False, "saved"), (True, "checkpoint")])
def test_trl_parses_activation_offloading(tmp_path, checkpointing, mode) -> None:
    plan = Plan.build(method="lora", gradient_checkpointing=checkpointing, activation_offload=mode)
    exported = write_export("trl", MODEL, plan, tmp_path / "train.yaml", spec=load_spec(MODEL))
    (_script, training, _model, _mixture), _left, _launcher = parse(exported.path, exported.launch)
    assert training.activation_offloading is (mode == "saved")
    assert (training.gradient_checkpointing_kwargs or {}).get("offload", False) is (mode == "checkpoint")
