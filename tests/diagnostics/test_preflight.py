"""`ftplan preflight` on real configs: the seed's, its full fine-tune variant, ZeRO-3, bad input, --fix."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from diagnostics.preflight import exit_code, preflight
from planner.configs import read_run_config
from planner.hardware import find_gpu
from planner.service import plan_run as estimate
from planner.spec import load_spec
from planner.target import GpuTarget

SEED = Path(__file__).resolve().parents[1] / "data" / "seed_llamafactory.yaml"


def full_bf16(tmp_path: Path, extra: str = "") -> Path:
    text = SEED.read_text().replace("quantization_bit: 4\n", "").replace("finetuning_type: lora",
                                                                          "finetuning_type: full")
    path = tmp_path / "full.yaml"
    path.write_text(text + extra)
    return path


def ftplan(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tui", "preflight", *args], capture_output=True, text=True,
                          timeout=120)


def test_the_seed_config_fits_a_24gb_gpu() -> None:
    report = preflight(SEED, gpu="RTX 4090")
    assert report.estimate.fit.fits and report.verdict in ("ready", "ready_with_warnings")
    assert exit_code(report, strict=False) == 0
    assert ftplan(str(SEED), "--gpu", "rtx4090").returncode == 0
    assert ftplan(str(SEED), "--gpu", "4090").returncode == 0  # lenient GPU names


def test_full_fine_tuning_in_bf16_does_not_fit_one_80gb_gpu(tmp_path) -> None:
    path = full_bf16(tmp_path)
    result = ftplan(str(path), "--gpu", "A100-80GB", "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["verdict"] == "will_not_fit" and report["estimate"]["suggestions"]


def test_zero3_over_two_gpus_changes_the_verdict_as_the_planner_says(tmp_path) -> None:
    (tmp_path / "ds_z3.json").write_text(json.dumps({"zero_optimization": {"stage": 3}, "bf16": {"enabled": "auto"}}))
    path = full_bf16(tmp_path, "deepspeed: ds_z3.json\n")
    gpu = find_gpu("H100")
    one = preflight(path, gpu="H100", gpus=1)
    two = preflight(path, gpu="H100", gpus=2)
    run = read_run_config(path)
    for report, gpus in ((one, 1), (two, 2)):
        expected = estimate(load_spec("qwen2.5-7b-instruct"), run.plan.with_(gpus=gpus),
                            GpuTarget(name=gpu.name, capacity=gpu.memory_bytes, source="catalog", gpu=gpu))
        assert report.estimate.memory.total == expected.memory.total
        assert report.estimate.fit.fits == expected.fit.fits
    assert two.estimate.memory.total < one.estimate.memory.total
    assert not one.estimate.fit.fits and two.estimate.fit.fits  # sharding makes it fit


def test_malformed_yaml_is_exit_2_in_one_line(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model_name_or_path: x\nstage: sft: lora\n")
    result = ftplan(str(bad), "--gpu", "H100")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad.yaml" in lines[0] and "Traceback" not in result.stderr


def test_no_gpu_with_auto_is_exit_3() -> None:
    import diagnostics.nvml as nvml

    if nvml.probe().status == "ok":
        pytest.skip("this machine has a GPU")
    result = ftplan(str(SEED))
    assert result.returncode == 3 and "--gpu NAME" in result.stderr


def test_fix_round_trips_to_a_passing_config(tmp_path) -> None:
    path = full_bf16(tmp_path)
    before = path.read_text()
    fixed = tmp_path / "fixed.yaml"
    report = preflight(path, gpu="A100-80GB", fix=fixed)
    assert report.verdict == "will_not_fit" and report.fix_changes
    assert path.read_text() == before  # the input is never modified
    again = preflight(fixed, gpu="A100-80GB")
    assert again.estimate.fit.fits and exit_code(again, strict=False) == 0
    kept = [line for line in fixed.read_text().splitlines() if line.startswith("#")]
    original = [line for line in before.splitlines() if line.startswith("#")]
    assert kept[: len(original)] == original  # every comment kept, in order


def test_static_advice(tmp_path) -> None:
    text = SEED.read_text().replace("warmup_ratio: 0.1", "warmup_ratio: 0.0").replace(
        "learning_rate: 1.0e-4", "learning_rate: 5.0e-4").replace("bf16: true", "fp16: true")
    path = tmp_path / "risky.yaml"
    path.write_text(text + "max_grad_norm: 0\nlearning_rat: 1\n")
    report = preflight(path, gpu="H100")
    messages = " | ".join(c.message for c in report.checks)
    assert "no warmup" in messages and "fp16 on H100" in messages and "clipping is off" in messages
    assert "key 'learning_rat' is not a setting ftplan knows for LLaMA-Factory (did you mean learning_rate?)" in messages
    assert report.verdict == "ready_with_warnings"
    assert exit_code(report, strict=False) == 0 and exit_code(report, strict=True) == 1
    fixed = preflight(path, gpu="H100", fix=tmp_path / "safe.yaml")
    safe = read_run_config(fixed.fixed)
    assert safe.hyper.warmup_ratio > 0 and safe.hyper.bf16 and not safe.hyper.fp16 and safe.hyper.max_grad_norm


def test_preflight_with_a_diagnostics_run(tmp_path) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text("model_name_or_path: tiny-llama\nstage: sft\nfinetuning_type: lora\nlora_target: all\n"
                      "cutoff_len: 128\nper_device_train_batch_size: 2\ngradient_accumulation_steps: 2\n"
                      "learning_rate: 1.0e-4\nwarmup_ratio: 0.1\nbf16: true\n")
    report = preflight(config, gpu="H100", diagnose_steps=6)
    assert report.diagnostics is not None and report.diagnostics.status == "completed"
    assert len(report.diagnostics.records) == 6 and report.verdict == "ready"


def test_a_grpo_batch_trl_refuses_is_an_error_unless_the_config_sizes_the_generation_batch(tmp_path) -> None:
    """trl GRPOConfig: micro-batch x processes x steps_per_generation must hold whole groups of num_generations;
    a config that sets generation_batch_size itself is checked by TRL on that instead."""
    base = "model_name_or_path: tiny-llama\nnum_generations: 8\nmax_completion_length: 64\nmax_length: 128\n"
    path = tmp_path / "grpo.yaml"
    path.write_text(base + "per_device_train_batch_size: 4\n")
    refused = preflight(path, gpu="H100")
    assert refused.verdict == "not_ready" and "prompt_groups" in {c.code for c in refused.checks}
    path.write_text(base + "per_device_train_batch_size: 8\n")
    assert "prompt_groups" not in {c.code for c in preflight(path, gpu="H100").checks}
    path.write_text(base + "per_device_train_batch_size: 4\ngeneration_batch_size: 64\n")
    assert "prompt_groups" not in {c.code for c in preflight(path, gpu="H100").checks}
