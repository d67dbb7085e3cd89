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
    note = next(n for n in run.notes if n.startswith("TRL SFTConfig"))
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
    ({"dtype": "float16", "bf16": False}, "fp16"),  # fp16 weights, no scaler (fp16: true refuses them)
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
    assert (fp32_lora.plan.precision, fp32_lora.plan.weights_dtype) == ("bf16-mixed", "fp32")
    bf16_lora = read(tmp_path, use_peft=True, dtype="bfloat16")
    assert bf16_lora.plan.weights_dtype is None
    with pytest.raises(FtplanError, match="Attempting to unscale FP16 gradients"):
        read(tmp_path, max_length=1024, dtype="float16", fp16=True)
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
    ("lora_modules_to_save", ["lm_head"], "understates"),
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
    ("adamw_torch_8bit", "adamw-torch-8bit", None),
    ("adamw_torch_4bit", "adamw-torch-4bit", None),
    ("paged_adamw_32bit", "paged-adamw", None),
    ("lion_32bit", "lion", None),
    ("galore_adamw", "galore-adamw", None),
    ("apollo_adamw_layerwise", "apollo-adamw", None),
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


@pytest.mark.parametrize(("keys", "stage", "fused", "lr"), [
    ({"beta": 0.1, "loss_type": "sigmoid", "label_smoothing": 0.1}, "dpo", True, 1e-6),
    ({"beta": 0.1, "rpo_alpha": 1.0, "use_weighting": True}, "dpo", True, 1e-6),
    ({"desirable_weight": 1.0, "undesirable_weight": 1.5, "beta": 0.1}, "kto", True, 1e-6),
    ({"center_rewards_coefficient": 0.01}, "rm", False, 1e-4),
    ({"cpo_alpha": 1.0, "loss_type": "simpo", "simpo_gamma": 0.5}, "simpo", False, 1e-6),
    ({"loss_type": "simpo", "beta": 2.0}, "simpo", False, 1e-6),
    ({"orpo_alpha": 0.1}, "orpo", False, 1e-6),
    ({"num_generations": 4, "epsilon": 0.2, "scale_rewards": "group"}, "grpo", True, 1e-6),
    ({"normalize_advantages": True}, "grpo", True, 1e-6),
])
def test_each_trainer_is_planned_as_its_stage(tmp_path, keys: dict, stage: str, fused: bool, lr: float) -> None:
    run = read(tmp_path, **keys)
    p = run.plan
    assert (p.stage, p.fused_loss, run.hyper.learning_rate) == (stage, fused, lr)
    assert p.gradient_checkpointing and run.ignored == []  # a TRL config: TRL's defaults
    assert not [w for w in run.warnings if w.code.startswith("stage_")]  # no "planned as SFT" any more
    # the losses' own settings change no memory: irrelevant, so --strict does not fail on them
    for key in ("loss_type", "label_smoothing", "rpo_alpha", "use_weighting", "desirable_weight", "simpo_gamma",
                "epsilon", "scale_rewards", "normalize_advantages", "center_rewards_coefficient"):
        if key in keys:
            assert run.treatment[key] == "irrelevant", key


def test_cpo_with_another_loss_is_planned_reference_free(tmp_path) -> None:
    run = read(tmp_path, cpo_alpha=1.0, loss_type="hinge", max_length=512, max_completion_length=256)
    assert (run.plan.stage, run.plan.seq_len, run.plan.max_completion_len) == ("simpo", 512, 256)
    assert any("reference-free like SimPO" in note for note in run.notes)


def test_dpo_and_kto_precompute_the_reference_log_probs(tmp_path) -> None:
    run = read(tmp_path, beta=0.1, precompute_ref_log_probs=True, max_length=2048)
    p = run.plan
    assert (p.stage, p.precompute_ref_log_probs, p.reference_model, p.seq_len) == ("dpo", True, None, 2048)
    assert run.treatment["precompute_ref_log_probs"] == "modelled"
    assert run.treatment["beta"] == "modelled" and run.hyper.beta == 0.1  # for diagnose's DPO loss
    assert run.warnings == []
    kto = read(tmp_path, desirable_weight=1.0, precompute_ref_log_probs=True)
    assert kto.plan.stage == "kto" and kto.plan.precompute_ref_log_probs
    with pytest.raises(FtplanError, match=r"sync_ref_model.*precompute_ref_log_probs"):
        read(tmp_path, beta=0.1, precompute_ref_log_probs=True, sync_ref_model=True)
    zero3 = read(tmp_path, beta=0.1, sync_ref_model=True, deepspeed={"zero_optimization": {"stage": 3}})
    assert codes(zero3)["sync_ref_model"] == ("sync_ref_model", "understates")
    assert read(tmp_path, beta=0.1, sync_ref_model=True).warnings == []  # an in-place mix: no memory


@pytest.mark.parametrize(("beta", "peft", "reference"), [
    (None, False, False), (0.0, False, False), (0.04, False, True), (0.04, True, None), (0.0, True, False)])
def test_grpo_keeps_a_reference_model_only_with_a_kl_beta(tmp_path, beta, peft, reference) -> None:
    keys = {"num_generations": 8, **({"beta": beta} if beta is not None else {}),
            **({"use_peft": True} if peft else {})}
    run = read(tmp_path, **keys)
    assert run.plan.reference_model is reference
    if beta is None:  # grpo_config.py: beta 0.0
        assert "beta 0" in next(n for n in run.notes if n.startswith("TRL GRPOConfig"))


def test_grpo_generations_completions_and_vllm(tmp_path) -> None:
    run = read(tmp_path, num_generations=4, max_completion_length=256, max_prompt_length=512,
               per_device_train_batch_size=8)
    p = run.plan
    assert (p.stage, p.num_generations, p.seq_len, p.max_completion_len, p.batch_size) == ("grpo", 4, 768, 256, 8)
    assert (p.vllm, p.vllm_gpu_memory_utilization, p.fused_loss) == ("off", 0.3, True)
    default = read(tmp_path, scale_rewards="group")  # grpo_config.py: num_generations 8, max_completion_length 512
    assert (default.plan.num_generations, default.plan.max_completion_len) == (8, 512)
    rloo = read(tmp_path, normalize_advantages=True)  # rloo_config.py: beta 0.05, num_generations 2
    assert (rloo.plan.stage, rloo.plan.num_generations, rloo.plan.reference_model) == ("grpo", 2, True)
    colocate = read(tmp_path, use_vllm=True, vllm_gpu_memory_utilization=0.45)
    assert (colocate.plan.vllm, colocate.plan.vllm_gpu_memory_utilization) == ("colocate", 0.45)
    server = read(tmp_path, use_vllm=True, vllm_mode="server", vllm_server_host="10.0.0.2")
    assert server.plan.vllm == "server" and server.treatment["vllm_server_host"] == "irrelevant"
    assert read(tmp_path, num_generations=8, vllm_mode="server").plan.vllm == "off"  # use_vllm is the switch
    with pytest.raises(FtplanError, match="vllm_mode"):
        read(tmp_path, use_vllm=True, vllm_mode="remote")
    sleeping = read(tmp_path, use_vllm=True, vllm_enable_sleep_mode=True)
    assert codes(sleeping)["vllm_enable_sleep_mode"] == ("vllm_sleep", "overstates")


def test_grpo_sequences_are_prompt_and_completion(tmp_path) -> None:
    run = read(tmp_path, num_generations=8, max_completion_length=256, max_prompt_length=512)
    assert run.plan.seq_len == 768 and run.hyper.learning_rate == 1e-6  # grpo_config.py
    assert "grpo_prompt" not in {w.code for w in run.warnings}
    uncapped = read(tmp_path, num_generations=8, max_completion_length=256)  # TRL 1.x caps no prompt
    assert (uncapped.plan.seq_len, uncapped.plan.max_completion_len) == (512 + 256, 256)
    warned = codes(uncapped)["max_completion_length"]
    assert warned == ("grpo_prompt", "unknown")
    assert "512-token prompts" in next(w for w in uncapped.warnings if w.code == "grpo_prompt").message
    vllm_cap = read(tmp_path, num_generations=8, max_completion_length=256, vllm_max_model_length=2048)
    assert vllm_cap.plan.seq_len == 2048 and "grpo_prompt" not in {w.code for w in vllm_cap.warnings}


def test_grpo_generation_batch_and_memory_settings_are_warned(tmp_path) -> None:
    # TRL's default generation batch (micro-batch x accumulation) is the one the plan sizes: no warning
    accumulated = read(tmp_path, num_generations=8, per_device_train_batch_size=4, gradient_accumulation_steps=4)
    assert "generation_batch" not in {w.code for w in accumulated.warnings}
    bigger = read(tmp_path, num_generations=8, per_device_train_batch_size=4, generation_batch_size=64)
    assert codes(bigger)["generation_batch_size"] == ("generation_batch", "understates")
    assert "64 completions per GPU" in next(w for w in bigger.warnings if w.code == "generation_batch").message
    assert "generation_batch" not in {w.code for w in read(
        tmp_path, num_generations=8, gradient_accumulation_steps=4, use_vllm=True).warnings}
    assert codes(read(tmp_path, num_generations=8, steps_per_generation=2))["steps_per_generation"][0] == (
        "generation_batch")
    with pytest.raises(FtplanError, match=r"generation_batch_size.*steps_per_generation"):
        read(tmp_path, generation_batch_size=64, steps_per_generation=2)
    zero3 = read(tmp_path, num_generations=8, deepspeed={"zero_optimization": {"stage": 3}})
    assert codes(zero3)["deepspeed"] == ("ds3_generation", "understates")
    assert "ds3_generation" not in {w.code for w in read(
        tmp_path, num_generations=8, ds3_gather_for_generation=False,
        deepspeed={"zero_optimization": {"stage": 3}}).warnings}
    assert codes(read(tmp_path, num_generations=8, cast_lm_head_to_fp32=True))["cast_lm_head_to_fp32"] == (
        "lm_head_fp32", "understates")


def test_trls_fused_lm_head_replaces_liger_in_its_preference_trainers(tmp_path) -> None:
    dpo = read(tmp_path, beta=0.1, use_liger_kernel=True)
    assert dpo.plan.fused_loss  # trainer/utils.py add_fused_lm_head, whatever Liger does
    with pytest.raises(FtplanError, match="refuses it"):
        read(tmp_path, beta=0.1, use_liger_kernel=True, liger_kernel_config={"fused_linear_cross_entropy": True})
    orpo = read(tmp_path, orpo_alpha=0.1, use_liger_kernel=True)
    assert not orpo.plan.fused_loss  # orpo_trainer.py calls the model without labels: full logits
    assert not read(tmp_path, center_rewards_coefficient=0.01, use_liger_kernel=True).plan.fused_loss
    assert "lora_task_type" not in codes(read(tmp_path, center_rewards_coefficient=0.01, use_peft=True,
                                              lora_task_type="SEQ_CLS"))


def test_cpo_alpha_zero_drops_the_nll_term(tmp_path) -> None:
    """cpo_trainer.py computes the NLL only when cpo_alpha != 0 (default 1.0); loss_type alphapo sets it to 0."""
    simpo = read(tmp_path, loss_type="simpo", simpo_gamma=0.5)
    assert (simpo.plan.stage, simpo.plan.nll_term) == ("simpo", True)
    assert not read(tmp_path, loss_type="simpo", cpo_alpha=0.0).plan.nll_term
    assert read(tmp_path, loss_type="simpo", cpo_alpha=0.0).treatment["cpo_alpha"] == "modelled"
    alphapo = read(tmp_path, loss_type="alphapo")
    assert (alphapo.plan.stage, alphapo.plan.nll_term) == ("simpo", False)
    assert read(tmp_path, orpo_alpha=0.1).plan.nll_term  # ORPO always adds it


def test_a_preference_trainers_beta_is_kept_for_diagnose(tmp_path) -> None:
    assert read(tmp_path, beta=0.3, loss_type="sigmoid").hyper.beta == 0.3
    assert read(tmp_path, orpo_alpha=0.2).hyper.beta == 0.2  # TRL 0.x's name for ORPO's lambda
    assert read(tmp_path, beta=0.05, loss_type="sigmoid", precompute_ref_log_probs=True).hyper.beta == 0.05
    assert read(tmp_path, num_generations=8, beta=0.04).hyper.beta is None  # GRPO's beta weighs the KL term
    assert read(tmp_path, loss_type="sigmoid", precompute_ref_log_probs=True).hyper.beta is None  # TRL's default


def test_the_stage_flag_names_the_trainer(tmp_path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({**MODEL, "beta": 0.1, "max_length": 512}))
    assert read_run_config(path).plan.stage == "dpo"
    orpo = read_run_config(path, stage="orpo")
    assert (orpo.plan.stage, orpo.plan.fused_loss) == ("orpo", False)
    assert read_run_config(path, stage="kto").plan.stage == "kto"
    grpo = read_run_config(path, stage="grpo")
    assert (grpo.plan.stage, grpo.plan.reference_model) == ("grpo", True)  # beta 0.1 on a full fine-tune
    with pytest.raises(FtplanError, match="no PPO trainer"):
        read_run_config(path, stage="ppo")
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump({**MODEL, "per_device_train_batch_size": 2}))
    forced = read_run_config(plain, stage="dpo")  # `trl dpo` on a TrainingArguments file: TRL's defaults
    assert forced.plan.stage == "dpo" and forced.plan.gradient_checkpointing and forced.hyper.learning_rate == 1e-6
    shared = read(tmp_path, beta=0.1)
    assert any("--stage names the trainer" in note for note in shared.notes)


def test_liger(tmp_path) -> None:
    run = read(tmp_path, max_length=1024, use_liger_kernel=True)
    assert run.plan.fused_loss and run.plan.liger_kernels == "default" and run.warnings == []
    only = read(tmp_path, max_length=1024, use_liger_kernel=True,
                liger_kernel_config={"rope": False, "rms_norm": False, "swiglu": False})
    assert only.plan.fused_loss and only.plan.liger_kernels == "" and only.warnings == []
    off = read(tmp_path, max_length=1024, use_liger_kernel=True,
               liger_kernel_config={"fused_linear_cross_entropy": False})
    assert not off.plan.fused_loss


def test_fsdp(tmp_path) -> None:
    run = read(tmp_path, max_length=1024, fsdp="full_shard auto_wrap offload",
               fsdp_config={"fsdp_activation_checkpointing": True}, gradient_checkpointing=False)
    assert (run.plan.zero, run.plan.offload_optimizer, run.plan.gradient_checkpointing) == (3, True, True)
    assert run.plan.offload_params and "fsdp_config" not in codes(run)  # parameter shards planned on the host
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
    assert (ds.plan.zero, ds.plan.offload_optimizer, ds.plan.offload_params) == (3, True, True)
    assert "accelerate_config" not in codes(ds)
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


def test_activation_offloading_is_planned(tmp_path) -> None:
    saved = read(tmp_path, use_peft=True, activation_offloading=True)
    assert saved.plan.activation_offload == "saved" and "activation_offloading" not in codes(saved)
    kwargs = read(tmp_path, gradient_checkpointing=True, gradient_checkpointing_kwargs={"offload": True})
    assert (kwargs.plan.gradient_checkpointing, kwargs.plan.activation_offload) == (True, "checkpoint")
    assert read(tmp_path, gradient_checkpointing=False,
                gradient_checkpointing_kwargs={"offload": True}).plan.activation_offload == "off"


def test_pure_fp16_and_the_qlora_base_dtype(tmp_path) -> None:
    """float16 weights with neither switch train as loaded (pure fp16); TRL's QLoRA computes in `dtype`
    (get_quantization_config), which stays the frozen base's dtype under bf16 autocast."""
    pure = read(tmp_path, max_length=1024, dtype="float16", bf16=False)
    assert (pure.plan.precision, pure.plan.weights_dtype) == ("fp16", None)
    qlora = read(tmp_path, use_peft=True, load_in_4bit=True, bf16=True)
    assert (qlora.plan.method, qlora.plan.precision, qlora.plan.weights_dtype) == ("qlora", "bf16-mixed", "fp32")
    t4 = read(tmp_path, use_peft=True, load_in_4bit=True, dtype="float16", fp16=True)
    assert (t4.plan.precision, t4.plan.weights_dtype) == ("fp16-mixed", None)


# ---------------------------------------------------------------- parallelism beyond ZeRO (issue 11)


def test_accelerate_parallelism_config_is_planned(tmp_path) -> None:
    run = read(tmp_path, max_length=1024, fsdp="full_shard",
               parallelism_config={"dp_shard_size": 2, "tp_size": 2, "cp_size": 2})
    assert (run.plan.tensor_parallel, run.plan.context_parallel, run.plan.gpus, run.gpus) == (2, 2, 8, 8)
    assert codes(run) == {}
    hsdp = read(tmp_path, max_length=1024, fsdp="full_shard",
                parallelism_config={"dp_replicate_size": 2, "dp_shard_size": 2})
    assert codes(hsdp)["parallelism_config"] == ("hybrid_shard", "understates")
    with pytest.raises(FtplanError, match="parallelism_config' tp_size must be a whole number"):
        read(tmp_path, parallelism_config={"tp_size": 0})
