"""`ftplan preflight` on configs with settings ftplan does not model: the warnings reach the report and make the
verdict conditional; sharding on one GPU is said; files that train nothing are exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from diagnostics.preflight import exit_code, preflight

CONFIG = """model_name_or_path: qwen2.5-0.5b-instruct
stage: sft
do_train: true
finetuning_type: lora
dataset: identity
cutoff_len: 512
per_device_train_batch_size: 1
gradient_accumulation_steps: 4
learning_rate: 1.0e-4
warmup_ratio: 0.1
bf16: true
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "train.yaml"
    path.write_text(text)
    return path


def test_a_plain_config_is_ready(tmp_path) -> None:
    report = preflight(write(tmp_path, CONFIG), gpu="H100")
    assert report.verdict == "ready" and exit_code(report, strict=True) == 0


def test_a_preference_stage_is_planned_not_warned(tmp_path) -> None:
    text = CONFIG.replace("stage: sft", "stage: dpo") + "pref_beta: 0.1\npref_loss: sigmoid\npref_ftx: 0.1\n"
    report = preflight(write(tmp_path, text), gpu="H100")
    assert report.run.plan.stage == "dpo" and report.estimate.plan.stage == "dpo"
    assert not [c for c in report.checks if c.code.startswith("stage_")]  # no "planned as SFT" warning
    assert report.verdict == "ready" and exit_code(report, strict=True) == 0


def test_ppo_says_what_it_does_not_model(tmp_path) -> None:
    text = CONFIG.replace("stage: sft", "stage: ppo") + "reward_model: saves/rm\nmax_new_tokens: 128\n"
    report = preflight(write(tmp_path, text), gpu="H100")
    assert report.run.plan.stage == "ppo" and report.run.plan.seq_len == 512 + 128
    codes = {c.code: c.data["direction"] for c in report.checks if c.data.get("direction")}
    assert codes["ppo_value_head"] == "understates" and "ppo_reward_model" not in codes  # LoRA: an adapter
    assert exit_code(report, strict=True) == 1  # an understating setting keeps --strict from passing


def test_a_reader_warning_makes_the_verdict_conditional(tmp_path) -> None:
    text = CONFIG + "additional_target: embed_tokens\n"  # trained in full beside the adapters: not planned
    report = preflight(write(tmp_path, text), gpu="H100")
    (extra,) = [c for c in report.checks if c.code == "additional_target"]
    assert extra.severity == "warning" and extra.data["direction"] == "understates"
    assert report.verdict == "ready_with_warnings"
    assert exit_code(report, strict=False) == 0 and exit_code(report, strict=True) == 1


def test_zero3_planned_on_one_gpu_is_said(tmp_path) -> None:
    (tmp_path / "ds_z3.json").write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    text = CONFIG.replace("finetuning_type: lora", "finetuning_type: full") + "deepspeed: ds_z3.json\n"
    path = write(tmp_path, text)
    one = preflight(path, gpu="H100")
    (finding,) = [c for c in one.checks if c.code == "sharding_on_one_gpu"]
    assert "ZeRO-3" in finding.message and "deepspeed" in finding.message and "--gpus N" in finding.message
    assert one.verdict in ("ready_with_warnings", "will_not_fit")
    two = preflight(path, gpu="H100", gpus=2)
    assert not [c for c in two.checks if c.code == "sharding_on_one_gpu"]


def test_an_export_config_is_exit_2_naming_the_key(tmp_path) -> None:
    path = write(tmp_path, "model_name_or_path: qwen2.5-0.5b-instruct\nadapter_name_or_path: saves/x\n"
                           "template: qwen\nexport_dir: merged\n")
    result = subprocess.run([sys.executable, "-m", "tui", "preflight", str(path), "--gpu", "H100"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "not a training config" in result.stderr and "export_dir" in result.stderr


def test_the_stage_flag_overrides_the_configs_stage(tmp_path) -> None:
    path = write(tmp_path, CONFIG.replace("stage: sft", "stage: dpo"))
    result = subprocess.run([sys.executable, "-m", "tui", "preflight", str(path), "--gpu", "H100", "--stage", "orpo",
                             "--json"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["estimate"]["plan"]["stage"] == "orpo"


def test_a_reader_warning_replaces_the_planners_generic_one(tmp_path) -> None:
    text = CONFIG.replace("stage: sft", "stage: ppo") + "reward_model: saves/rm\n"
    report = preflight(write(tmp_path, text), gpu="H100")
    assert [c.code for c in report.checks].count("ppo_value_head") == 1
    (warning,) = [c for c in report.checks if c.code == "ppo_value_head"]
    assert "ppo_buffer_size" in warning.message  # the reader's, naming the config's keys
