"""The axolotl reader: axolotl's defaults and key semantics, on configs written here (pure Python, no
torch)."""

from __future__ import annotations

import json

import pytest
import yaml

from planner.configs import fix_config, read_run_config
from planner.configs.axolotl import KNOWN, PLANNED, RECOGNISED, SCHEMA_KEYS, WARNED_KEYS
from planner.errors import FtplanError

BASE = {"base_model": "meta-llama/Llama-3.1-8B", "learning_rate": 2e-5,
        "datasets": [{"path": "tatsu-lab/alpaca", "type": "alpaca"}]}
LORA = {**BASE, "adapter": "lora", "lora_r": 16, "lora_alpha": 32, "lora_target_linear": True}


def read(tmp_path, **keys):
    path = tmp_path / "axolotl.yaml"
    path.write_text(yaml.safe_dump({**BASE, **keys}, sort_keys=False))
    return read_run_config(path)


def codes(run) -> dict[str, str]:
    """Each warning's code and direction, by the first key it names."""
    return {w.data["keys"][0]: (w.code, w.data["direction"]) for w in run.warnings}


def test_defaults_are_axolotls(tmp_path) -> None:
    run = read(tmp_path)
    p, h = run.plan, run.hyper
    assert run.format == "axolotl" and p.method == "full"
    # schemas/config.py: sequence_len 512, bf16 auto; schemas/training.py: micro_batch_size 1,
    # adamw_torch_fused
    assert (p.seq_len, p.batch_size, p.grad_accum, p.optimizer) == (512, 1, 1, "adamw-fused")
    assert p.attention == "sdpa"  # transformers' default, not eager
    assert p.precision == "bf16" and h.bf16  # bf16 auto: bfloat16 weights, no fp32 master copy
    assert not p.gradient_checkpointing and p.zero == 0
    assert (h.lr_scheduler, h.epochs, h.warmup_ratio) == ("cosine", 1.0, 0.03)  # warmup: 3% by default
    assert any("bf16 unset" in n for n in run.notes) and run.ignored == []
    assert codes(run) == {"bf16": ("fp32_embeddings", "understates")}


@pytest.mark.parametrize(("keys", "kernel"), [
    ({"attn_implementation": "flash_attention_2"}, "flash"),
    ({"attn_implementation": "flash_attention_3"}, "flash"),
    ({"attn_implementation": "kernels-community/flash-attn3"}, "flash"),
    ({"attn_implementation": "sdpa"}, "sdpa"),
    ({"attn_implementation": "eager"}, "eager"),
    ({"attn_implementation": "flex_attention"}, "flash"),
    ({"attn_implementation": "xformers"}, "flash"),
    ({"attn_implementation": "fp8"}, "sdpa"),  # loaded as sdpa (loaders/model.py)
    ({"flash_attention": True}, "flash"),  # the deprecated spelling
    ({"sdp_attention": True}, "sdpa"),
    ({"eager_attention": True}, "eager"),
    ({"flash_attention": False}, "sdpa"),
    ({}, "sdpa"),
])
def test_attention(tmp_path, keys: dict, kernel: str) -> None:
    run = read(tmp_path, **keys)
    assert run.plan.attention == kernel and run.ignored == []


def test_attn_implementation_with_a_legacy_switch_is_refused(tmp_path) -> None:
    with pytest.raises(FtplanError, match="'attn_implementation' cannot be combined with the deprecated"):
        read(tmp_path, attn_implementation="sdpa", flash_attention=True)


def test_full_bf16_is_pure_bf16_and_says_where_axolotl_keeps_fp32(tmp_path) -> None:
    flash = read(tmp_path, bf16=True, attn_implementation="flash_attention_2")
    assert flash.plan.precision == "bf16" and flash.warnings == []
    # sdpa/eager: the embeddings, LM head and norms stay fp32 (loaders/model.py _configure_embedding_dtypes)
    sdpa = read(tmp_path, bf16="auto", attn_implementation="sdpa")
    assert sdpa.plan.precision == "bf16"
    assert codes(sdpa)["attn_implementation"] == ("fp32_embeddings", "understates")
    cce = read(tmp_path, bf16=True, plugins=["axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin"])
    assert "fp32_embeddings" not in {w.code for w in cce.warnings}
    assert read(tmp_path, bf16=False).plan.precision == "fp32"
    assert read(tmp_path, bf16=False, bfloat16=True, attn_implementation="eager").plan.precision == "bf16"
    with pytest.raises(FtplanError, match="Attempting to unscale FP16 gradients"):
        read(tmp_path, bf16=False, fp16=True, attn_implementation="flash_attention_2")
    pure = read(tmp_path, bf16=False, float16=True, attn_implementation="flash_attention_2")
    assert pure.plan.precision == "fp16"


def test_sharded_full_fine_tunes_keep_fp32_master_weights(tmp_path) -> None:
    (tmp_path / "ds.json").write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    ds = read(tmp_path, bf16=True, deepspeed=str(tmp_path / "ds.json"),
              attn_implementation="flash_attention_2")
    assert (ds.plan.precision, ds.plan.zero) == ("bf16-mixed", 3)
    fsdp = read(tmp_path, bf16=True, fsdp_version=2, fsdp_config={"reshard_after_forward": True})
    assert (fsdp.plan.precision, fsdp.plan.zero) == ("bf16-mixed", 3)


def test_adapters_train_under_autocast(tmp_path) -> None:
    lora = read(tmp_path, **LORA, attn_implementation="flash_attention_2")
    assert (lora.plan.method, lora.plan.precision, lora.plan.lora_target) == ("lora", "bf16-mixed", "all")
    qlora = read(tmp_path, **{**LORA, "adapter": "qlora"}, load_in_4bit=True)
    assert (qlora.plan.method, qlora.plan.base_bits, qlora.plan.double_quant) == ("qlora", 4, True)
    single = read(tmp_path, **{**LORA, "adapter": "qlora"}, load_in_4bit=True,
                  bnb_config_kwargs={"bnb_4bit_use_double_quant": False})
    assert not single.plan.double_quant
    eight = read(tmp_path, **LORA, load_in_8bit=True)
    assert (eight.plan.method, eight.plan.base_bits) == ("qlora", 8)


def test_quantization_as_axolotl_checks_it(tmp_path) -> None:
    with pytest.raises(FtplanError, match="qlora needs load_in_4bit"):
        read(tmp_path, **{**LORA, "adapter": "qlora"})
    with pytest.raises(FtplanError, match="without an adapter is a quantized full fine-tune"):
        read(tmp_path, load_in_4bit=True)
    # lora + load_in_4bit: loaders/model.py quantizes only for qlora; the base stays 16-bit
    run = read(tmp_path, **LORA, load_in_4bit=True)
    assert (run.plan.method, run.plan.quant_bits) == ("lora", None)
    assert codes(run)["adapter"] == ("lora_4bit", "understates")


@pytest.mark.parametrize(("fsdp", "config", "zero"), [
    (None, {"fsdp_version": 2, "offload_params": False}, 3),
    (["full_shard", "auto_wrap"], {"fsdp_offload_params": False, "fsdp_sharding_strategy": "FULL_SHARD"}, 3),
    (["shard_grad_op", "auto_wrap"], {}, 2),
    (None, {"fsdp_version": 2, "reshard_after_forward": False}, 2),
])
def test_fsdp_is_sharding(tmp_path, fsdp, config: dict, zero: int) -> None:
    keys = {"fsdp_config": config} | ({"fsdp": fsdp} if fsdp else {})
    run = read(tmp_path, **LORA, **keys)
    assert run.plan.zero == zero and not run.plan.offload_optimizer
    assert run.treatment["fsdp_config"] == "modelled" and any("FSDP" in n for n in run.notes)


def test_fsdp_offload_and_checkpointing(tmp_path) -> None:
    run = read(tmp_path, **LORA, fsdp=["full_shard", "auto_wrap"],
               fsdp_config={"fsdp_offload_params": True, "fsdp_activation_checkpointing": True})
    assert (run.plan.zero, run.plan.offload_optimizer, run.plan.gradient_checkpointing) == (3, True, True)
    assert run.plan.offload_params and "fsdp_config" not in codes(run)  # parameter shards planned on the host
    assert run.treatment["fsdp_config"] == "modelled"
    new = read(tmp_path, **LORA, fsdp_version=2,
               fsdp_config={"offload_params": True, "activation_checkpointing": True})
    assert (new.plan.zero, new.plan.offload_optimizer, new.plan.gradient_checkpointing) == (3, True, True)
    # the schema has no sharding_strategy: axolotl drops it and shards fully
    dropped = read(tmp_path, **LORA, fsdp_config={"sharding_strategy": "SHARD_GRAD_OP"})
    assert dropped.plan.zero == 3 and any("sharding_strategy SHARD_GRAD_OP" in n for n in dropped.notes)


def test_axolotls_shipped_deepspeed_configs_are_known_by_name(tmp_path) -> None:
    run = read(tmp_path, deepspeed="deepspeed_configs/zero3_bf16_cpuoffload_all.json")
    assert (run.plan.zero, run.plan.offload_optimizer, run.plan.offload_params) == (3, True, True)
    assert "deepspeed" not in codes(run)
    assert read(tmp_path, deepspeed="deepspeed_configs/zero2.json").plan.offload_optimizer  # it offloads
    with pytest.raises(FtplanError, match=r"points at mine\.json"):
        read(tmp_path, deepspeed="mine.json")


@pytest.mark.parametrize(("name", "planned", "direction"), [
    ("adamw_torch_fused", "adamw-fused", None),
    ("adamw_bnb_8bit", "adamw-8bit", None),
    ("adamw_torch_8bit", "adamw-torch-8bit", None),
    ("paged_adamw_8bit", "paged-adamw-8bit", None),
    ("paged_adamw_32bit", "paged-adamw", None),
    ("adamw_torch_4bit", "adamw-torch-4bit", None),
    ("ao_adamw_4bit", "adamw-torch-4bit", "understates"),
    ("lion_32bit", "lion", None),
    ("lion_8bit", "lion-8bit", None),
    ("galore_adamw", "galore-adamw", None),
    ("galore_adamw_8bit_layerwise", "galore-adamw-8bit", None),
    ("apollo_adamw", "apollo-adamw", None),
    ("muon", "muon", None),
    ("dion", "adamw", "overstates"),
    ("adopt_adamw", "adamw", None),
    ("ademamix", "adamw", "understates"),
    ("came_pytorch", "sgd-momentum", "understates"),
    ("q_galore_adamw8bit", "galore-adamw-8bit", "overstates"),
    ("my_own_adam", "adamw", "unknown"),
])
def test_optimizers(tmp_path, name: str, planned: str, direction: str | None) -> None:
    run = read(tmp_path, optimizer=name, attn_implementation="flash_attention_2")
    assert run.plan.optimizer == planned
    found = codes(run).get("optimizer")
    assert (found[1] if found else None) == direction


def test_optimi_adamw_keeps_a_kahan_buffer_on_pure_bf16(tmp_path) -> None:
    pure = read(tmp_path, optimizer="optimi_adamw", attn_implementation="flash_attention_2")
    assert codes(pure)["optimizer"][1] == "understates"
    assert "optimizer" not in codes(read(tmp_path, **LORA, optimizer="optimi_adamw",
                                         attn_implementation="flash_attention_2"))


LIGER = "axolotl.integrations.liger.LigerPlugin"


def test_fused_losses_need_their_plugin(tmp_path) -> None:
    fused = read(tmp_path, **LORA, plugins=[LIGER], liger_fused_linear_cross_entropy=True)
    assert fused.plan.fused_loss and fused.warnings == []
    others = read(tmp_path, **LORA, plugins=[LIGER], liger_fused_linear_cross_entropy=True,
                  liger_rms_norm=True, liger_glu_activation=True)
    assert others.plan.fused_loss and others.plan.liger_kernels == "rms_norm,glu" and others.warnings == []
    # integrations/config.py: without the plugin the schema drops its keys
    bare = read(tmp_path, **LORA, liger_fused_linear_cross_entropy=True, liger_rms_norm=True)
    assert not bare.plan.fused_loss and bare.warnings == [] and bare.ignored == []
    assert any("without the liger plugin" in n for n in bare.notes)
    cce = read(tmp_path, **LORA, plugins=["axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin"])
    assert cce.plan.fused_loss  # cut_cross_entropy defaults to true with its plugin (args.py)
    off = read(tmp_path, **LORA, plugins=["axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin"],
               cut_cross_entropy=False)
    assert not off.plan.fused_loss


def test_lora_targets(tmp_path) -> None:
    both = read(tmp_path, **LORA, lora_target_modules=["q_proj", "v_proj"])
    assert both.plan.lora_target == "all" and both.ignored == []  # every linear, these among them
    named = read(tmp_path, **{**LORA, "lora_target_linear": False}, lora_target_modules=["q_proj", "v_proj"])
    assert named.plan.lora_target == "q_proj,v_proj"


@pytest.mark.parametrize(("rl", "extra", "stage"), [
    ("dpo", {"dpo_beta": 0.1, "dpo_label_smoothing": 0.1, "dpo_loss_type": ["sigmoid"]}, "dpo"),
    ("ipo", {"rl_beta": 0.1}, "dpo"),
    ("orpo", {"orpo_alpha": 0.1}, "orpo"),
    ("simpo", {"simpo_gamma": 0.5}, "simpo"),
    ("kto", {"kto_desirable_weight": 1.0, "kto_undesirable_weight": 1.0}, "kto"),
])
def test_preference_stages_are_planned_as_themselves(tmp_path, rl: str, extra: dict, stage: str) -> None:
    run = read(tmp_path, **LORA, rl=rl, sequence_len=1024, **extra)
    p = run.plan
    assert (p.stage, p.seq_len, p.reference_model, p.fused_loss) == (stage, 1024, None, False)
    assert run.warnings == [] and run.treatment["rl"] == "modelled"
    # the losses' settings change no memory; the beta TRL gets (rl_beta, orpo_alpha) feeds diagnose's loss
    assert all(run.treatment[key] == ("modelled" if key in ("rl_beta", "orpo_alpha") else "irrelevant")
               for key in extra)


def test_the_beta_axolotl_hands_trl_is_kept_for_diagnose(tmp_path) -> None:
    """core/builders/rl.py: trl.beta, else rl_beta, else orpo_alpha."""
    assert read(tmp_path, **LORA, rl="dpo", rl_beta=0.2).hyper.beta == 0.2
    assert read(tmp_path, **LORA, rl="dpo", rl_beta=0.2, trl={"beta": 0.3}).hyper.beta == 0.3
    assert read(tmp_path, **LORA, rl="orpo", orpo_alpha=0.05).hyper.beta == 0.05
    assert read(tmp_path, **LORA, rl="dpo").hyper.beta is None  # TRL's default
    assert read(tmp_path, **LORA).hyper.beta is None  # SFT


def test_simpo_keeps_the_nll_term_unless_cpo_alpha_is_zero(tmp_path) -> None:
    """core/builders/rl.py passes cpo_alpha to TRL's CPOConfig only when set; TRL's default 1.0 keeps the NLL."""
    assert read(tmp_path, **LORA, rl="simpo").plan.nll_term
    paper = read(tmp_path, **LORA, rl="simpo", cpo_alpha=0.0)
    assert not paper.plan.nll_term and paper.treatment["cpo_alpha"] == "modelled"


def test_dpo_precomputes_and_fuses_with_liger(tmp_path) -> None:
    run = read(tmp_path, **LORA, rl="dpo", precompute_ref_log_probs=True)
    assert run.plan.precompute_ref_log_probs and not run.plan.fused_loss  # TRL 1.8: full logits
    liger = read(tmp_path, **LORA, rl="dpo", dpo_use_liger_kernel=True)
    assert liger.plan.fused_loss  # LigerFusedLinearDPOLoss: no logits
    with pytest.raises(FtplanError, match="dpo_use_liger_kernel"):
        read(tmp_path, **LORA, rl="dpo", dpo_use_liger_kernel=True, precompute_ref_log_probs=True)
    kto = read(tmp_path, **LORA, rl="kto", precompute_ref_log_probs=True)  # axolotl hands it to DPO only
    assert not kto.plan.precompute_ref_log_probs and any("DPO only" in note for note in kto.notes)
    cce = read(tmp_path, **LORA, rl="dpo", plugins=["axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin"])
    assert not cce.plan.fused_loss  # TRL's DPO calls the model without labels
    kept = read(tmp_path, **LORA, rl="dpo", dpo_use_logits_to_keep=True)
    assert codes(kept)["dpo_use_logits_to_keep"] == ("dpo_logits_to_keep", "overstates")


@pytest.mark.parametrize(("trl", "adapter", "reference"), [
    ({}, True, False), ({"beta": 0.0}, False, False), ({"beta": 0.04}, False, True), ({"beta": 0.04}, True, None)])
def test_grpo_keeps_a_reference_model_only_with_a_kl_beta(tmp_path, trl, adapter, reference) -> None:
    run = read(tmp_path, **(LORA if adapter else {}), rl="grpo", trl={"max_completion_length": 128, **trl})
    assert (run.plan.stage, run.plan.reference_model) == ("grpo", reference)


def test_grpo_reads_the_trl_and_vllm_sections(tmp_path) -> None:
    run = read(tmp_path, **LORA, rl="grpo", micro_batch_size=4, sequence_len=1024,
               trl={"num_generations": 4, "max_completion_length": 256, "use_vllm": True, "vllm_mode": "colocate",
                    "temperature": 0.7, "reward_funcs": ["rwd.f"]},
               vllm={"gpu_memory_utilization": 0.5, "max_model_len": 2048})
    p = run.plan
    assert (p.num_generations, p.max_completion_len, p.batch_size, p.seq_len) == (4, 256, 4, 1024)
    assert (p.vllm, p.vllm_gpu_memory_utilization) == ("colocate", 0.5)
    assert codes(run) == {"sequence_len": ("grpo_prompt", "unknown")}  # axolotl does not truncate prompts
    default_share = read(tmp_path, **LORA, rl="grpo", trl={"max_completion_length": 128, "use_vllm": True,
                                                          "vllm_mode": "colocate"})
    assert default_share.plan.vllm_gpu_memory_utilization == 0.9  # schemas/vllm.py
    unset_mode = read(tmp_path, **LORA, rl="grpo", trl={"max_completion_length": 128, "use_vllm": True},
                      vllm={"gpu_memory_utilization": 0.5})
    assert (unset_mode.plan.vllm, unset_mode.plan.vllm_gpu_memory_utilization) == ("colocate", 0.3)  # TRL's
    server = read(tmp_path, **LORA, rl="grpo", trl={"max_completion_length": 128, "use_vllm": True,
                                                    "vllm_mode": "server"})
    assert server.plan.vllm == "server"
    unset = read(tmp_path, **LORA, rl="grpo")  # axolotl hands max_completion_length None to TRL
    assert (unset.plan.max_completion_len, unset.plan.seq_len) == (256, 512 + 256)  # prompts of 512 assumed
    assert {w.code: w.data["direction"] for w in unset.warnings} == {"grpo_completion": "unknown",
                                                                    "grpo_prompt": "unknown"}
    fused = read(tmp_path, **LORA, rl="grpo", trl={"max_completion_length": 128, "use_liger_loss": True})
    assert fused.plan.fused_loss


def test_grpo_generation_batch_and_gdpo_ebft(tmp_path) -> None:
    run = read(tmp_path, **LORA, rl="grpo", gradient_accumulation_steps=8, trl={"max_completion_length": 128})
    assert "generation_batch" not in {w.code for w in run.warnings}  # the plan sizes micro-batch x accumulation
    bigger = read(tmp_path, **LORA, rl="grpo", trl={"max_completion_length": 128, "generation_batch_size": 64})
    assert codes(bigger)["trl"] == ("generation_batch", "understates")
    gdpo = read(tmp_path, **LORA, rl="gdpo", trl={"max_completion_length": 128})
    assert gdpo.plan.stage == "grpo" and not any(w.code.startswith("stage_") for w in gdpo.warnings)
    assert any("rl gdpo" in note for note in gdpo.notes)  # GDPO only aggregates rewards differently
    ebft = read(tmp_path, **LORA, rl="ebft", trl={"max_completion_length": 128})
    assert ebft.plan.stage == "grpo" and codes(ebft)["rl"] == ("ebft", "understates")
    # strided EBFT is a plain Trainer (core/trainers/ebft/strided.py): no GRPOConfig, no whole prompt groups
    strided = read(tmp_path, **LORA, rl="ebft", ebft={"mode": "strided"}, trl={"max_completion_length": 8})
    assert (ebft.plan.num_generations, strided.plan.num_generations) == (8, 1)
    with pytest.raises(FtplanError, match="key 'rl' must be one of"):
        read(tmp_path, **LORA, rl="ppo")


def test_reward_models_and_idle_preference_keys(tmp_path) -> None:
    run = read(tmp_path, **LORA, reward_model=True, num_labels=1, center_rewards_coefficient=0.01)
    assert run.plan.stage == "rm" and run.warnings == [] and not run.plan.fused_loss
    assert run.treatment["reward_model"] == "modelled" and run.treatment["num_labels"] == "irrelevant"
    prm = read(tmp_path, **LORA, process_reward_model=True)
    assert prm.plan.stage == "rm" and codes(prm)["process_reward_model"][1] == "overstates"
    idle = read(tmp_path, **LORA, dpo_beta=0.1)  # no rl: DPO settings change nothing
    assert idle.warnings == [] and idle.treatment["dpo_beta"] == "irrelevant" and idle.plan.stage == "sft"


def test_the_stage_flag_overrides_rl(tmp_path) -> None:
    path = tmp_path / "axolotl.yaml"
    path.write_text(yaml.safe_dump({**LORA, "rl": "dpo"}))
    assert read_run_config(path, stage="orpo").plan.stage == "orpo"
    assert read_run_config(path, stage="sft").plan.stage == "sft"
    assert read_run_config(path, stage="rm").plan.stage == "rm"
    with pytest.raises(FtplanError, match="no PPO"):
        read_run_config(path, stage="ppo")


@pytest.mark.parametrize(("keys", "first", "direction"), [
    ({"unfrozen_parameters": ["^lm_head.weight$"]}, "unfrozen_parameters", "overstates"),
    ({"tiled_mlp": True}, "tiled_mlp", "overstates"),
    ({"qat": {"weight_dtype": "int8"}}, "qat", "understates"),
    ({"lora_embedding_kernel": True}, "lora_embedding_kernel", "unknown"),
    ({"torch_compile": True}, "torch_compile", "overstates"),
    ({"processor_type": "AutoProcessor"}, "processor_type", "unknown"),
])
def test_settings_ftplan_does_not_model_are_warned(tmp_path, keys: dict, first: str, direction: str) -> None:
    run = read(tmp_path, **LORA, **keys)
    assert codes(run)[first][1] == direction and run.treatment[first] == "warned"


def test_checkpointing_and_packing_are_modelled(tmp_path) -> None:
    run = read(tmp_path, **LORA, gradient_checkpointing=True, sample_packing=True, sequence_len=4096,
               micro_batch_size=2, gradient_checkpointing_kwargs={"use_reentrant": False})
    # packed rows of sequence_len tokens: micro_batch x sequence_len, as planned
    assert run.plan.gradient_checkpointing and (run.plan.batch_size, run.plan.seq_len) == (2, 4096)
    assert run.warnings == [] and run.treatment["sample_packing"] == "modelled"
    assert run.treatment["gradient_checkpointing_kwargs"] == "irrelevant"


def test_parallel_sizes_give_the_gpus(tmp_path) -> None:
    run = read(tmp_path, **LORA, dp_shard_size=4, context_parallel_size=2,
               fsdp_config={"fsdp_version": 2}, fsdp_version=2)
    assert run.gpus == 8


def test_batch_size_sets_the_accumulation(tmp_path) -> None:
    # utils/config/__init__.py normalize_config: gradient_accumulation_steps = batch_size // micro_batch_size
    assert read(tmp_path, micro_batch_size=2, batch_size=16).plan.grad_accum == 8


def test_known_keys_are_never_unknown(tmp_path) -> None:
    run = read(tmp_path, **LORA, gradient_checkpointing=True,
               gradient_checkpointing_kwargs={"use_reentrant": True}, lora_target_modules=["q_proj"],
               eval_sample_packing=False, wandb_project="x", saves_per_epoch=1, optim_target_modules=["attn"],
               lora_modules_to_save=None, special_tokens={"pad_token": "<pad>"},
               chat_template="llama3", dataset_prepared_path="prepared", loss_watchdog_threshold=5.0)
    assert run.ignored == [] and run.warnings == []
    typo = read(tmp_path, **LORA, micro_batchsize=2, my_flag=1)
    assert "micro_batchsize (did you mean micro_batch_size?)" in typo.ignored and "my_flag" in typo.ignored


def test_every_key_is_planned_warned_or_irrelevant() -> None:
    assert not PLANNED & RECOGNISED and not WARNED_KEYS & RECOGNISED
    assert PLANNED <= KNOWN and WARNED_KEYS <= KNOWN and "attn_implementation" in SCHEMA_KEYS
    assert {"fsdp", "fsdp_config", "fsdp_version"} <= PLANNED  # no longer "irrelevant"


def test_null_keys_are_defaults(tmp_path) -> None:
    run = read(tmp_path, **dict.fromkeys(sorted(KNOWN - {"base_model", "datasets", "learning_rate"})))
    assert run.ignored == [] and run.plan.method == "full"
    assert codes(run) == {"bf16": ("fp32_embeddings", "understates")}  # the default full fine-tune's only one


def test_fix_writes_attn_implementation(tmp_path) -> None:
    path = tmp_path / "axolotl.yaml"
    path.write_text(yaml.safe_dump({**LORA, "attn_implementation": "eager"}, sort_keys=False))
    run = read_run_config(path)
    from planner.configs import config_changes

    changes = config_changes(run, {"attention": "flash"}, {})
    assert changes["attn_implementation"] == "flash_attention_2"
    assert {v for k, v in changes.items() if k != "attn_implementation"} == {None}  # retired switches: unset
    fixed = yaml.safe_load(fix_config(path, changes, tmp_path / "fixed.yaml").read_text())
    assert fixed["attn_implementation"] == "flash_attention_2" and "flash_attention" not in fixed


def test_fix_unsets_the_deprecated_attention_switch(tmp_path) -> None:
    """axolotl refuses attn_implementation beside flash_attention: a fix writing one unsets the other."""
    path = tmp_path / "axolotl.yaml"
    path.write_text(yaml.safe_dump({**LORA, "flash_attention": True}, sort_keys=False))
    from planner.configs import config_changes

    fixed_path = fix_config(path, config_changes(read_run_config(path), {"attention": "sdpa"}, {}),
                            tmp_path / "fixed.yaml")
    fixed = yaml.safe_load(fixed_path.read_text())
    assert fixed["attn_implementation"] == "sdpa" and fixed["flash_attention"] is None
    assert read_run_config(fixed_path).plan.attention == "sdpa"  # and ftplan (like axolotl) reads it back


@pytest.mark.parametrize(("pattern", "names", "partial"), [
    (r"model.language_model.layers.[\d]+.(mlp|self_attn).(up|down|gate|q|k|v|o)_proj",
     "down_proj,gate_proj,k_proj,o_proj,q_proj,up_proj,v_proj", False),
    (r".*\.layers\.(3|7|11|15|19|23|27|31)\.self_attn\.(q|k|v|o)_proj|.*\.mlp\.(gate|up|down)_proj",
     "down_proj,gate_proj,k_proj,o_proj,q_proj,up_proj,v_proj", True),
    (r"model.layers.[\d]+.self_attn.(q|v)_proj", "q_proj,v_proj", False),
])
def test_a_regex_target_is_peft_s_full_match(tmp_path, pattern: str, names: str, partial: bool) -> None:
    # peft matches a string target_modules as a regex against each module's full name
    run = read(tmp_path, **{**LORA, "lora_target_linear": False}, lora_target_modules=pattern)
    assert run.plan.lora_target == names
    assert ("lora_target_modules" in codes(run)) == partial  # some layers only: overstates


def test_method_changes_as_axolotl_keys(tmp_path) -> None:
    from planner.configs.axolotl import method_keys

    assert method_keys("full") == {"adapter": "", "load_in_4bit": False, "load_in_8bit": False}
    assert method_keys("qlora") == {"adapter": "qlora", "load_in_4bit": True}
    path = tmp_path / "axolotl.yaml"
    path.write_text(yaml.safe_dump({**LORA, "adapter": "qlora", "load_in_4bit": True}, sort_keys=False))
    fixed = fix_config(path, method_keys("full"), tmp_path / "fixed.yaml")
    assert read_run_config(fixed).plan.method == "full"  # an empty adapter is none


@pytest.mark.parametrize(("keys", "checkpointing", "mode"), [
    ({**LORA, "activation_offloading": True, "gradient_checkpointing": True}, False, "saved"),
    ({"activation_offloading": "legacy", "gradient_checkpointing": True}, True, "saved"),
    ({"gradient_checkpointing": "offload"}, True, "saved"),
    ({**LORA, "activation_offloading": "hidden_states", "gradient_checkpointing": True}, True, "checkpoint"),
])
def test_activation_offloading_is_planned(tmp_path, keys: dict, checkpointing: bool, mode: str) -> None:
    run = read(tmp_path, **keys)
    assert (run.plan.gradient_checkpointing, run.plan.activation_offload) == (checkpointing, mode)
    assert "activation_offloading" not in codes(run) and "gradient_checkpointing" not in codes(run)


def test_activation_offloading_needs_checkpointing(tmp_path) -> None:
    with pytest.raises(FtplanError, match="'activation_offloading' needs gradient_checkpointing"):
        read(tmp_path, activation_offloading=True)


# ---------------------------------------------------------------- parallelism beyond ZeRO (issue 11)


@pytest.mark.parametrize(("keys", "cp", "tp", "gpus"), [
    ({"context_parallel_size": 4}, 4, 1, 4),
    ({"sequence_parallel_degree": 2}, 2, 1, 2),  # the deprecated spelling (schemas/validation.py)
    ({"tensor_parallel_size": 2, "dp_shard_size": 2, "context_parallel_size": 2}, 2, 2, 8),
])
def test_context_and_tensor_parallel_sizes_are_planned(tmp_path, keys: dict, cp: int, tp: int, gpus: int) -> None:
    run = read(tmp_path, **LORA, **keys)
    assert (run.plan.context_parallel, run.plan.tensor_parallel, run.plan.gpus) == (cp, tp, gpus)
    assert all(run.treatment[key] == "modelled" for key in keys) and codes(run) == {}


def test_expert_parallel_size_needs_its_plugin(tmp_path) -> None:
    plugin = "axolotl.integrations.expert_parallel.ExpertParallelPlugin"
    run = read(tmp_path, plugins=[plugin], expert_parallel_size=2, dp_shard_size=2)
    assert (run.plan.expert_parallel, run.plan.gpus) == (2, 4)  # ep x dp_shard x tp x cp = world
    assert read(tmp_path, expert_parallel_size=2).plan.expert_parallel == 1  # dropped without the plugin


def test_a_bad_parallel_size_names_its_key(tmp_path) -> None:
    with pytest.raises(FtplanError, match="key 'context_parallel_size' must be at least 1"):
        read(tmp_path, context_parallel_size=0)


# ------------------------------------------------------------------ axolotl's LoRA kernels


@pytest.mark.parametrize(("keys", "kernels"), [
    ({}, "qkv,o,mlp"),  # schemas/config.py check_auto_enable_lora_kernels: on for LoRA when none is set
    ({"lora_mlp_kernel": True}, "mlp"),  # one key set: the others stay off
    ({"lora_qkv_kernel": True, "lora_o_kernel": True, "lora_mlp_kernel": False}, "qkv,o"),
    ({"lora_embedding_kernel": False}, ""),  # any kernel key set stops the auto-enable
    ({"rl": "dpo"}, ""),  # not auto-enabled for RL trainers
    ({"nvfp4_merge_aware": True}, ""),
    ({"fsdp_config": {"fsdp_version": 1}}, ""),  # FSDP1 on several GPUs: left off
    ({"fsdp_version": 2, "fsdp_config": {"reshard_after_forward": True}}, "qkv,o,mlp"),
])
def test_lora_kernels(tmp_path, keys: dict, kernels: str) -> None:
    run = read(tmp_path, **LORA, **keys)
    assert run.plan.lora_kernels == kernels
    assert not {"lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel"} & set(codes(run))
    assert any("LoRA kernels" in n for n in run.notes) == bool(kernels)


def test_lora_kernels_need_an_adapter_and_are_off_for_8bit_lora(tmp_path) -> None:
    assert read(tmp_path, lora_mlp_kernel=True).plan.lora_kernels == ""  # a full fine-tune has no LoRA layers
    assert read(tmp_path, **LORA, load_in_8bit=True).plan.lora_kernels == ""
    with pytest.raises(FtplanError, match="'lora_mlp_kernel' is not compatible with 8-bit LoRA"):
        read(tmp_path, **LORA, load_in_8bit=True, lora_mlp_kernel=True)
    with pytest.raises(FtplanError, match="'lora_qkv_kernel' is not compatible with trust_remote_code"):
        read(tmp_path, **LORA, trust_remote_code=True, lora_qkv_kernel=True)


def test_lora_kernels_with_dora_are_warned_and_planned_as_peft(tmp_path) -> None:
    run = read(tmp_path, **LORA, peft_use_dora=True, lora_qkv_kernel=True)
    assert run.plan.lora_kernels == "" and codes(run)["lora_qkv_kernel"] == ("not_modelled", "unknown")


def test_lora_kernels_lower_the_estimate(tmp_path) -> None:
    """The kernels keep fewer activations than peft's layers (tests/planner/test_lora_kernels_truth.py measures
    how many), so the same config plans less memory with them on."""
    from planner.service import plan_run
    from planner.spec import spec_from_config
    from planner.target import Machine
    from tests.planner.configs import random_config

    spec = spec_from_config(random_config("llama", 0, layers=2), source="test")
    on = read(tmp_path, **LORA, sequence_len=64, micro_batch_size=2).plan
    off = read(tmp_path, **LORA, sequence_len=64, micro_batch_size=2, lora_mlp_kernel=False).plan
    cpu = Machine(device="cpu")
    assert plan_run(spec, on, cpu).memory.total < plan_run(spec, off, cpu).memory.total


# ------------------------------------------------------------------ quantize_moe_experts

QLORA_MOE = {**BASE, "adapter": "qlora", "load_in_4bit": True, "lora_r": 16,
             "lora_target_modules": ["q_proj", "v_proj"], "quantize_moe_experts": True}


def test_quantize_moe_experts_quantizes_the_experts_in_the_bases_bits(tmp_path) -> None:
    run = read(tmp_path, **QLORA_MOE)
    assert run.plan.quantize_experts and run.plan.base_bits == 4 and "quantize_moe_experts" not in codes(run)
    assert any("quantize_moe_experts" in n for n in run.notes)
    eight = read(tmp_path, **{**QLORA_MOE, "adapter": "lora", "load_in_4bit": False, "load_in_8bit": True})
    assert eight.plan.quantize_experts and eight.plan.quant_bits == 8
    assert not read(tmp_path, **{**QLORA_MOE, "quantize_moe_experts": False}).plan.quantize_experts


def test_quantize_moe_experts_is_refused_where_axolotl_refuses_it(tmp_path) -> None:
    # utils/schemas/config.py check_quantize_moe_experts
    with pytest.raises(FtplanError, match="'quantize_moe_experts' is not compatible with lora_target_linear"):
        read(tmp_path, **QLORA_MOE, lora_target_linear=True)
    with pytest.raises(FtplanError, match="'quantize_moe_experts' needs adapter lora or qlora with load_in_4bit"):
        read(tmp_path, **{**BASE, "quantize_moe_experts": True})


def test_quantize_moe_experts_on_a_16bit_base_stays_warned(tmp_path) -> None:
    """adapter lora with load_in_4bit loads the linears in 16 bits (planned so, warned); the experts' quantization is
    not planned there either, and says which way the estimate is off."""
    run = read(tmp_path, **{**QLORA_MOE, "adapter": "lora"})
    assert not run.plan.quantize_experts and codes(run)["quantize_moe_experts"] == ("not_modelled", "overstates")


def test_quantize_moe_experts_lowers_the_base_bytes(tmp_path) -> None:
    from planner.service import plan_run
    from planner.spec import spec_from_config
    from planner.target import Machine
    from tests.planner.configs import random_config

    spec = spec_from_config(random_config("qwen3_moe", 0, layers=2), source="test")
    on, off = read(tmp_path, **QLORA_MOE).plan, read(tmp_path, **{**QLORA_MOE, "quantize_moe_experts": False}).plan
    cpu = Machine(device="cpu")
    assert plan_run(spec, on, cpu).memory.total < plan_run(spec, off, cpu).memory.total


# ------------------------------------------------------------------ experts_implementation


def test_experts_implementation_grouped_mm_is_what_is_planned(tmp_path) -> None:
    """transformers 5 runs MoE experts through grouped_mm unless told otherwise (get_correct_experts_implementation),
    and that is the kernel the replay follows; asking for it explicitly changes nothing."""
    run = read(tmp_path, **LORA, experts_implementation="grouped_mm")
    assert "experts_implementation" not in codes(run) and run.treatment["experts_implementation"] == "modelled"
    assert run.plan == read(tmp_path, **LORA).plan


@pytest.mark.parametrize(("value", "direction"), [("batched_mm", "understates"), ("eager", "unknown")])
def test_other_experts_implementations_are_warned(tmp_path, value: str, direction: str) -> None:
    run = read(tmp_path, **LORA, experts_implementation=value)
    assert codes(run)["experts_implementation"] == ("not_modelled", direction)


def test_the_kernels_plugins_experts_implementation_is_warned_once(tmp_path) -> None:
    run = read(tmp_path, **LORA, plugins=["axolotl.integrations.kernels.KernelsPlugin"], use_scattermoe=True,
               experts_implementation="scattermoe")
    warned = [w for w in run.warnings if "experts_implementation" in w.data["keys"] or "use_scattermoe" in
              w.data["keys"]]
    assert len(warned) == 1 and "use_scattermoe" in warned[0].data["keys"]
