"""The Hugging Face Trainer / TRL reader: TrainingArguments' and TRL's defaults and key semantics, on configs
written here (pure Python, no torch)."""

from __future__ import annotations

import json

import pytest
import yaml

from planner.configs import config_changes, read_run_config
from planner.configs.hf import KNOWN, READ, RECOGNISED
from planner.errors import FtplanError

MODEL = {"model_name_or_path": "Qwen/Qwen2.5-7B-Instruct", "output_dir": "out"}


def read(tmp_path, **keys):
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({**MODEL, **keys}, sort_keys=False))
    return read_run_config(path)


def codes(run) -> dict[str, tuple[str, str]]:
    return {w.data["keys"][0]: (w.code, w.data["direction"]) for w in run.warnings}


def test_plain_training_arguments_keep_transformers_defaults(tmp_path) -> None:
    run = read(tmp_path, per_device_train_batch_size=2, report_to="none")
    p, h = run.plan, run.hyper
    assert run.format == "hf" and p.method == "full"
    assert (p.precision, p.gradient_checkpointing, p.attention, p.optimizer) == (
        "fp32", False, "sdpa", "adamw-fused")
    assert (p.batch_size, p.seq_len, h.learning_rate, h.epochs) == (2, 1024, 5e-5, 3.0)
    assert any("no sequence length" in n for n in run.notes) and not any("TRL" in n for n in run.notes)


def test_a_trl_config_gets_trls_defaults(tmp_path) -> None:
    run = read(tmp_path, max_length=2048, dataset_text_field="text")
    p = run.plan
    # trl/trainer/base_config.py: bf16 unless fp16, gradient checkpointing on; ModelConfig: float32 weights
    assert (p.precision, p.gradient_checkpointing, p.seq_len) == ("bf16-mixed", True, 2048)
    assert run.hyper.bf16 and run.hyper.learning_rate == 2e-5  # sft_config.py
    note = next(n for n in run.notes if n.startswith("TRL config"))
    assert "bf16 autocast" in note and "gradient checkpointing" in note and "float32" in note
    assert "max_length 1024" not in note  # set by the config, so not a default applied


@pytest.mark.parametrize("marker", [
    {"packing": True}, {"completion_only_loss": True}, {"assistant_only_loss": True}, {"use_peft": True},
    {"lora_r": 8}, {"dataset_name": "trl-lib/Capybara"}, {"max_seq_length": 512}, {"num_generations": 4},
    {"beta": 0.1},
])
def test_trl_is_detected_by_its_own_keys(tmp_path, marker: dict) -> None:
    assert read(tmp_path, **marker).plan.gradient_checkpointing


def test_dataset_name_of_the_transformers_examples_is_not_trl(tmp_path) -> None:
    run = read(tmp_path, dataset_name="wikitext", dataset_config_name="wikitext-2-raw-v1", block_size=512)
    assert not run.plan.gradient_checkpointing and run.plan.precision == "fp32"


def test_trl_switches_the_user_sets_win(tmp_path) -> None:
    run = read(tmp_path, max_length=512, bf16=False, gradient_checkpointing=False)
    assert (run.plan.precision, run.plan.gradient_checkpointing) == ("fp32", False)
    assert read(tmp_path, max_length=512, fp16=True).plan.precision == "fp16-mixed"  # bf16: not fp16
    with pytest.raises(FtplanError, match="'bf16' and 'fp16' are both true"):
        read(tmp_path, max_length=512, fp16=True, bf16=True)


@pytest.mark.parametrize(("keys", "precision"), [
    ({"dtype": "bfloat16"}, "bf16"),  # loaded in bf16 and trained so: no fp32 master copy
    ({"torch_dtype": "bfloat16"}, "bf16"),  # TRL 0.x's name
    ({"dtype": "float16", "fp16": True, "bf16": False}, "bf16"),  # 16-bit weights: the same bytes
    ({"dtype": "float32"}, "bf16-mixed"),
    ({"dtype": "auto"}, "bf16"),
    ({"dtype": "bfloat16", "bf16": False}, "bf16"),
    ({"dtype": "bfloat16", "use_peft": True}, "bf16-mixed"),  # frozen bf16 base, fp32 adapters, autocast
    ({"dtype": "float16", "use_peft": True, "load_in_4bit": True, "fp16": True}, "fp16-mixed"),
    ({"dtype": "bfloat16", "deepspeed": {"zero_optimization": {"stage": 3}}}, "bf16-mixed"),  # fp32 master
])
def test_the_model_dtype(tmp_path, keys: dict, precision: str) -> None:
    run = read(tmp_path, max_length=1024, **keys)
    assert run.plan.precision == precision


def test_dtype_messages(tmp_path) -> None:
    auto = read(tmp_path, max_length=1024, dtype="auto")
    assert any("dtype auto" in n for n in auto.notes)
    fp32_lora = read(tmp_path, use_peft=True)  # ModelConfig dtype float32: the frozen base stays fp32
    assert codes(fp32_lora)["bf16"] == ("fp32_frozen_base", "understates")
    bf16_lora = read(tmp_path, use_peft=True, dtype="bfloat16")
    assert "fp32_frozen_base" not in {w.code for w in bf16_lora.warnings}
    fp16_full = read(tmp_path, max_length=1024, dtype="float16", fp16=True)
    assert codes(fp16_full)["dtype"][0] == "fp16_weights"
    with pytest.raises(FtplanError, match="key 'dtype' must be auto, bfloat16, float16 or float32"):
        read(tmp_path, dtype="int8")
    compute = read(tmp_path, use_peft=True, load_in_4bit=True, dtype="bfloat16",
                   bnb_4bit_compute_dtype="float16")
    assert codes(compute)["bnb_4bit_compute_dtype"] == ("compute_dtype", "unknown")


def test_model_config_keys(tmp_path) -> None:
    run = read(tmp_path, use_peft=True, dtype="bfloat16")
    p, h = run.plan, run.hyper
    # trl/trainer/model_config.py: lora_r 16, lora_alpha 32, lora_dropout 0.05, peft's default targets
    assert (p.method, p.lora_rank, p.lora_dropout, p.lora_target) == ("lora", 16, 0.05, "q_proj,v_proj")
    assert h.lora_alpha is None and any("lora_alpha 32" in n for n in run.notes)
    qlora = read(tmp_path, use_peft=True, load_in_4bit=True, lora_target_modules="all-linear", lora_r=64,
                 bnb_4bit_quant_type="nf4", dtype="bfloat16")
    assert (qlora.plan.method, qlora.plan.base_bits, qlora.plan.lora_target, qlora.plan.lora_rank) == (
        "qlora", 4, "all-linear", 64)
    assert not qlora.plan.double_quant  # use_bnb_nested_quant defaults to false
    assert read(tmp_path, use_peft=True, load_in_4bit=True, use_bnb_nested_quant=True).plan.double_quant
    assert read(tmp_path, use_peft=True, load_in_8bit=True).plan.base_bits == 8
    assert read(tmp_path, use_peft=True, attn_implementation="flash_attention_2").plan.attention == "flash"
    assert read(tmp_path, use_peft=True, attn_implementation="eager").plan.attention == "eager"


def test_quantization_needs_peft(tmp_path) -> None:
    with pytest.raises(FtplanError, match="'load_in_4bit' without use_peft: true"):
        read(tmp_path, load_in_4bit=True)
    implied = read(tmp_path, load_in_4bit=True, lora_r=8)  # a script's LoRA keys, no use_peft
    assert implied.plan.method == "qlora" and any("use_peft unset" in n for n in implied.notes)


@pytest.mark.parametrize(("key", "value", "direction"), [
    ("use_dora", True, "understates"),
    ("lora_modules_to_save", ["lm_head"], "understates"),
    ("lora_target_parameters", ["experts.gate_up_proj"], "understates"),
    ("activation_offloading", True, "overstates"),
])
def test_model_settings_ftplan_does_not_model(tmp_path, key: str, value, direction: str) -> None:
    run = read(tmp_path, use_peft=True, dtype="bfloat16", **{key: value})
    assert codes(run)[key][1] == direction and run.treatment[key] == "warned"


def test_float_warmup_steps_is_a_share(tmp_path) -> None:
    # transformers 5 training_args.py: warmup_steps below 1 is a ratio of the steps
    ratio = read(tmp_path, warmup_steps=0.1).hyper
    assert (ratio.warmup_ratio, ratio.warmup_steps) == (0.1, 0)
    steps = read(tmp_path, warmup_steps=100).hyper
    assert (steps.warmup_ratio, steps.warmup_steps) == (0.0, 100)


@pytest.mark.parametrize(("name", "planned", "direction"), [
    ("adamw_torch", "adamw", None),
    ("adamw_torch_8bit", "adamw-8bit", None),
    ("adamw_torch_4bit", "adamw-8bit", "overstates"),
    ("paged_adamw_32bit", "adamw", None),
    ("lion_32bit", "sgd-momentum", None),
    ("galore_adamw", "adamw", "overstates"),
    ("apollo_adamw_layerwise", "adamw", "overstates"),
    ("ademamix_8bit", "adamw-8bit", "understates"),
    ("not_an_optimizer", "adamw", "unknown"),
])
def test_optim(tmp_path, name: str, planned: str, direction: str | None) -> None:
    run = read(tmp_path, optim=name)
    assert run.plan.optimizer == planned
    found = codes(run).get("optim")
    assert (found[1] if found else None) == direction


def test_adafactor_switch_of_transformers_4(tmp_path) -> None:
    assert read(tmp_path, adafactor=True).plan.optimizer == "adafactor"


@pytest.mark.parametrize(("keys", "stage", "direction"), [
    ({"beta": 0.1, "loss_type": "sigmoid"}, "stage_preference", "understates"),
    ({"beta": 0.1, "precompute_ref_log_probs": True}, "stage_dpo", "understates"),
    ({"num_generations": 8, "max_completion_length": 256, "use_vllm": True}, "stage_grpo", "understates"),
    ({"desirable_weight": 1.0, "undesirable_weight": 1.0}, "stage_kto", "understates"),
    ({"center_rewards_coefficient": 0.01}, "stage_reward", "unknown"),
    ({"cpo_alpha": 1.0}, "stage_cpo", "understates"),
])
def test_preference_and_rl_configs_are_warned(tmp_path, keys: dict, stage: str, direction: str) -> None:
    run = read(tmp_path, **keys)
    warning = next(w for w in run.warnings if w.code.startswith("stage_"))
    assert warning.code.startswith(stage) and warning.data["direction"] == direction
    assert set(keys) - {"loss_type"} <= set(warning.data["keys"])
    assert run.plan.gradient_checkpointing  # a TRL config: TRL's defaults


def test_grpo_sequences_are_prompt_and_completion(tmp_path) -> None:
    run = read(tmp_path, num_generations=8, max_completion_length=256, max_prompt_length=512)
    assert run.plan.seq_len == 768 and run.hyper.learning_rate == 1e-6  # grpo_config.py
    uncapped = read(tmp_path, num_generations=8, max_completion_length=256)
    assert uncapped.plan.seq_len == 256 and codes(uncapped)["max_completion_length"][1] == "understates"


def test_liger(tmp_path) -> None:
    run = read(tmp_path, max_length=1024, use_liger_kernel=True)
    assert run.plan.fused_loss and codes(run)["use_liger_kernel"] == ("liger_kernels", "overstates")
    only = read(tmp_path, max_length=1024, use_liger_kernel=True,
                liger_kernel_config={"rope": False, "rms_norm": False, "swiglu": False})
    assert only.plan.fused_loss and only.warnings == []
    off = read(tmp_path, max_length=1024, use_liger_kernel=True,
               liger_kernel_config={"fused_linear_cross_entropy": False})
    assert not off.plan.fused_loss


def test_fsdp(tmp_path) -> None:
    run = read(tmp_path, max_length=1024, fsdp="full_shard auto_wrap offload",
               fsdp_config={"fsdp_activation_checkpointing": True}, gradient_checkpointing=False)
    assert (run.plan.zero, run.plan.offload_optimizer, run.plan.gradient_checkpointing) == (3, True, True)
    assert codes(run)["fsdp_config"] == ("param_offload", "overstates")
    assert read(tmp_path, fsdp=["shard_grad_op", "auto_wrap"]).plan.zero == 2


def test_accelerate_config_of_the_trl_cli(tmp_path) -> None:
    preset = read(tmp_path, max_length=1024, accelerate_config="zero3")  # trl/accelerate_configs/zero3.yaml
    assert preset.plan.zero == 3 and preset.gpus == 8
    assert read(tmp_path, max_length=1024, accelerate_config="zero2", num_processes=4).gpus == 4
    (tmp_path / "fsdp.yaml").write_text(yaml.safe_dump({
        "distributed_type": "FSDP", "num_processes": 2,
        "fsdp_config": {"fsdp_version": 2, "fsdp_reshard_after_forward": False, "fsdp_offload_params": False,
                        "fsdp_activation_checkpointing": True}}))
    own = read(tmp_path, max_length=1024, accelerate_config=str(tmp_path / "fsdp.yaml"),
               gradient_checkpointing=False)
    assert (own.plan.zero, own.gpus, own.plan.gradient_checkpointing) == (2, 2, True)
    (tmp_path / "ds.yaml").write_text(yaml.safe_dump({
        "distributed_type": "DEEPSPEED",
        "deepspeed_config": {"zero_stage": 3, "offload_optimizer_device": "cpu",
                             "offload_param_device": "cpu"}}))
    ds = read(tmp_path, max_length=1024, accelerate_config=str(tmp_path / "ds.yaml"))
    assert (ds.plan.zero, ds.plan.offload_optimizer) == (3, True)
    assert codes(ds)["accelerate_config"] == ("param_offload", "overstates")
    with pytest.raises(FtplanError, match="neither one of TRL's presets"):
        read(tmp_path, accelerate_config="zero9")


def test_deepspeed_file(tmp_path) -> None:
    (tmp_path / "ds.json").write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    assert read(tmp_path, max_length=1024, deepspeed=str(tmp_path / "ds.json")).plan.zero == 2


def test_activation_checkpointing_of_transformers_5(tmp_path) -> None:
    assert read(tmp_path, activation_checkpointing=True).plan.gradient_checkpointing
    partial = read(tmp_path, gradient_checkpointing=True, gradient_checkpointing_kwargs={"every_n_layers": 2})
    assert codes(partial)["gradient_checkpointing_kwargs"] == ("partial_checkpointing", "understates")
    assert read(tmp_path, gradient_checkpointing=True,
                gradient_checkpointing_kwargs={"use_reentrant": False}).warnings == []


@pytest.mark.parametrize(("keys", "first", "direction"), [
    ({"torch_compile": True}, "torch_compile", "overstates"),
    ({"auto_find_batch_size": True}, "auto_find_batch_size", "overstates"),
    ({"label_smoothing_factor": 0.1}, "label_smoothing_factor", "understates"),
])
def test_training_arguments_ftplan_does_not_model(tmp_path, keys: dict, first: str, direction: str) -> None:
    assert codes(read(tmp_path, **keys))[first][1] == direction


def test_known_keys_are_never_unknown(tmp_path) -> None:
    run = read(tmp_path, max_length=1024, gradient_checkpointing_kwargs={"use_reentrant": False},
               packing=True,
               dataset_text_field="text", eval_strategy="steps", logging_steps=10, report_to="none",
               dataset_name="trl-lib/Capybara", model_revision="main", trust_remote_code=True, seed=0,
               lr_scheduler_kwargs={"min_lr": 0}, optim_target_modules=["attn"], env={"X": "1"})
    assert run.ignored == [] and run.warnings == []
    typo = read(tmp_path, learning_rat=1e-4)
    assert typo.ignored == ["learning_rat (did you mean learning_rate?)"]


def test_every_key_is_read_or_irrelevant() -> None:
    assert not READ & RECOGNISED and RECOGNISED <= KNOWN
    assert {"fsdp", "fsdp_config", "dtype", "use_peft", "load_in_4bit"} <= READ


def test_not_a_training_config(tmp_path) -> None:
    with pytest.raises(FtplanError, match="not a training config: do_train is false"):
        read(tmp_path, do_train=False, do_predict=True)


def test_fix_writes_pure_bf16_as_the_model_dtype(tmp_path) -> None:
    run = read(tmp_path, max_length=1024)
    pure = config_changes(run, {"precision": "bf16"}, {})
    assert pure == {"bf16": True, "fp16": False, "dtype": "bfloat16"}
    assert config_changes(run, {"lora_target": "all"}, {}) == {"lora_target_modules": "all-linear"}
