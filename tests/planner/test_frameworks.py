"""Reading LLaMA-Factory, HF/TRL and axolotl configs; writing corrected copies and exports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from planner.configs import common, fix_config, llamafactory_yaml, read_run_config
from planner.errors import FtplanError

SEED = Path(__file__).resolve().parents[1] / "data" / "seed_llamafactory.yaml"


def write(tmp_path, text: str, name: str = "train.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_seed_config_reads_as_written() -> None:
    run = read_run_config(SEED)
    assert run.format == "llamafactory" and run.model == "Qwen2.5-7B-Instruct"
    p = run.plan
    assert (p.method, p.base_bits, p.batch_size, p.grad_accum, p.seq_len) == ("qlora", 4, 1, 8, 1024)
    assert p.gradient_checkpointing  # LLaMA-Factory's default: disable_gradient_checkpointing is false
    assert p.precision == "bf16-mixed" and p.lora_target == "all"
    h = run.hyper
    assert (h.learning_rate, h.epochs, h.lr_scheduler, h.warmup_ratio) == (1e-4, 3.0, "cosine", 0.1)
    assert run.data.max_samples == 1000 and run.data.val_size == 0.1 and run.ignored == []


def test_unknown_keys_are_listed_with_a_suggestion(tmp_path) -> None:
    path = write(tmp_path, SEED.read_text() + "learning_rat: 3e-4\nmy_custom_flag: true\n")
    run = read_run_config(path)
    assert "learning_rat (did you mean learning_rate?)" in run.ignored and "my_custom_flag" in run.ignored


@pytest.mark.parametrize(("extra", "message"), [
    ("finetuning_type: full\n", "key 'quantization_bit': 4-bit weights cannot be trained with finetuning_type full"),
    ("per_device_train_batch_size: 0\n", "'per_device_train_batch_size' must be at least 1"),
    ("cutoff_len: long\n", "'cutoff_len' must be a whole number"),
    ("quantization_bit: 3\n", "'quantization_bit' must be 4 or 8"),
    ("fp16: true\n", "'bf16' and 'fp16' are both true"),
    ("deepspeed: ds_missing.json\n", "'deepspeed' points at ds_missing.json"),
])
def test_wrong_values_name_the_key(tmp_path, extra: str, message: str) -> None:
    text = "\n".join(line for line in SEED.read_text().splitlines()
                     if not line.startswith(extra.split(":")[0] + ":")) + "\n" + extra
    with pytest.raises(FtplanError, match=message.replace("(", r"\(")) as info:
        read_run_config(write(tmp_path, text))
    assert str(tmp_path) in str(info.value)


def test_malformed_yaml_names_the_line(tmp_path) -> None:
    with pytest.raises(FtplanError, match=r"not valid YAML \(line 2"):
        read_run_config(write(tmp_path, "model_name_or_path: x\nstage: sft: lora\ncutoff_len: 1024\n"))


def test_deepspeed_json_sets_the_zero_stage(tmp_path) -> None:
    (tmp_path / "ds.json").write_text(json.dumps({"zero_optimization": {"stage": 3, "offload_optimizer":
                                                                       {"device": "cpu"}}}))
    text = SEED.read_text().replace("quantization_bit: 4\n", "").replace("finetuning_type: lora", "finetuning_type: full")
    run = read_run_config(write(tmp_path, text + "deepspeed: ds.json\n"))
    assert (run.plan.method, run.plan.zero, run.plan.offload_optimizer) == ("full", 3, True)


def test_llamafactory_dataset_info_gives_the_sample_count(tmp_path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mine.json").write_text(json.dumps([{"instruction": "q", "output": "a"}] * 240))
    (tmp_path / "data" / "dataset_info.json").write_text(json.dumps({"mine": {"file_name": "mine.json"}}))
    run = read_run_config(write(tmp_path, SEED.read_text().replace("dataset: identity", "dataset: mine")))
    assert run.data.samples == 240 and run.data.files


@pytest.mark.parametrize("chunk", [3, 1 << 16])  # 3: every element, number and string crosses a chunk boundary
def test_data_files_are_counted_by_streaming(tmp_path, monkeypatch, chunk: int) -> None:
    monkeypatch.setattr(common, "_CHUNK", chunk)
    lines = tmp_path / "lines.jsonl"
    lines.write_text('{"q": "a"}\n\n  \n{"q": "b, [c]"}\r\n{"q": "line\u2028separator"}\n{"q": 12345}')
    assert common.count_records(lines) == 4
    records = [{"q": "a]b,c", "n": [1, [2, 3]]}, 12345678, "x", None, {"deep": {"er": [{}]}}, -1.5e3]
    array = tmp_path / "array.json"
    array.write_text("\n  " + json.dumps(records, indent=2) + "\n")
    assert common.count_records(array) == len(records)
    for text, count in [("[]", 0), (" [ 7 ] ", 1), ("[1, 2,]", 0), ("[1, 2", 0), ("[1] 2", 0), ("[1 2]", 0),
                        ('[{"a": 1}, {"a": }]', 0), ("", 0)]:
        array.write_text(text)
        assert common.count_records(array) == count, text


def test_hf_trl_config(tmp_path) -> None:
    config = {"model_name_or_path": "Qwen/Qwen2.5-7B-Instruct", "per_device_train_batch_size": 4,
              "gradient_accumulation_steps": 2, "max_length": 2048, "bf16": True, "gradient_checkpointing": True,
              "use_peft": True, "lora_r": 32, "lora_target_modules": ["q_proj", "v_proj"], "load_in_4bit": True,
              "learning_rate": 2e-4, "optim": "paged_adamw_8bit", "output_dir": "out"}
    run = read_run_config(write(tmp_path, json.dumps(config), "args.json"))
    p = run.plan
    assert run.format == "hf" and (p.method, p.lora_rank, p.lora_target, p.optimizer) == (
        "qlora", 32, "q_proj,v_proj", "paged-adamw-8bit")
    assert (p.batch_size, p.grad_accum, p.seq_len, p.gradient_checkpointing) == (4, 2, 2048, True)


def test_axolotl_config(tmp_path) -> None:
    text = """base_model: meta-llama/Llama-3.1-8B
adapter: qlora
load_in_4bit: true
lora_r: 16
lora_target_linear: true
sequence_len: 4096
micro_batch_size: 2
gradient_accumulation_steps: 4
learning_rate: 0.0002
num_epochs: 2
bf16: auto
flash_attention: true
gradient_checkpointing: true
optimizer: adamw_bnb_8bit
sample_packing: true
datasets:
  - path: tatsu-lab/alpaca
    type: alpaca
"""
    run = read_run_config(write(tmp_path, text))
    p = run.plan
    assert run.format == "axolotl" and run.model == "meta-llama/Llama-3.1-8B"
    assert (p.method, p.lora_target, p.seq_len, p.batch_size, p.attention) == ("qlora", "all", 4096, 2, "flash")
    assert p.optimizer == "adamw-8bit" and run.data.datasets == ["tatsu-lab/alpaca"]


def test_fix_keeps_comments_and_order_and_never_touches_the_input(tmp_path) -> None:
    before = SEED.read_text()
    out = fix_config(SEED, {"per_device_train_batch_size": 2, "max_grad_norm": 0.5}, tmp_path / "fixed.yaml")
    text = out.read_text()
    assert SEED.read_text() == before
    assert "per_device_train_batch_size: 2" in text and "max_grad_norm: 0.5" in text
    assert text.splitlines()[0] == before.splitlines()[0]  # the comment
    keys = [line.split(":")[0] for line in text.splitlines() if line and not line.startswith("#")]
    assert keys.index("model_name_or_path") < keys.index("per_device_train_batch_size") < keys.index("max_grad_norm")
    with pytest.raises(FtplanError, match="that is the input file"):
        fix_config(SEED, {}, SEED)


def test_exported_yaml_reads_back_to_the_same_plan(tmp_path) -> None:
    run = read_run_config(SEED)
    text = llamafactory_yaml(run.model, run.plan, run.hyper)
    again = read_run_config(write(tmp_path, text, "export.yaml"))
    assert again.plan == run.plan and again.hyper.learning_rate == run.hyper.learning_rate


@pytest.mark.parametrize(("changes", "keys"), [
    ({"stage": "dpo"}, ["stage: dpo"]),
    ({"stage": "orpo"}, ["stage: dpo", "pref_loss: orpo"]),
    ({"stage": "simpo"}, ["stage: dpo", "pref_loss: simpo"]),
    ({"stage": "kto"}, ["stage: kto", "dataset: REPLACE-WITH-YOUR-DATASET"]),  # its comment names kto_en_demo
    ({"stage": "rm"}, ["stage: rm", "dataset: REPLACE-WITH-YOUR-DATASET"]),
    ({"stage": "dpo", "reference_model": True}, ["stage: dpo", "ref_model: Qwen2.5-7B-Instruct"]),
    ({"stage": "ppo", "max_completion_len": 256}, ["stage: ppo", "cutoff_len: 768", "max_new_tokens: 256",
                                                   "reward_model_type: lora"]),
])
def test_an_exported_stage_reads_back_to_the_same_plan(tmp_path, changes, keys) -> None:
    run = read_run_config(SEED)
    plan = run.plan.with_(**changes)
    text = llamafactory_yaml(run.model, plan, run.hyper)
    lines = text.splitlines()
    assert all(any(line.split("  #")[0] == key for line in lines) for key in keys), text
    assert "stage: sft" not in lines
    again = read_run_config(write(tmp_path, text, "export.yaml"))
    assert again.plan == plan


def test_a_stage_llamafactory_cannot_run_is_refused_or_said(tmp_path) -> None:
    run = read_run_config(SEED)
    with pytest.raises(FtplanError, match="no GRPO stage") as info:
        llamafactory_yaml(run.model, run.plan.with_(stage="grpo"), run.hyper)
    assert info.value.field == "stage"
    text = llamafactory_yaml(run.model, run.plan.with_(stage="dpo", precompute_ref_log_probs=True), run.hyper)
    assert "# ftplan planned precompute_ref_log_probs" in text
    full = run.plan.with_(method="full", quant_bits=None, stage="ppo", max_completion_len=128)
    assert "reward_model_type: full" in llamafactory_yaml(run.model, full, run.hyper)
