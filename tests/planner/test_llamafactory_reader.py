"""LLaMA-Factory configs as LLaMA-Factory runs them: v0 and v1 formats, every accepted key read, recognised or
warned about (with the direction the estimate is off), and the files that train nothing refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from planner.configs import config_changes, fix_config, read_run_config, static_checks
from planner.configs import llamafactory as lf
from planner.configs.common import TRAINING_ARGUMENTS, Keys, read_fsdp
from planner.errors import FtplanError
from planner.stages import PREFERENCE

BASE = """model_name_or_path: qwen2.5-0.5b-instruct
stage: sft
do_train: true
finetuning_type: lora
dataset: identity
template: qwen
cutoff_len: 512
per_device_train_batch_size: 2
gradient_accumulation_steps: 4
learning_rate: 1.0e-4
warmup_ratio: 0.1
bf16: true
output_dir: saves/x
logging_steps: 10
save_steps: 500
"""


def write(tmp_path: Path, text: str, name: str = "train.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def read(tmp_path: Path, extra: str = "", base: str = BASE):
    lines = {line.split(":")[0] for line in extra.splitlines() if ":" in line and not line.startswith(" ")}
    kept = "\n".join(line for line in base.splitlines() if line.split(":")[0] not in lines)
    return read_run_config(write(tmp_path, kept + "\n" + extra))


def codes(run) -> dict[str, str]:
    return {w.code: w.data["direction"] for w in run.warnings}


# ---------------------------------------------------------------- warnings with a direction


def test_a_plain_config_has_no_warnings_and_each_key_has_a_treatment(tmp_path) -> None:
    run = read(tmp_path)
    assert run.warnings == [] and run.ignored == []
    assert run.treatment["cutoff_len"] == "modelled" and run.treatment["finetuning_type"] == "modelled"
    for key in ("output_dir", "logging_steps", "save_steps", "template"):
        assert run.treatment[key] == "irrelevant"
    assert run.plan.optimizer == "adamw-fused"  # transformers' default optim with torch >= 2.8


def test_galore_is_planned_from_its_keys(tmp_path) -> None:
    run = read(tmp_path, "finetuning_type: full\nuse_galore: true\ngalore_rank: 64\ngalore_layerwise: true\n"
                         "pure_bf16: true\ngradient_accumulation_steps: 1\n")
    assert (run.plan.optimizer, run.plan.projection_rank, run.plan.optimizer_in_backward) == ("galore-adamw", 64, True)
    assert not [w for w in run.warnings if w.code == "galore"]


def test_sub_settings_of_a_switch_that_is_off_are_irrelevant(tmp_path) -> None:
    run = read(tmp_path, "galore_rank: 64\nbadam_mode: layer\n")
    assert run.warnings == [] and run.treatment["galore_rank"] == "irrelevant"


@pytest.mark.parametrize(("extra", "code", "direction"), [
    ("use_unsloth: true\n", "use_unsloth", "overstates"),
    ("use_kt: true\nkt_cpu_activation: retain\n", "ktransformers", "overstates"),
    ("shift_attn: true\n", "shift_attn", "overstates"),
    ("mixture_of_depths: convert\n", "mixture_of_depths", "overstates"),
    ("upcast_lmhead_output: true\n", "upcast_lmhead_output", "understates"),
    ("additional_target: embed_tokens,lm_head\n", "additional_target", "understates"),
    ("resize_vocab: true\n", "resize_vocab", "understates"),
    ("finetuning_type: freeze\nfreeze_trainable_modules: mlp\n", "freeze_modules", "overstates"),
    ("finetuning_type: freeze\nfreeze_extra_modules: embed_tokens\n", "freeze_extra", "understates"),
    ("finetuning_type: freeze\nuse_llama_pro: true\n", "llama_pro", "understates"),
    ("image_max_pixels: 262144\nfreeze_vision_tower: false\n", "multimodal", "understates"),
    ("use_dft_loss: true\n", "dft_loss", "understates"),
    ("finetuning_type: full\nuse_asft_loss: true\nasft_alpha: 0.1\n", "asft_loss", "understates"),
    ("fp8: true\nfp8_backend: torchao\n", "fp8", "overstates"),
    ("torch_compile: true\n", "torch_compile", "overstates"),
    ("label_smoothing_factor: 0.1\n", "label_smoothing", "understates"),
    ("tensor_model_parallel_size: 2\npipeline_model_parallel_size: 2\nrecompute_granularity: full\n", "megatron",
     "unknown"),
    ("use_hyper_parallel: true\n", "hyper_parallel", "overstates"),
    ("optim: rmsprop_bnb_8bit\n", "optimizer_nearest", "overstates"),
    ("optim: ademamix\n", "optimizer_nearest", "understates"),
])
def test_settings_ftplan_does_not_model_are_warned_with_their_direction(tmp_path, extra, code, direction) -> None:
    run = read(tmp_path, extra)
    assert codes(run).get(code) == direction, [w.message for w in run.warnings]
    for key in (line.split(":")[0] for line in extra.splitlines()):
        if key not in ("finetuning_type",):
            assert run.treatment[key] in ("warned", "modelled"), key


def test_rmsprop_is_planned_as_one_state_without_a_warning(tmp_path) -> None:
    run = read(tmp_path, "optim: rmsprop\n")
    assert run.plan.optimizer == "sgd-momentum" and run.warnings == []


@pytest.mark.parametrize("key", sorted(lf.V0_KEYS | TRAINING_ARGUMENTS))
def test_every_key_llamafactory_accepts_is_read_recognised_or_warned(tmp_path, key) -> None:
    """No accepted key falls through to the generic "not modelled" warning, and none is called unknown."""
    if key in ("model_name_or_path", "export_dir", "task", "infer_backend", "do_train", "do_predict",
               "predict_with_generate", "do_eval", "deepspeed", "fsdp_config", "stage", "finetuning_type",
               "quantization_method"):
        pytest.skip("read with its own tests")
    for value in ("true", "4", "0.1", "false", "x", "sdpa", "{a: 1}", "[a]"):
        try:
            run = read(tmp_path, f"{key}: {value}\n")
        except FtplanError:
            continue
        assert "not_modelled" not in codes(run) and run.ignored == [], (key, value)
        return
    pytest.fail(f"no value of {key} reads")


# ---------------------------------------------------------------- methods, stages, quantization


def test_oft_is_planned_as_oft_on_the_targets_llamafactory_hands_peft(tmp_path) -> None:
    """model/adapter.py builds OFTConfig(r=oft_rank, oft_block_size=..., target_modules=<lora_target>)."""
    run = read(tmp_path, "finetuning_type: oft\noft_block_size: 16\nlora_target: q_proj,v_proj\n")
    assert (run.plan.method, run.plan.oft_block_size, run.plan.oft_blocks, run.plan.lora_target) == (
        "oft", 16, 0, "q_proj,v_proj")
    assert run.warnings == [] and run.ignored == []
    # on a 4-bit base (LLaMA-Factory's QOFT examples) the plan keeps the base in 16 bits and says so
    quantized = read(tmp_path, "finetuning_type: oft\nquantization_bit: 4\n")
    assert quantized.plan.method == "oft" and quantized.plan.quant_bits is None
    assert codes(quantized) == {"oft_quantized": "overstates"}


@pytest.mark.parametrize(("extra", "stage"), [
    ("stage: pt\n", "pt"), ("stage: dpo\n", "dpo"), ("stage: dpo\npref_loss: ipo\n", "dpo"),
    ("stage: dpo\npref_loss: kto_pair\n", "dpo"), ("stage: dpo\npref_loss: orpo\n", "orpo"),
    ("stage: dpo\npref_loss: simpo\n", "simpo"), ("stage: kto\n", "kto"), ("stage: rm\n", "rm")])
def test_each_stage_is_planned_as_itself(tmp_path, extra, stage) -> None:
    run = read(tmp_path, extra + "pref_beta: 0.1\npref_ftx: 0.5\nkto_chosen_weight: 2.0\n")
    assert run.plan.stage == stage and run.warnings == [] and run.ignored == []
    assert run.plan.reference_model is None  # the stage's default: LLaMA-Factory's, as planner.stages has it
    assert run.plan.seq_len == 512 and run.plan.max_completion_len is None  # cutoff_len: prompt + response
    for key in ("pref_ftx", "kto_chosen_weight"):  # the losses' settings change no memory
        assert run.treatment[key] == "irrelevant"
    # pref_beta changes no memory either, but diagnose's DPO/ORPO loss uses it
    assert run.treatment["pref_beta"] == ("modelled" if stage in PREFERENCE else "irrelevant")
    assert run.hyper.beta == (0.1 if stage in PREFERENCE else None)


def test_a_separate_reference_model_is_planned_whatever_the_method(tmp_path) -> None:
    run = read(tmp_path, "stage: dpo\nref_model: Qwen/Qwen2.5-0.5B\nref_model_adapters: saves/ref\n")
    assert run.plan.reference_model is True and run.plan.method == "lora" and run.warnings == []
    assert any("ref_model Qwen/Qwen2.5-0.5B" in note for note in run.notes)
    quantized = read(tmp_path, "stage: kto\nref_model: r\nref_model_quantization_bit: 4\n")
    assert codes(quantized) == {"ref_model_quantized": "overstates"}
    free = read(tmp_path, "stage: dpo\npref_loss: simpo\nref_model: r\n")  # reference-free: ref_model unused
    assert free.plan.reference_model is None and free.treatment["ref_model"] == "irrelevant"
    sft = read(tmp_path, "ref_model: r\n")
    assert sft.plan.stage == "sft" and sft.plan.reference_model is None


def test_ppo_generates_responses_after_the_prompt_and_warns_what_it_adds(tmp_path) -> None:
    run = read(tmp_path, "stage: ppo\nreward_model: saves/rm\nmax_new_tokens: 256\nppo_buffer_size: 2\n")
    p = run.plan
    assert (p.stage, p.seq_len, p.max_completion_len, p.reference_model) == ("ppo", 768, 256, None)
    assert codes(run) == {"ppo_value_head": "understates"}  # the LoRA reward adapter: nothing to count
    assert any("adapter and value head loaded on the policy" in note for note in run.notes)
    default = read(tmp_path, "stage: ppo\nreward_model: saves/rm\n")
    assert (default.plan.seq_len, default.plan.max_completion_len) == (512 + 1024, 1024)  # generating_args.py
    full = read(tmp_path, "stage: ppo\nfinetuning_type: full\nreward_model: saves/rm\nreward_model_type: full\n"
                          "reward_model_quantization_bit: 8\n")
    assert codes(full) == {"reward_model_quantized": "overstates", "ppo_value_head": "understates"}
    assert any("separate frozen reward model" in note for note in full.notes)
    api = read(tmp_path, "stage: ppo\nreward_model: http://rm:8000\nreward_model_type: api\n")
    assert "ppo_reward_model" not in codes(api)
    separate = read(tmp_path, "stage: ppo\nreward_model: saves/rm\nreward_model_type: full\n")  # beside LoRA
    assert codes(separate)["ppo_reward_model"] == "understates"


@pytest.mark.parametrize(("extra", "match"), [
    ("stage: ppo\n", "needs 'reward_model'"),
    ("stage: ppo\nfinetuning_type: full\nreward_model: r\n", "reward_model_type' lora needs finetuning_type lora"),
    ("stage: ppo\nreward_model: r\nreward_model_type: value\n", "reward_model_type' must be one of"),
    ("stage: dpo\npref_loss: dpop\n", "pref_loss' must be one of"),
])
def test_stage_settings_llamafactory_refuses(tmp_path, extra, match) -> None:
    with pytest.raises(FtplanError, match=match):
        read(tmp_path, extra)


def test_stage_on_the_command_line_overrides_the_file(tmp_path) -> None:
    path = write(tmp_path, BASE.replace("stage: sft", "stage: dpo") + "pref_loss: orpo\n")
    assert read_run_config(path).plan.stage == "orpo"
    overridden = read_run_config(path, stage="dpo")
    assert overridden.plan.stage == "dpo" and any("--stage dpo" in note for note in overridden.notes)
    assert read_run_config(path, stage="simpo").plan.stage == "simpo"
    assert read_run_config(path, stage="sft").plan.stage == "sft"
    with pytest.raises(FtplanError, match="no GRPO stage") as info:
        read_run_config(path, stage="grpo")
    assert info.value.field == "stage"
    with pytest.raises(FtplanError, match="must be one of"):
        read_run_config(path, stage="rlhf")


def test_orpo_is_not_a_stage_in_llamafactory(tmp_path) -> None:
    with pytest.raises(FtplanError, match=r"key 'stage'.*ORPO is stage: dpo with pref_loss: orpo"):
        read(tmp_path, "stage: orpo\n")


@pytest.mark.parametrize(("extra", "bits", "warned"), [
    ("quantization_bit: 4\nquantization_method: bnb\n", 4, False),
    ("quantization_bit: 8\nquantization_method: eetq\n", 8, True),
    ("quantization_bit: 2\nquantization_method: hqq\n", 4, True),
    ("quantization_bit: 4\nquantization_method: gptq\n", None, True),
])
def test_quantization_methods(tmp_path, extra, bits, warned) -> None:
    run = read(tmp_path, extra)
    assert run.plan.quant_bits == bits and ("quantization_method" in codes(run)) is warned


def test_liger_fuses_the_loss_in_sft_only_and_plans_its_other_kernels(tmp_path) -> None:
    sft = read(tmp_path, "enable_liger_kernel: true\n")
    assert sft.plan.fused_loss and sft.plan.liger_kernels == "default" and codes(sft) == {}
    dpo = read(tmp_path, "enable_liger_kernel: true\nstage: dpo\n")
    assert not dpo.plan.fused_loss  # model/loader.py: require_logits outside pt/sft
    # dpo/trainer.py pops the labels, so the Trainer's Liger patch computes the full logits too
    for stage in ("dpo", "kto", "rm"):
        assert not read(tmp_path, f"use_liger_kernel: true\nstage: {stage}\n").plan.fused_loss
    trainer = read(tmp_path, "use_liger_kernel: true\nliger_kernel_config: {fused_linear_cross_entropy: false}\n")
    assert not trainer.plan.fused_loss


def test_packing_and_rope_scaling_are_read(tmp_path) -> None:
    run = read(tmp_path, "packing: true\nneat_packing: true\nrope_scaling: linear\n")
    assert run.warnings == [] and {run.treatment[k] for k in ("packing", "neat_packing", "rope_scaling")} == {
        "modelled"}
    assert any("rope_scaling linear" in note for note in run.notes)


def test_trainer_gradient_checkpointing_turns_it_back_on(tmp_path) -> None:
    run = read(tmp_path, "disable_gradient_checkpointing: true\ngradient_checkpointing: true\n"
                         "gradient_checkpointing_kwargs: {use_reentrant: false}\n")
    assert run.plan.gradient_checkpointing and run.ignored == [] and run.warnings == []


@pytest.mark.parametrize(("value", "ratio", "steps"), [("0.05", 0.05, 0), ("10", 0.0, 10), ("10.0", 0.0, 10)])
def test_float_warmup_steps_is_a_ratio_below_one_as_in_transformers_5(tmp_path, value, ratio, steps) -> None:
    run = read(tmp_path, f"warmup_steps: {value}\nwarmup_ratio: 0.0\n")
    assert (run.hyper.warmup_ratio, run.hyper.warmup_steps) == (ratio, steps)


def test_negative_warmup_steps_is_refused(tmp_path) -> None:
    with pytest.raises(FtplanError, match="'warmup_steps' must be at least 0"):
        read(tmp_path, "warmup_steps: -1\n")


# ---------------------------------------------------------------- what trains nothing


@pytest.mark.parametrize(("text", "key"), [
    ("model_name_or_path: x\nadapter_name_or_path: a\nexport_dir: out\ntemplate: qwen\n", "export_dir"),
    ("model_name_or_path: x\nstage: sft\ndo_predict: true\npredict_with_generate: true\neval_dataset: d\n"
     "finetuning_type: lora\n", "do_predict"),
    ("model_name_or_path: x\nstage: sft\ndo_train: false\ndataset: d\n", "do_train"),
    ("model_name_or_path: x\ntemplate: qwen\ninfer_backend: vllm\n", "'do_train'"),
    ("model_name_or_path: x\ntemplate: qwen\ntask: mmlu_test\nn_shot: 5\n", "task"),
    ("compute_environment: LOCAL_MACHINE\ndistributed_type: FSDP\nnum_processes: 2\n", "compute_environment"),
    ("provider: baseten\ngpu: h100\ngpu_count: 8\nnode_count: 1\n", "axolotl cloud config"),
    ('"<|start_of_svg|>": an SVG document\n"<|end_of_svg|>": its end\n', "new_special_tokens_config"),
])
def test_configs_that_train_nothing_are_refused_naming_the_key(tmp_path, text, key) -> None:
    with pytest.raises(FtplanError, match="not a training config") as info:
        read_run_config(write(tmp_path, text))
    assert key in str(info.value)


def test_a_deepspeed_json_is_not_a_training_config(tmp_path) -> None:
    path = write(tmp_path, json.dumps({"train_batch_size": "auto", "zero_optimization": {"stage": 3}}), "ds.json")
    with pytest.raises(FtplanError, match=r"not a training config.*DeepSpeed config"):
        read_run_config(path)


def test_a_config_without_do_train_is_planned_with_a_note(tmp_path) -> None:
    run = read(tmp_path, base=BASE.replace("do_train: true\n", ""))
    assert any("do_train is not set" in note for note in run.notes) and run.warnings == []


# ---------------------------------------------------------------- sharding


def test_fsdp_options_shard_offload_and_checkpoint(tmp_path) -> None:
    run = read(tmp_path, "finetuning_type: full\nfsdp: full_shard offload auto_wrap\n"
                         "fsdp_config: {activation_checkpointing: true}\ndisable_gradient_checkpointing: true\n")
    assert (run.plan.zero, run.plan.offload_optimizer, run.plan.gradient_checkpointing) == (3, True, True)
    assert run.plan.offload_params and codes(run) == {}  # parameter shards planned on the host
    keys = Keys({"fsdp": ["full_shard"], "fsdp_config": {"fsdp_version": 2, "reshard_after_forward": False}}, "x")
    assert read_fsdp(keys, tmp_path).zero == 2
    with pytest.raises(FtplanError, match="unknown FSDP option 'fully'"):
        read_fsdp(Keys({"fsdp": "fully"}, "x"), tmp_path)


def test_deepspeed_parameter_offload_is_warned(tmp_path) -> None:
    (tmp_path / "ds.json").write_text(json.dumps({"zero_optimization": {
        "stage": 3, "offload_optimizer": {"device": "cpu"}, "offload_param": {"device": "cpu"}}}))
    run = read(tmp_path, f"finetuning_type: full\ndeepspeed: {tmp_path / 'ds.json'}\n")
    assert (run.plan.zero, run.plan.offload_optimizer, run.plan.offload_params) == (3, True, True)
    assert "param_offload" not in codes(run)


def test_sharding_on_one_gpu_is_a_warning(tmp_path) -> None:
    (tmp_path / "ds.json").write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    run = read(tmp_path, f"finetuning_type: full\ndeepspeed: {tmp_path / 'ds.json'}\n")
    one = [f for f in static_checks(run, None, 1) if f.code == "sharding_on_one_gpu"]
    assert one and one[0].severity == "warning" and "--gpus N" in one[0].message
    assert not [f for f in static_checks(run, None, 4) if f.code == "sharding_on_one_gpu"]


# ---------------------------------------------------------------- unknown keys


def test_real_keys_never_get_a_did_you_mean(tmp_path) -> None:
    run = read(tmp_path, "gradient_checkpointing_kwargs: {use_reentrant: false}\ngalore_target: all\n"
                         "ddp_find_unused_parameters: false\nlr_scheduler_kwargs: {}\n")
    assert run.ignored == [] and run.warnings == []


def test_unknown_keys_suggest_only_slips(tmp_path) -> None:
    run = read(tmp_path, "orpo_alpha: 0.1\nlearning_rat: 1\nper_device_batch_size: 2\n")
    assert "orpo_alpha" in run.ignored  # not "did you mean lora_alpha"
    assert "learning_rat (did you mean learning_rate?)" in run.ignored
    assert "per_device_batch_size (did you mean per_device_train_batch_size?)" in run.ignored
    assert run.treatment["orpo_alpha"] == "unknown"
    (message,) = [f.message for f in static_checks(run, None, 1) if f.code == "unknown_key"
                  and "orpo_alpha" in f.message]
    assert "not a setting ftplan knows for LLaMA-Factory" in message
    (slip,) = [f for f in static_checks(run, None, 1) if f.data.get("key") == "learning_rat"]
    # the key quoted as written, the suggestion outside the quotes
    assert slip.severity == "warning" and "key 'learning_rat' is not a setting" in slip.message
    assert "(did you mean learning_rate?); it was ignored" in slip.message


def test_the_unknown_key_message_names_the_framework_without_a_bad_article(tmp_path) -> None:
    run = read_run_config(write(tmp_path, "base_model: tiny-llama\nmicro_batch_size: 1\nmy_flag: 1\n"))
    (finding,) = [f for f in static_checks(run, None, 1) if f.code == "unknown_key"]
    assert "a axolotl" not in finding.message and "for axolotl" in finding.message


# ---------------------------------------------------------------- the v1 format

V1 = """model: qwen2.5-0.5b-instruct
model_class: llm
peft_config:
  name: lora
  r: 16
  lora_alpha: 32
  lora_dropout: 0.05
  target_modules: all
kernel_config:
  name: auto
dist_config:
  name: fsdp2
  dcp_path: null
train_dataset: data/v1_sft_demo.yaml
output_dir: ./outputs/x
micro_batch_size: 2
cutoff_len: 1024
learning_rate: 1.0e-4
max_steps: 10
sample_backend: hf
max_new_tokens: 128
"""


def test_v1_lora_with_fsdp2(tmp_path) -> None:
    run = read_run_config(write(tmp_path, V1))
    p = run.plan
    assert run.format == "llamafactory" and run.model == "qwen2.5-0.5b-instruct"
    assert (p.method, p.lora_rank, p.lora_dropout, p.batch_size, p.seq_len) == ("lora", 16, 0.05, 2, 1024)
    assert (p.zero, p.precision, p.gradient_checkpointing, p.attention) == (3, "bf16-mixed", True, "sdpa")
    assert run.hyper.lora_alpha == 32 and run.warnings == [] and run.ignored == []
    assert run.treatment["peft_config"] == "modelled" and run.treatment["sample_backend"] == "irrelevant"


def test_fix_writes_a_v1_file_in_v1_keys(tmp_path) -> None:
    """--fix on a v1 config writes v1's own top-level keys (v1/config/training_args.py, model_args.py), which v1's
    parser accepts, and leaves the plugin mappings' settings alone; read back, the changes are planned."""
    source = write(tmp_path, V1)
    run = read_run_config(source)
    changes = config_changes(run, {"batch_size": 1, "gradient_checkpointing": False, "attention": "eager",
                                   "seq_len": 512, "lora_rank": 4, "method": "qlora"}, {"learning_rate": 5e-5})
    assert changes == {"micro_batch_size": 1, "enable_activation_checkpointing": False, "flash_attn": "eager",
                       "cutoff_len": 512, "learning_rate": 5e-5}
    assert not changes.keys() & lf.V0_ALL - lf.V1_KEYS  # nothing only v0 parses
    fixed = read_run_config(fix_config(source, changes, tmp_path / "fixed.yaml"))
    p = fixed.plan
    assert (p.batch_size, p.gradient_checkpointing, p.attention, p.seq_len) == (1, False, "eager", 512)
    assert (p.lora_rank, p.method, fixed.hyper.learning_rate) == (16, "lora", 5e-5) and fixed.ignored == []


def test_v1_full_without_sharding_trains_in_fp32(tmp_path) -> None:
    text = "model: qwen2.5-0.5b-instruct\nmicro_batch_size: 1\nglobal_batch_size: 8\n"
    run = read_run_config(write(tmp_path, text))
    assert (run.plan.method, run.plan.precision, run.plan.zero, run.plan.grad_accum) == ("full", "fp32", 0, 8)


def test_v1_deepspeed_quantization_freeze_and_the_default_model(tmp_path) -> None:
    (tmp_path / "ds.json").write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    ds = read_run_config(write(tmp_path, f"model: qwen2.5-0.5b-instruct\ndist_config:\n  name: deepspeed\n"
                                         f"  config_file: {tmp_path / 'ds.json'}\n"))
    assert ds.plan.zero == 2 and ds.plan.precision == "bf16-mixed"
    q = read_run_config(write(tmp_path, "model: m\npeft_config: {name: lora}\nquant_config: {name: bnb}\n"))
    assert (q.plan.method, q.plan.quant_bits, q.plan.lora_rank) == ("qlora", 4, 8)  # peft.py LoraParams: r 8
    frozen = read_run_config(write(tmp_path, "micro_batch_size: 1\npeft_config:\n  name: freeze\n"
                                             "  freeze_trainable_layers: 4\n"))
    assert frozen.model == lf.V1_MODEL and (frozen.plan.method, frozen.plan.freeze_trainable_layers) == ("freeze", 4)


def test_v1_warnings_and_refusals(tmp_path) -> None:
    run = read_run_config(write(tmp_path, V1 + "mp_replicate_size: 2\nbatching_strategy: padding_free\n"
                                                "optim_config: {name: muon}\nper_device_train_batch_size: 4\n"))
    assert {"v1_parallel", "batching_strategy", "muon", "other_format"} <= set(codes(run))
    assert run.treatment["per_device_train_batch_size"] == "warned" and run.plan.batch_size == 2
    with pytest.raises(FtplanError, match=r"not a training config: peft_config\.export_dir"):
        read_run_config(write(tmp_path, "model: m\npeft_config: {name: lora, export_dir: out}\n"))
    with pytest.raises(FtplanError, match="peft_config name must be lora or freeze"):
        read_run_config(write(tmp_path, "model: m\npeft_config: {name: oft}\n"))


@pytest.mark.parametrize(("extra", "stage"), [
    ("", "sft"), ("pref_beta: 0.1\n", "dpo"), ("pref_loss: sigmoid\ndpo_label_smoothing: 0.1\n", "dpo"),
    ("pref_loss: orpo\n", "orpo"), ("pref_loss: simpo\nsimpo_gamma: 0.5\n", "simpo")])
def test_v1_preference_settings_plan_the_dpo_command(tmp_path, extra, stage) -> None:
    run = read_run_config(write(tmp_path, V1 + extra))
    assert run.plan.stage == stage and run.warnings == []
    command = "dpo" if extra else "sft"
    assert any(f"`llamafactory-cli {command}`" in note for note in run.notes)
    assert run.plan.reference_model is None  # v1/trainers/dpo_trainer.py: a copy for full, the adapter disabled


def test_v1_stage_flag_names_the_command(tmp_path) -> None:
    path = write(tmp_path, V1)
    assert read_run_config(path, stage="rm").plan.stage == "rm"
    assert read_run_config(path, stage="simpo").plan.stage == "simpo"
    with pytest.raises(FtplanError, match="v1 runs sft, dpo"):
        read_run_config(path, stage="kto")
    with pytest.raises(FtplanError, match="pref_loss' must be one of sigmoid, orpo, simpo"):
        read_run_config(write(tmp_path, V1 + "pref_loss: ipo\n"))


def test_a_numeric_deepspeed_train_batch_size_sets_the_gpu_count(tmp_path) -> None:
    """The HF Trainer refuses a DeepSpeed train_batch_size other than micro-batch x accumulation x processes
    (transformers integrations/deepspeed.py), so a number there says how many GPUs the run takes."""
    write(tmp_path, json.dumps({"train_batch_size": 64, "zero_optimization": {"stage": 3}}), "ds.json")
    run = read(tmp_path, f"deepspeed: {tmp_path / 'ds.json'}\nper_device_train_batch_size: 2\n"
                         "gradient_accumulation_steps: 4\n")
    assert (run.gpus, run.plan.zero) == (8, 3)
    write(tmp_path, json.dumps({"train_batch_size": "auto", "zero_optimization": {"stage": 3}}), "ds.json")
    assert read(tmp_path, f"deepspeed: {tmp_path / 'ds.json'}\n").gpus is None  # "auto": the launcher decides
    write(tmp_path, json.dumps({"train_batch_size": 63, "zero_optimization": {"stage": 3}}), "ds.json")
    assert read(tmp_path, f"deepspeed: {tmp_path / 'ds.json'}\nper_device_train_batch_size: 2\n").gpus is None


def test_unsloth_checkpointing_offloads_the_layer_inputs(tmp_path) -> None:
    run = read(tmp_path, "use_unsloth_gc: true\n")
    assert (run.plan.gradient_checkpointing, run.plan.activation_offload) == (True, "checkpoint")
    assert "use_unsloth_gc" not in codes(run)
    off = read(tmp_path, "use_unsloth_gc: true\ndisable_gradient_checkpointing: true\n")
    assert off.plan.activation_offload == "off" and any("use_unsloth_gc" in n for n in off.notes)


# ---------------------------------------------------------------- parallelism beyond ZeRO (issue 11)


def test_megatron_sizes_are_planned(tmp_path) -> None:
    run = read(tmp_path, "tensor_model_parallel_size: 2\npipeline_model_parallel_size: 2\n"
                         "expert_model_parallel_size: 4\ncontext_parallel_size: 2\nsequence_parallel: true\n"
                         "use_distributed_optimizer: true\n")
    p = run.plan
    assert (p.tensor_parallel, p.pipeline_parallel, p.expert_parallel, p.context_parallel) == (2, 2, 4, 2)
    assert p.gpus == 16 and p.zero == 1  # PP x lcm(TP x CP, TP x EP); the distributed optimizer is ZeRO-1
    assert codes(run) == {}
    loose = read(tmp_path, "tensor_model_parallel_size: 2\n")
    assert codes(loose) == {"megatron_sequence_parallel": "understates"}


def test_v1_cp_size_splits_sequences(tmp_path) -> None:
    run = read_run_config(write(tmp_path, V1 + "cp_size: 2\ndp_size: 2\n"))
    assert (run.plan.context_parallel, run.plan.gpus, run.gpus) == (2, 4, 4)
    assert "v1_parallel" not in codes(run)
