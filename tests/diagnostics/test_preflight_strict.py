"""`ftplan preflight`: the verdict and --strict are honest about what the plan leaves out (a setting that only
lowers memory keeps a fitting plan ready), the GPU count comes from the config when the user gives none, and an
error resolving the model names the config key the user wrote."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from diagnostics.preflight import conservative, exit_code, preflight
from planner.errors import EnvironmentMissing, FtplanError
from planner.findings import Finding
from tests.diagnostics.test_preflight_config_warnings import CONFIG  # the same plain, fitting run
from tui.preflight_view import print_preflight


def write(tmp_path: Path, text: str, name: str = "train.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def printed(report) -> str:
    out = io.StringIO()
    print_preflight(report, Console(file=out, width=200, highlight=False, color_system=None))
    return out.getvalue()


# ------------------------------------------------------------------ the rule


def test_the_rule_clears_only_overstating_reader_warnings_on_a_fitting_plan() -> None:
    over = Finding(severity="warning", code="x", message="m", data={"keys": ["k"], "direction": "overstates"})
    under = over.model_copy(update={"data": {"keys": ["k"], "direction": "understates"}})
    unknown = over.model_copy(update={"data": {"keys": ["k"], "direction": "unknown"}})
    static = Finding(severity="warning", code="no_clipping", message="m")  # a static check: no direction
    sharding = Finding(severity="warning", code="sharding_on_one_gpu", message="m", data={"direction": "overstates"})
    assert conservative(over, fits=True)
    assert not conservative(over, fits=False)  # a plan that does not fit is not rescued
    assert not any(conservative(f, fits=True) for f in (under, unknown, static, sharding))


def test_an_overstating_setting_keeps_a_fitting_plan_ready_under_strict(tmp_path) -> None:
    report = preflight(write(tmp_path, CONFIG + "shift_attn: true\n"), gpu="H100")
    (finding,) = [c for c in report.checks if "shift_attn" in c.data.get("keys", ())]
    assert finding.severity == "warning" and finding.data["direction"] == "overstates"  # still reported
    assert report.verdict == "ready" and exit_code(report, strict=True) == 0
    assert report.conditional == [finding] and finding not in report.warnings
    assert "estimate conservative: 1 setting not modelled would lower it" in report.summary
    text = printed(report)
    assert "conditional shift_attn" in text and "estimate conservative" in text


def test_an_understating_setting_still_fails_strict_beside_an_overstating_one(tmp_path) -> None:
    report = preflight(write(tmp_path, CONFIG + "shift_attn: true\nupcast_lmhead_output: true\n"), gpu="H100")
    assert report.verdict == "ready_with_warnings" and exit_code(report, strict=True) == 1
    assert exit_code(report, strict=False) == 0
    assert [c.data["keys"] for c in report.warnings] == [["upcast_lmhead_output"]]
    assert "estimate conservative: 1 setting" in report.summary  # the overstating one is still said


def test_static_risks_still_fail_strict_even_with_only_overstating_settings(tmp_path) -> None:
    report = preflight(write(tmp_path, CONFIG + "shift_attn: true\nmax_grad_norm: 0\n"), gpu="H100")
    assert [c.code for c in report.warnings] == ["no_clipping"]
    assert report.verdict == "ready_with_warnings" and exit_code(report, strict=True) == 1


def test_preference_loss_settings_never_fail_strict(tmp_path) -> None:
    """beta, loss_type, label smoothing and the losses' weights change no memory: irrelevant, no "did you mean"."""
    trl = {"model_name_or_path": "qwen2.5-0.5b-instruct", "output_dir": "out", "beta": 0.1, "loss_type": "ipo",
           "label_smoothing": 0.0, "max_length": 512, "per_device_train_batch_size": 1, "max_grad_norm": 1.0,
           "learning_rate": 5e-7, "use_peft": True, "dtype": "bfloat16", "lora_target_modules": "all-linear"}
    report = preflight(write(tmp_path, json.dumps(trl), "dpo.json"), gpu="H100")
    assert report.run.plan.stage == "dpo" and report.run.plan.fused_loss  # TRL's fused LM head
    assert report.run.ignored == [] and not report.warnings
    assert report.verdict == "ready" and exit_code(report, strict=True) == 0


def test_a_plan_that_does_not_fit_is_not_ready_whatever_the_direction(tmp_path) -> None:
    text = CONFIG.replace("qwen2.5-0.5b-instruct", "llama-3.1-8b").replace("finetuning_type: lora",
                                                                             "finetuning_type: full")
    report = preflight(write(tmp_path, text + "shift_attn: true\n"), gpu="4090")
    assert report.verdict == "will_not_fit" and exit_code(report, strict=False) == 1
    assert not report.conditional


def test_few_optimizer_steps_is_advice_not_a_warning(tmp_path) -> None:
    text = CONFIG + "max_steps: 10\n"
    report = preflight(write(tmp_path, text), gpu="H100")
    (few,) = [c for c in report.checks if c.code == "few_steps"]
    assert few.severity == "info"
    assert report.verdict == "ready" and exit_code(report, strict=True) == 0


# ------------------------------------------------------------------ GPU count from the config


def test_the_config_gpu_count_is_planned_when_the_user_gives_none(tmp_path) -> None:
    (tmp_path / "ds_z3.json").write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    text = (CONFIG.replace("finetuning_type: lora", "finetuning_type: full") + "deepspeed: ds_z3.json\n"
            "ray_num_workers: 4\n")
    path = write(tmp_path, text)
    report = preflight(path, gpu="H100")
    assert report.gpus == 4 and report.estimate.plan.gpus == 4
    notes = [c.message for c in report.checks if c.code == "note"]
    assert any(n.startswith("4 GPUs: the count the config implies") and "--gpus" in n for n in notes)
    assert not [c for c in report.checks if c.code == "sharding_on_one_gpu"]
    # the user's count wins, and ZeRO-3 on one GPU is still said
    one = preflight(path, gpu="H100", gpus=1)
    assert one.gpus == 1
    (finding,) = [c for c in one.checks if c.code == "sharding_on_one_gpu"]
    assert "the config implies 4 GPUs" in finding.message
    assert not any("the count the config implies" in c.message for c in one.checks if c.code == "note")


def test_an_axolotl_parallel_size_sets_the_count(tmp_path) -> None:
    text = ("base_model: qwen2.5-0.5b-instruct\nadapter: lora\nlora_r: 8\nlora_alpha: 16\nsequence_len: 512\n"
            "micro_batch_size: 1\ngradient_accumulation_steps: 4\nlearning_rate: 1.0e-4\nwarmup_ratio: 0.1\n"
            "bf16: true\ndp_shard_size: 2\n")
    report = preflight(write(tmp_path, text), gpu="H100")
    assert report.gpus == 2


def test_no_count_in_the_config_plans_one_named_gpu(tmp_path) -> None:
    report = preflight(write(tmp_path, CONFIG), gpu="H100")
    assert report.gpus == 1
    assert not any("the count the config implies" in c.message for c in report.checks)


# ------------------------------------------------------------------ model errors name the config key


def test_an_unknown_model_names_the_config_key(tmp_path) -> None:
    path = write(tmp_path, CONFIG.replace("qwen2.5-0.5b-instruct", "not_a_model_anywhere"))
    with pytest.raises(FtplanError) as info:
        preflight(path, gpu="H100")
    message = str(info.value)
    assert f"{path}: key 'model_name_or_path': not_a_model_anywhere: " in message
    assert "--model" not in message


def test_an_unreachable_hub_model_names_the_key_the_user_wrote(tmp_path, monkeypatch) -> None:
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    text = ("base_model: nobody-here/no-such-model-xyz\nadapter: lora\nlora_r: 8\nsequence_len: 512\n"
            "micro_batch_size: 1\nlearning_rate: 1.0e-4\nbf16: true\n")
    path = write(tmp_path, text)
    with pytest.raises(EnvironmentMissing) as info:
        preflight(path, gpu="H100")
    message = str(info.value)
    assert message.startswith(f"{path}: key 'base_model': nobody-here/no-such-model-xyz: config.json is not in")
    assert "--model" not in message


def test_the_cli_error_names_the_key_and_exits_2(tmp_path) -> None:
    path = write(tmp_path, CONFIG.replace("qwen2.5-0.5b-instruct", "not_a_model_anywhere"))
    result = subprocess.run([sys.executable, "-m", "tui", "preflight", str(path), "--gpu", "H100"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "key 'model_name_or_path'" in result.stderr and "--model" not in result.stderr
