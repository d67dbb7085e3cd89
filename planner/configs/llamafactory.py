"""LLaMA-Factory training configs (`llamafactory-cli train config.yaml`): keys, defaults and datasets.

Two formats, one reader:
- v0, `model_name_or_path:` and flat keys, parsed by src/llamafactory/hparams/ (ModelArguments, DataArguments,
  FinetuningArguments, TrainingArguments = transformers' Seq2SeqTrainingArguments + LLaMA-Factory's own);
- v1, `model:` with plugin mappings (`peft_config:`, `dist_config:`, `quant_config:`, `kernel_config:`...),
  parsed by src/llamafactory/v1/config/ and run by `llamafactory-cli sft|dpo|rm`.

Defaults are LLaMA-Factory's, each citing the file it comes from (hiyouga/LLaMA-Factory at ff6d4d1). Every key
LLaMA-Factory accepts is read into the plan, recognised as irrelevant to memory, stability and time, or warned
about with the direction the estimate is off.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from planner import liger
from planner.configs.common import (
    TRAINING_ARGUMENTS,
    TRAINING_ARGUMENTS_IRRELEVANT,
    DataInfo,
    DeepSpeed,
    Direction,
    Framework,
    Hyper,
    Keys,
    RunConfig,
    build_plan,
    count_records,
    deepspeed_config,
    hsdp_warning,
    optimizer_settings,
    param_offload_warning,
    precision_keys,
    precision_of,
    read_fsdp,
    read_hyper,
    read_parallelism,
    resolve_path,
    warning,
)
from planner.configs.lora_variants import init_lora, loraplus_note, rslora_note
from planner.errors import FtplanError
from planner.findings import Finding
from planner.params import target_names
from planner.stages import PREFERENCE

# flash_attn (hparams/model_args.py: auto/disabled/sdpa/fa2/fa3, extras/constants.py AttentionFunction) <-> the
# plan's attention kernel; auto leaves transformers' default, sdpa. v1 (v1/utils/types.py) names them
# eager/sdpa/flash_attention_2.
FLASH_ATTN = {"fa2": "flash", "fa3": "flash", "disabled": "eager", "eager": "eager", "sdpa": "sdpa", "auto": "sdpa",
              "flash_attention_2": "flash", "flash_attention_3": "flash"}
FLASH_ATTN_BACK = {"flash": "fa2", "eager": "disabled", "sdpa": "sdpa"}

STAGES = ("pt", "sft", "rm", "ppo", "dpo", "kto")  # hparams/finetuning_args.py FinetuningArguments.stage
PREF_LOSSES = ("sigmoid", "hinge", "ipo", "kto_pair", "orpo", "simpo")  # RLHFArguments.pref_loss
REWARD_MODEL_TYPES = ("lora", "full", "api")  # RLHFArguments.reward_model_type
METHODS = ("lora", "oft", "freeze", "full")  # FinetuningArguments.finetuning_type
# extras/constants.py QuantizationMethod; model_utils/quantization.py quantizes on the fly with bnb, hqq, eetq only
QUANT_METHODS = ("bnb", "gptq", "awq", "aqlm", "quanto", "eetq", "hqq", "mxfp4", "fp8")

# ---------------------------------------------------------------- the key lists
# Every argument LLaMA-Factory v0 parses (src/llamafactory/hparams/: the init fields of the dataclasses in
# model_args.py, data_args.py, finetuning_args.py, training_args.py, generating_args.py, evaluation_args.py,
# megatron_bridge_args.py and parser.py's _KTransformersRuntimeArguments), listed once with
# `{f.name for f in dataclasses.fields(cls) if f.init}`; TrainingArguments' own are common.TRAINING_ARGUMENTS.
V0_KEYS = frozenset({
    # model_args.py
    "adapter_folder", "adapter_name_or_path", "add_special_tokens", "add_tokens", "audio_sampling_rate",
    "cache_dir", "crop_to_patches", "disable_gradient_checkpointing", "double_quantization", "enable_liger_kernel",
    "export_device", "export_dir", "export_hub_model_id", "export_legacy_format", "export_quantization_bit",
    "export_quantization_dataset", "export_quantization_maxlen", "export_quantization_nsamples", "export_size",
    "flash_attn", "hf_hub_token", "image_do_pan_and_scan", "image_max_pixels", "image_min_pixels", "infer_backend",
    "infer_dtype", "init_special_tokens", "kt_cpu_activation", "kt_expert_checkpoint_path",
    "kt_lora_expert_intermediate_size", "kt_lora_expert_num", "kt_non_expert_weight_path", "kt_use_lora_experts",
    "kt_weight_path", "low_cpu_mem_usage", "mixture_of_depths", "model_name_or_path", "model_revision",
    "moe_aux_loss_coef", "ms_hub_token", "new_special_tokens_config", "offload_folder", "om_hub_token",
    "print_param_status", "quantization_bit", "quantization_device_map", "quantization_method", "quantization_type",
    "resize_vocab", "rope_scaling", "sglang_config", "sglang_lora_backend", "sglang_maxlen", "sglang_mem_fraction",
    "sglang_tp_size", "shift_attn", "split_special_tokens", "train_from_scratch", "trust_remote_code",
    "upcast_layernorm", "upcast_lmhead_output", "use_audio_in_video", "use_fast_tokenizer", "use_kt",
    "use_kv_cache", "use_reentrant_gc", "use_unsloth", "use_unsloth_gc", "use_v1_kernels", "video_fps",
    "video_max_pixels", "video_maxlen", "video_min_pixels", "vllm_config", "vllm_enforce_eager", "vllm_gpu_util",
    "vllm_max_lora_rank", "vllm_maxlen",
    # data_args.py
    "buffer_size", "cutoff_len", "data_shared_file_system", "dataset", "dataset_dir", "default_system",
    "enable_thinking", "eval_dataset", "eval_num_beams", "eval_on_each_dataset", "ignore_pad_token_for_loss",
    "interleave_probs", "mask_history", "max_samples", "media_dir", "mix_strategy", "neat_packing",
    "overwrite_cache", "packing", "preprocessing_batch_size", "preprocessing_num_workers", "preserve_thinking",
    "streaming", "template", "tokenized_path", "tool_format", "train_on_prompt", "val_size",
    # finetuning_args.py
    "additional_target", "apollo_layerwise", "apollo_proj", "apollo_proj_type", "apollo_rank", "apollo_scale",
    "apollo_scale_front", "apollo_scale_type", "apollo_target", "apollo_update_interval", "asft_alpha",
    "badam_mask_mode", "badam_mode", "badam_start_block", "badam_switch_interval", "badam_switch_mode",
    "badam_update_ratio", "badam_verbose", "compute_accuracy", "create_new_adapter", "disable_shuffling",
    "dpo_label_smoothing", "eaft_alpha", "early_stopping_steps", "finetuning_type", "freeze_extra_modules",
    "freeze_language_model", "freeze_multi_modal_projector", "freeze_trainable_layers", "freeze_trainable_modules",
    "freeze_vision_tower", "galore_layerwise", "galore_proj_type", "galore_rank", "galore_scale", "galore_target",
    "galore_update_interval", "hyper_parallel_args", "hyper_parallel_cp_size",
    "include_effective_tokens_per_second", "kto_chosen_weight", "kto_rejected_weight", "ld_alpha", "lora_alpha",
    "lora_dropout", "lora_rank", "lora_target", "loraplus_lr_embedding", "loraplus_lr_ratio", "module_dropout",
    "oft_block_size", "oft_rank", "oft_target", "pissa_convert", "pissa_init", "pissa_iter", "plot_loss",
    "ppo_buffer_size", "ppo_epochs", "ppo_score_norm", "ppo_target", "ppo_whiten_rewards", "pref_bco_weight",
    "pref_beta", "pref_ftx", "pref_loss", "pure_bf16", "ref_model", "ref_model_adapters",
    "ref_model_quantization_bit", "reward_model", "reward_model_adapters", "reward_model_quantization_bit",
    "reward_model_type", "simpo_gamma", "stage", "swanlab_api_key", "swanlab_lark_secret",
    "swanlab_lark_webhook_url", "swanlab_logdir", "swanlab_mode", "swanlab_project", "swanlab_run_name",
    "swanlab_workspace", "use_adam_mini", "use_apollo", "use_asft_loss", "use_badam", "use_dft_loss", "use_dora",
    "use_eaft_loss", "use_galore", "use_hyper_parallel", "use_llama_pro", "use_mca", "use_megatron_bridge",
    "use_muon", "use_rslora", "use_swanlab",
    # training_args.py (besides transformers')
    "enable_torch_profiler", "fp8", "fp8_backend", "fp8_enable_fsdp_float8_all_gather", "master_addr",
    "master_port", "overwrite_output_dir", "profile_modules", "profiler_active_steps", "profiler_output_dir",
    "profiler_profile_memory", "profiler_record_shapes", "profiler_repeat", "profiler_wait_steps",
    "profiler_warmup_steps", "profiler_with_stack", "ray_init_kwargs", "ray_num_workers",
    # generating_args.py
    "do_sample", "length_penalty", "max_length", "max_new_tokens", "num_beams", "repetition_penalty",
    "skip_special_tokens", "temperature", "top_k", "top_p",
    # evaluation_args.py (llamafactory-cli eval)
    "batch_size", "download_mode", "lang", "n_shot", "save_dir", "seed", "task", "task_dir",
    # megatron_bridge_args.py (USE_MEGATRON_BRIDGE=1; USE_MCA=1's mcore_adapter arguments share these names)
    "account_for_embedding_in_pipeline_split", "account_for_loss_in_pipeline_split", "apply_rope_fusion",
    "bias_activation_fusion", "calculate_per_token_loss", "context_parallel_size", "cross_entropy_loss_fusion",
    "expert_model_parallel_size", "export_hf_on_finish", "extra_config", "masked_softmax_fusion",
    "megatron_pretrained_checkpoint", "mixed_precision", "moe_grouped_gemm", "moe_token_dispatcher_type",
    "overlap_grad_reduce", "overlap_param_gather", "pipeline_model_parallel_size", "recompute_granularity",
    "recompute_method", "recompute_num_layers", "sequence_parallel", "tensor_model_parallel_size",
    "use_distributed_optimizer", "use_packed_sequences", "virtual_pipeline_model_parallel_size",
    # parser.py
    "kt_config",
})

# The v1 format's arguments (src/llamafactory/v1/config/: model_args.py, data_args.py, training_args.py,
# sample_args.py), listed the same way. v1 parses these alone: no TrainingArguments.
V1_KEYS = frozenset({
    "batching_strategy", "batching_workers", "bf16", "cp_mode", "cp_size", "custom_chat_template", "cutoff_len",
    "dist_config", "dist_timeout", "dp_size", "dpo_label_smoothing", "enable_activation_checkpointing",
    "eval_dataset", "flash_attn", "full_determinism", "global_batch_size", "init_config", "kernel_config",
    "ld_alpha", "learning_rate", "logging_steps", "lr_scheduler_config", "max_grad_norm", "max_new_tokens",
    "max_steps", "micro_batch_size", "model", "model_class", "mp_replicate_size", "mp_shard_size",
    "num_train_epochs", "optim_config", "output_dir", "peft_config", "pref_beta", "pref_ftx", "pref_loss",
    "quant_config", "resume_from_checkpoint", "sample_backend", "save_ckpt_as_hf", "save_epochs", "save_steps",
    "save_total_limit", "seed", "simpo_gamma", "train_dataset", "trust_remote_code",
})
V0_ALL = V0_KEYS | TRAINING_ARGUMENTS
KNOWN = V0_ALL | V1_KEYS
V1_SIGNATURE = frozenset({"peft_config", "dist_config", "kernel_config", "quant_config", "init_config", "model_class",
                          "optim_config", "lr_scheduler_config", "train_dataset", "micro_batch_size",
                          "batching_strategy", "enable_activation_checkpointing", "global_batch_size"})

# Groups of keys that only act when their switch is on (their warning names them); otherwise they do nothing.
GROUPS: dict[str, tuple[str, ...]] = {
    "use_galore": ("galore_target", "galore_rank", "galore_update_interval", "galore_scale", "galore_proj_type",
                   "galore_layerwise"),
    "use_apollo": ("apollo_target", "apollo_rank", "apollo_update_interval", "apollo_scale", "apollo_proj",
                   "apollo_proj_type", "apollo_scale_type", "apollo_layerwise", "apollo_scale_front"),
    "use_badam": ("badam_mode", "badam_start_block", "badam_switch_mode", "badam_switch_interval",
                  "badam_update_ratio", "badam_mask_mode", "badam_verbose"),
    "use_kt": ("kt_cpu_activation", "kt_weight_path", "kt_non_expert_weight_path", "kt_expert_checkpoint_path",
               "kt_use_lora_experts", "kt_lora_expert_num", "kt_lora_expert_intermediate_size", "kt_config"),
    "use_hyper_parallel": ("hyper_parallel_args", "hyper_parallel_cp_size"),
    "use_asft_loss": ("asft_alpha",),
    "use_eaft_loss": ("eaft_alpha",),
    "fp8": ("fp8_backend", "fp8_enable_fsdp_float8_all_gather"),
    "torch_compile": ("torch_compile_backend", "torch_compile_mode"),
}
OFT_KEYS = ("oft_rank", "oft_block_size", "oft_target", "module_dropout")
LORA_KEYS = ("lora_rank", "lora_alpha", "lora_dropout", "lora_target", "use_rslora", "use_dora", "loraplus_lr_ratio",
             "loraplus_lr_embedding", "pissa_init", "pissa_iter", "pissa_convert", "create_new_adapter")
FREEZE_KEYS = ("freeze_trainable_layers", "freeze_trainable_modules", "freeze_extra_modules")
# Preference / RL stages' settings (FinetuningArguments' RLHFArguments): they act in those stages only.
RLHF_KEYS = ("pref_beta", "pref_ftx", "pref_bco_weight", "pref_loss", "dpo_label_smoothing", "kto_chosen_weight",
             "kto_rejected_weight", "simpo_gamma", "ppo_buffer_size", "ppo_epochs", "ppo_score_norm", "ppo_target",
             "ppo_whiten_rewards", "ref_model", "ref_model_adapters", "ref_model_quantization_bit", "reward_model",
             "reward_model_adapters", "reward_model_quantization_bit", "reward_model_type", "ld_alpha")
MULTIMODAL_KEYS = ("image_max_pixels", "image_min_pixels", "image_do_pan_and_scan", "crop_to_patches",
                   "video_max_pixels", "video_min_pixels", "video_fps", "video_maxlen", "use_audio_in_video",
                   "audio_sampling_rate", "freeze_vision_tower", "freeze_multi_modal_projector",
                   "freeze_language_model", "media_dir")
# Megatron-Core training (USE_MCA=1 with mcore_adapter, or USE_MEGATRON_BRIDGE=1): megatron_bridge_args.py
MEGATRON_KEYS = ("tensor_model_parallel_size", "pipeline_model_parallel_size", "expert_model_parallel_size",
                 "context_parallel_size", "virtual_pipeline_model_parallel_size", "sequence_parallel",
                 "recompute_granularity", "recompute_method", "recompute_num_layers",
                 "account_for_embedding_in_pipeline_split", "account_for_loss_in_pipeline_split",
                 "bias_activation_fusion", "apply_rope_fusion", "masked_softmax_fusion", "cross_entropy_loss_fusion",
                 "moe_grouped_gemm", "moe_token_dispatcher_type", "calculate_per_token_loss",
                 "use_distributed_optimizer", "overlap_param_gather", "overlap_grad_reduce", "use_packed_sequences",
                 "mixed_precision", "megatron_pretrained_checkpoint", "export_hf_on_finish", "extra_config")

# Keys that change neither memory, stability nor time of a training step (logging, saving, evaluation,
# inference engines, tokenizer and hub plumbing), plus the sub-settings of switches that are off: recognised,
# not planned. A key here that the reader does read is reported as modelled.
RECOGNISED = TRAINING_ARGUMENTS_IRRELEVANT | frozenset({
    # model_args.py (export_dir without do_train makes an export config)
    "adapter_name_or_path", "adapter_folder", "cache_dir", "use_fast_tokenizer", "split_special_tokens",
    "add_tokens", "add_special_tokens", "new_special_tokens_config", "init_special_tokens", "model_revision",
    "low_cpu_mem_usage", "moe_aux_loss_coef", "use_reentrant_gc", "train_from_scratch", "infer_backend",
    "offload_folder", "use_kv_cache", "infer_dtype", "hf_hub_token", "ms_hub_token", "om_hub_token",
    "print_param_status", "trust_remote_code", "quantization_type", "quantization_device_map", "export_size",
    "export_device", "export_dir", "export_quantization_bit", "export_quantization_dataset", "export_quantization_nsamples",
    "export_quantization_maxlen", "export_legacy_format", "export_hub_model_id", "vllm_maxlen", "vllm_gpu_util",
    "vllm_enforce_eager", "vllm_max_lora_rank", "vllm_config", "sglang_maxlen", "sglang_mem_fraction",
    "sglang_tp_size", "sglang_config", "sglang_lora_backend",
    # upcast_layernorm: norm weights in fp32, a few MB; the norms' outputs feed autocast linears (saved in 16 bits)
    "upcast_layernorm",
    # use_v1_kernels: v1's "auto" kernels, which are NPU-only (v1/plugins/model_plugins/kernels/interface.py)
    "use_v1_kernels",
    # data_args.py
    "template", "eval_dataset", "train_on_prompt", "mask_history", "streaming", "buffer_size", "mix_strategy",
    "interleave_probs", "overwrite_cache", "preprocessing_batch_size", "preprocessing_num_workers",
    "eval_num_beams", "ignore_pad_token_for_loss", "eval_on_each_dataset", "tool_format", "default_system",
    "enable_thinking", "preserve_thinking", "tokenized_path", "data_shared_file_system",
    # finetuning_args.py: learning-rate ratios, adapter initialisation, tracking, evaluation
    "loraplus_lr_ratio", "loraplus_lr_embedding", "pissa_init", "pissa_iter", "pissa_convert", "create_new_adapter",
    "use_swanlab", "swanlab_project", "swanlab_workspace", "swanlab_run_name", "swanlab_mode", "swanlab_api_key",
    "swanlab_logdir", "swanlab_lark_webhook_url", "swanlab_lark_secret", "use_mca", "use_megatron_bridge",
    "compute_accuracy", "disable_shuffling", "early_stopping_steps", "plot_loss",
    "include_effective_tokens_per_second",
    # training_args.py: Ray's rendezvous and the profiler
    "ray_init_kwargs", "master_addr", "master_port", "enable_torch_profiler", "profiler_output_dir",
    "profiler_wait_steps", "profiler_warmup_steps", "profiler_active_steps", "profiler_repeat",
    "profiler_record_shapes", "profiler_profile_memory", "profiler_with_stack", "profile_modules",
    # generating_args.py: generation for prediction and PPO rollouts
    "do_sample", "temperature", "top_p", "top_k", "num_beams", "max_length", "max_new_tokens", "repetition_penalty",
    "length_penalty", "skip_special_tokens",
    # evaluation_args.py (`task` without do_train makes an evaluation config)
    "task", "task_dir", "batch_size", "lang", "n_shot", "save_dir", "download_mode",
    # TrainingArguments that act only with a switch that is read: optim_target_modules (GaLore/APOLLO optim names);
    # evaluation and prediction during a training run (no gradients: below the training step's peak)
    "optim_target_modules", "do_eval", "do_predict",
    # LoRA-only settings, read when finetuning_type is lora or oft
    "additional_target", "resize_vocab",
    # v1: chat template, initialisation device, sampling, checkpoints, logging
    "custom_chat_template", "init_config", "batching_workers", "dist_timeout", "save_epochs", "save_ckpt_as_hf",
    "sample_backend", "lr_scheduler_config",
}) | frozenset(k for keys in GROUPS.values() for k in keys) | frozenset(OFT_KEYS + LORA_KEYS + FREEZE_KEYS +
                                                                          RLHF_KEYS)

# DeepSpeed settings live in a JSON file the key points at: not a value --fix can write
# activation_offload: LLaMA-Factory offloads only checkpointed inputs (use_unsloth_gc), so "saved" has no key
UNWRITABLE = frozenset({"zero", "offload_optimizer", "activation_offload", "liger_kernels"})


def method_keys(method: str) -> dict:
    return {"finetuning_type": "lora" if method == "qlora" else method,
            **({"quantization_bit": 4} if method == "qlora" else {})}


def stage_keys(stage: str) -> dict:
    """A plan stage as LLaMA-Factory's keys: ORPO and SimPO are stage dpo with their pref_loss."""
    if stage == "grpo":
        raise FtplanError(f"LLaMA-Factory has no GRPO stage (its stages: {', '.join(STAGES)})", field="stage")
    if stage in ("orpo", "simpo"):
        return {"stage": "dpo", "pref_loss": stage}
    return {"stage": stage}


def is_v1(config: dict) -> bool:
    """The v1 format: `model:` (not `model_name_or_path:`) or one of v1's own keys."""
    return "model_name_or_path" not in config and ("model" in config or bool(config.keys() & V1_SIGNATURE))


class _Warnings:
    """The reader's warnings, each on the keys of the file it concerns."""

    def __init__(self, config: dict):
        self.config, self.items = config, []

    def add(self, code: str, keys: str | tuple[str, ...] | list[str], message: str, direction: Direction) -> None:
        keys = [keys] if isinstance(keys, str) else list(keys)
        present = [k for k in keys if k in self.config] or keys[:1]
        self.items.append(warning(code, present, message, direction))

    def finding(self, finding: Finding | None) -> None:
        if finding is not None:
            self.items.append(finding)

    def group(self, switch: str) -> list[str]:
        """The switch and its sub-settings that the file sets."""
        return [k for k in (switch, *GROUPS.get(switch, ())) if k in self.config]


def _quantized_copy(k: Keys, w: _Warnings, model: str, what: str) -> None:
    """`<model>_quantization_bit` (RLHFArguments): the frozen reference or reward model loaded in 4 or 8 bits,
    which this plan keeps in 16."""
    key = f"{model}_quantization_bit"
    bits = k.get(key, int)
    if bits is None:
        return
    if bits not in (4, 8):
        raise FtplanError(f"{k.path}: key '{key}' must be 4 or 8, got {bits}")
    w.add(f"{model}_quantized", key, f"{key} {bits}: the {what} is loaded in {bits} bits; this plan keeps it in 16 "
          f"bits, {_over_under('overstates')}", "overstates")


def _over_under(direction: Direction) -> str:
    return {"overstates": "so it overstates memory", "understates": "so it understates memory",
            "unknown": "so the estimate may be off either way"}[direction]


def read(keys: Keys, base: Path, stage: str | None = None) -> RunConfig:
    """`stage` (a plan stage, from `--stage`) overrides the file's `stage` (v0) or names the command (v1)."""
    return read_v1(keys, base, stage) if is_v1(keys.config) else read_v0(keys, base, stage)


# ---------------------------------------------------------------- v0


def _not_training(k: Keys) -> None:
    """`llamafactory-cli train` trains only with do_train (TrainingArguments' default is false); export, chat,
    evaluation and prediction configs share the keys."""
    config, path = k.config, k.path
    do_train = k.get("do_train", bool)
    if k.get("export_dir", str) and not do_train:
        raise FtplanError(f"{path}: not a training config: key 'export_dir' makes it a model export "
                          "(llamafactory-cli export)")
    if k.get("task", str) and not do_train:
        raise FtplanError(f"{path}: not a training config: key 'task' makes it a benchmark evaluation "
                          "(llamafactory-cli eval)")
    if do_train is False:
        raise FtplanError(f"{path}: not a training config: key 'do_train' is false, so nothing trains")
    if not do_train:
        for key in ("do_predict", "do_eval", "predict_with_generate"):
            if k.get(key, bool):
                raise FtplanError(f"{path}: not a training config: key '{key}' without 'do_train: true' "
                                  "evaluates or predicts only")
        if not (config.get("dataset") or config.get("stage") or config.get("finetuning_type")):
            raise FtplanError(f"{path}: not a training config: no 'do_train' and no 'dataset' (an inference "
                              "config for llamafactory-cli chat/webchat/api); add do_train: true and a dataset to "
                              "plan training")


def read_v0(keys: Keys, base: Path, override: str | None = None) -> RunConfig:
    k, path, config = keys, keys.path, keys.config
    model = k.get("model_name_or_path", str)
    if not model:
        raise FtplanError(f"{path}: missing key 'model_name_or_path'")
    _not_training(k)
    w, notes = _Warnings(config), []
    if k.get("do_train", bool) is None:
        notes.append("do_train is not set: LLaMA-Factory (TrainingArguments) defaults it to false, so "
                      "llamafactory-cli train would not train; planned as if do_train: true")
    backend = k.get("infer_backend", str, "huggingface")
    if backend not in ("huggingface", "hf"):
        raise FtplanError(f"{path}: key 'infer_backend': {backend} serves inference only; LLaMA-Factory's "
                          "training refuses it (hparams/parser.py); remove it")

    stage = k.get("stage", str, "sft")  # finetuning_args.py: sft
    if stage not in STAGES:
        hint = (f" ({stage.upper()} is stage: dpo with pref_loss: {stage})" if stage in ("orpo", "simpo") else "")
        raise FtplanError(f"{path}: key 'stage' must be one of {', '.join(STAGES)}, got {stage!r}{hint}")
    method = k.get("finetuning_type", str, "lora")  # finetuning_args.py: lora
    if method not in METHODS:
        raise FtplanError(f"{path}: key 'finetuning_type' must be one of {', '.join(METHODS)}, got {method!r}")
    stage, plan_stage = _stages(k, notes, stage, override)

    bits = _quantization(k, w)
    ds = deepspeed_config(k.get("deepspeed", (str, dict)), k, base)
    fsdp = read_fsdp(k, base)
    zero, offload = ds.stage, ds.offload_optimizer
    for note in (ds.note, fsdp.note):
        if note:
            notes.append(note)
    offload_params = ds.offload_param
    if fsdp.zero:
        if ds.stage:
            raise FtplanError(f"{path}: keys 'deepspeed' and 'fsdp' are both set; the Trainer uses one of them")
        zero, offload, offload_params = fsdp.zero, fsdp.offload, fsdp.offload and fsdp.zero == 3
        if fsdp.offload and not offload_params:
            w.finding(param_offload_warning("fsdp"))
    parallel = _parallel_fields(k, w, notes, zero)

    flash = k.get("flash_attn", str, "auto")  # model_args.py: auto (transformers' default, sdpa)
    if flash not in FLASH_ATTN:
        raise FtplanError(f"{path}: key 'flash_attn' must be auto, disabled, sdpa, fa2 or fa3, got {flash!r}")
    attention = FLASH_ATTN[flash]
    # transformers' default optim is adamw_torch_fused with torch >= 2.8 (training_args.py), which LLaMA-Factory
    # keeps; the old 'adafactor: true' switch of transformers 4 chooses Adafactor
    adafactor = k.get("adafactor", bool)
    optim = k.get("optim", str) or ("adafactor" if adafactor else "adamw_torch_fused")
    optim_fields, optim_warning = optimizer_settings(optim, "optim", k.get("optim_args", str), where=str(path))
    w.finding(optim_warning)
    optim_fields.update(_custom_optimizer(k, w, optim, path))
    precision = precision_of(k.get("bf16", bool, False), k.get("fp16", bool, False),
                             k.get("pure_bf16", bool, False), path)
    disabled = k.get("disable_gradient_checkpointing", bool, False)  # model_args.py: false (checkpointing on)
    trainer_checkpointing = k.get("gradient_checkpointing", bool, False)  # the Trainer's switch turns it on too
    checkpointing = not disabled or trainer_checkpointing
    if fsdp.checkpointing:
        checkpointing = True
    # model_utils/checkpointing.py: use_unsloth_gc swaps the checkpoint function for UnslothGradientCheckpointing,
    # which keeps each checkpointed layer's input in host memory; it acts only where checkpointing is on
    unsloth_gc = k.get("use_unsloth_gc", bool, False)
    if unsloth_gc and not checkpointing:
        notes.append("use_unsloth_gc with gradient checkpointing disabled: nothing is checkpointed, so nothing is "
                     "offloaded")
    activation_offload = "checkpoint" if unsloth_gc and checkpointing else "off"

    adapter_fields, bits = _adapter(k, w, notes, method, stage, plan_stage, bits)
    _method_warnings(k, w, method)

    per_gpu = k.get("per_gpu_train_batch_size", int)  # transformers 4's alias, which wins when set
    batch = k.positive("per_device_train_batch_size", 8)  # TrainingArguments: 8
    batch = per_gpu if per_gpu and per_gpu > 0 else batch
    cutoff = k.positive("cutoff_len", 2048)  # data_args.py: 2048
    stage_fields = _stage_fields(k, w, notes, stage, plan_stage, method, cutoff)
    fused_loss, liger_kernels = _liger(k, notes, stage)
    plan = build_plan(
        "llamafactory", path, method=method, precision=precision, **optim_fields,
        batch_size=batch, grad_accum=k.positive("gradient_accumulation_steps", 1), gradient_checkpointing=checkpointing,
        activation_offload=activation_offload, attention=attention, **adapter_fields,
        freeze_trainable_layers=k.get("freeze_trainable_layers", int, 2), quant_bits=bits,
        double_quant=k.get("double_quantization", bool, True), zero=parallel.pop("zero", zero),
        offload_optimizer=offload, offload_params=offload_params, fused_loss=fused_loss, **parallel, liger_kernels=liger_kernels, **_packing(k, w, notes, stage, attention, batch),
        **stage_fields,
    )
    _model_warnings(k, w, notes, method)
    _system_warnings(k, w)
    hyper = read_hyper(k, epochs="num_train_epochs", epochs_default=3.0, scheduler="lr_scheduler_type",
                       scheduler_default="linear", fp16=k.get("fp16", bool, False), bf16=k.get("bf16", bool, False))
    if plan_stage in PREFERENCE and "pref_beta" in k.config:  # hparams/finetuning_args.py: 0.1
        hyper = hyper.model_copy(update={"beta": k.get("pref_beta", float)})
    datasets = k.joined("dataset", "")  # a list of names, each text
    data = DataInfo(datasets=[d.strip() for d in (datasets.split(",") if isinstance(datasets, str) else datasets)
                              if d and str(d).strip()],
                    dataset_dir=k.get("dataset_dir", str, "data"), max_samples=_max_samples(k),
                    val_size=k.number("val_size", 0.0, at_least=0.0))
    gpus = k.get("ray_num_workers", int)
    if gpus and gpus > 1:
        notes.append(f"ray_num_workers {gpus}: with USE_RAY=1, LLaMA-Factory trains on {gpus} GPUs")
    elif (implied := ds.processes(plan.batch_size, plan.grad_accum)) and implied > 1:
        gpus = implied
        notes.append(f"DeepSpeed train_batch_size {ds.train_batch_size} = micro-batch x accumulation x GPUs: "
                     f"{gpus} GPUs")
    _dialect(k, w, V1_KEYS - V0_ALL, "v1 format (model:, peft_config:, ...)")
    return RunConfig(path=path, format="llamafactory", model=model, plan=plan, hyper=hyper,
                     data=_resolve_data(data, base), notes=notes, warnings=w.items,
                     gpus=gpus if gpus and gpus > 1 else None)


def _stages(k: Keys, notes: list[str], stage: str, override: str | None) -> tuple[str, str]:
    """LLaMA-Factory's stage and the plan's: its ORPO and SimPO are `stage: dpo` with `pref_loss` orpo or simpo
    (hparams/finetuning_args.py: use_ref_model only for the other losses). `override` (`--stage`) replaces the
    file's stage."""
    pref = k.config.get("pref_loss") or "sigmoid"  # RLHFArguments: sigmoid; HfArgumentParser checks the choice
    if pref not in PREF_LOSSES:
        raise FtplanError(f"{k.path}: key 'pref_loss' must be one of {', '.join(PREF_LOSSES)}, got {pref!r}")
    if override is not None:
        if override == "grpo":
            raise FtplanError(f"LLaMA-Factory has no GRPO stage (its stages: {', '.join(STAGES)}); plan GRPO with "
                              "a TRL or axolotl config", field="stage")
        wanted = "dpo" if override in ("orpo", "simpo") else override
        if wanted != stage:
            notes.append(f"--stage {override}: planned as stage {wanted}, not the config's {stage}")
        if override in ("orpo", "simpo"):
            return "dpo", override
        stage = wanted
    if stage != "dpo":
        return stage, stage
    pref = k.get("pref_loss", str, "sigmoid")
    if override == "dpo" and pref in ("orpo", "simpo"):
        notes.append(f"--stage dpo: planned with a reference model, not the config's reference-free pref_loss {pref}")
        return "dpo", "dpo"
    return "dpo", {"orpo": "orpo", "simpo": "simpo"}.get(pref, "dpo")


def _stage_fields(k: Keys, w: _Warnings, notes: list[str], stage: str, plan_stage: str, method: str,
                  cutoff: int) -> dict[str, Any]:
    """The plan's stage fields as LLaMA-Factory runs each stage (train/{dpo,kto,ppo,rm}/workflow.py). A frozen
    reference model (train/trainer_utils.py create_ref_model) is a copy of the policy for full and freeze
    tuning, the policy with its adapter disabled for LoRA: the stage's default; `ref_model` loads a separate one
    whatever the method. ORPO and SimPO have none. Sequences are cutoff_len tokens, prompt and response
    (data/processor/pairwise.py, feedback.py), except PPO's, whose responses are generated."""
    path = k.path
    fields: dict[str, Any] = {"stage": plan_stage, "seq_len": cutoff}
    if plan_stage in ("dpo", "kto", "ppo"):
        ref = k.get("ref_model", str)
        if ref:
            fields["reference_model"] = True
            notes.append(f"ref_model {ref}: a separate frozen reference model (loaded whatever the method), planned "
                         "the size of model_name_or_path")
            k.get("ref_model_adapters", (str, list))
            _quantized_copy(k, w, "ref_model", "reference model")
    if stage != "ppo":
        return fields
    reward = k.get("reward_model", str)
    if not reward:  # finetuning_args.py __post_init__
        raise FtplanError(f"{path}: stage ppo needs 'reward_model' (LLaMA-Factory refuses PPO without one)")
    kind = k.get("reward_model_type", str, "lora")
    if kind not in REWARD_MODEL_TYPES:
        raise FtplanError(f"{path}: key 'reward_model_type' must be one of {', '.join(REWARD_MODEL_TYPES)}, got "
                          f"{kind!r}")
    if kind == "lora" and method != "lora":
        raise FtplanError(f"{path}: key 'reward_model_type' lora needs finetuning_type lora (LLaMA-Factory refuses "
                          "a LoRA reward model for freeze or full PPO); use reward_model_type full")
    # trainer_utils.py create_reward_model: an adapter and value head loaded on the policy, a separate frozen
    # model with a value head, or a server
    if kind == "full" and method == "lora":
        w.add("ppo_reward_model", ["reward_model_type", "reward_model"], f"reward_model_type full: a separate "
              f"frozen reward model ({reward}) beside a LoRA policy; this plan counts none, "
              f"{_over_under('understates')}", "understates")
    if kind == "full":
        notes.append(f"reward_model_type full: a separate frozen reward model ({reward}, with a value head)"
                     + (", planned as a frozen copy the size of the policy" if method != "lora" else ""))
        k.get("reward_model_adapters", (str, list))
        _quantized_copy(k, w, "reward_model", "reward model")
    else:
        notes.append("reward_model_type " + kind + ": " + (
            "a LoRA adapter and value head loaded on the policy itself" if kind == "lora" else
            f"served by {reward}, so no reward model is on the GPU"))
    # generating_args.py: max_new_tokens 1024 (max_length, 1024, only when max_new_tokens is not positive)
    new = k.get("max_new_tokens", int, 1024)
    if new > 0:
        completion, said = new, f"max_new_tokens {new}"
    else:
        total = k.get("max_length", int, 1024)
        completion, said = max(1, total - cutoff), f"max_length {total} less the prompt"
    notes.append(f"stage ppo: prompts of up to cutoff_len {cutoff} tokens and responses generated up to {said}: "
                 f"{cutoff + completion}-token sequences")
    k.get("ppo_buffer_size", int)
    w.add("ppo_value_head", ["stage", "ppo_buffer_size"], "stage ppo: the value head, and the per-token values, "
          "log-probs and advantages kept for the ppo_buffer_size x per_device_train_batch_size x "
          "gradient_accumulation_steps rollouts of a step, are not modelled; they are small beside the model, so "
          "the plan slightly understates memory", "understates")
    return fields | {"seq_len": cutoff + completion, "max_completion_len": completion}


def _quantization(k: Keys, w: _Warnings) -> int | None:
    """quantization_bit with quantization_method (model_args.py QuantizationArguments: bnb by default), as
    model_utils/quantization.py applies them on the fly."""
    path = k.path
    method = k.get("quantization_method", str, "bnb")
    bits = k.get("quantization_bit", int)
    if method not in QUANT_METHODS:
        raise FtplanError(f"{path}: key 'quantization_method' must be one of {', '.join(QUANT_METHODS)}, "
                          f"got {method!r}")
    if bits is None:
        return None
    if method == "bnb":
        if bits not in (4, 8):
            raise FtplanError(f"{path}: key 'quantization_bit' must be 4 or 8 (bitsandbytes), got {bits}")
        return bits
    if method == "hqq":
        if bits not in (1, 2, 3, 4, 5, 6, 8):
            raise FtplanError(f"{path}: key 'quantization_bit' must be 1-6 or 8 with HQQ, got {bits}")
        planned = 4 if bits <= 4 else 8
        direction: Direction = "unknown" if bits in (4, 8) else "overstates"
        w.add("quantization_method", ("quantization_method", "quantization_bit"),
              f"quantization_method hqq: the {bits}-bit HQQ base (group-wise scales and zeros) is planned as "
              f"bitsandbytes {planned}-bit, " + ("about the same bytes" if bits in (4, 8) else _over_under(direction)),
              direction)
        return planned
    if method == "eetq":
        if bits != 8:
            raise FtplanError(f"{path}: key 'quantization_bit' must be 8 with EETQ, got {bits}")
        w.add("quantization_method", ("quantization_method", "quantization_bit"),
              "quantization_method eetq: the 8-bit EETQ base is planned as bitsandbytes 8-bit (about the same "
              "bytes)", "unknown")
        return 8
    w.add("quantization_method", ("quantization_method", "quantization_bit"),
          f"quantization_method {method}: LLaMA-Factory quantizes on the fly only with bnb, hqq or eetq, so "
          f"quantization_bit {bits} leaves an unquantized checkpoint in 16 bits (a {method} checkpoint brings its "
          "own quantization_config); this plan keeps a 16-bit base, so it overstates memory for a pre-quantized "
          "checkpoint", "overstates")
    return None


def _adapter(k: Keys, w: _Warnings, notes: list[str], method: str, stage: str, plan_stage: str,
             bits: int | None) -> tuple[dict[str, Any], int | None]:
    """The adapter's Plan fields (LoraArguments, OFTArguments: finetuning_args.py; model/adapter.py builds peft's
    LoraConfig or OFTConfig from them), with what LLaMA-Factory refuses (FinetuningArguments.__post_init__,
    adapter.py), and the base's bits (OFT on a quantized base is planned on a 16-bit one)."""
    path = k.path
    variants = [key for key in ("use_dora", "use_rslora", "pissa_init", "loraplus_lr_ratio")
                if k.config.get(key) not in (None, False)]
    if method != "lora" and variants:
        raise FtplanError(f"{path}: key '{variants[0]}' is only valid for LoRA training (LLaMA-Factory refuses it "
                          f"with finetuning_type {method}); set finetuning_type: lora or remove it")
    if method == "oft":
        return _oft(k, w, notes, bits), None
    if method != "lora":
        return {}, bits
    fields: dict[str, Any] = {"lora_rank": k.positive("lora_rank", 8), "lora_target": k.joined("lora_target", "all"),
                              "lora_dropout": k.get("lora_dropout", float, 0.0),
                              "use_dora": k.get("use_dora", bool, False)}
    quant = k.get("quantization_method", str, "bnb")
    if fields["use_dora"] and bits and quant != "bnb":  # adapter.py: DoRA only on bitsandbytes' quantization
        raise FtplanError(f"{path}: key 'use_dora': DoRA is not compatible with {quant}-quantized models "
                          "(LLaMA-Factory refuses it); use quantization_method: bnb or remove use_dora")
    if k.get("use_rslora", bool, False):
        notes.append(rslora_note("use_rslora"))
    ratio = k.get("loraplus_lr_ratio", float)
    if ratio is not None:
        notes.append(loraplus_note("loraplus_lr_ratio", ratio))
    if k.get("pissa_init", bool, False):
        if bits:
            raise FtplanError(f"{path}: key 'pissa_init': LLaMA-Factory cannot initialize a PiSSA adapter on a "
                              "quantized model (quantization_bit); remove one of them")
        if stage in ("ppo", "kto") or plan_stage == "dpo":  # use_ref_model: dpo without orpo/simpo
            raise FtplanError(f"{path}: key 'pissa_init' with stage {stage}: LLaMA-Factory refuses PiSSA where "
                              "the trainer needs a reference model (ppo, kto, dpo); remove pissa_init")
        iters = k.get("pissa_iter", int, 16)  # LoraArguments: 16; -1 is the full SVD
        if iters < -1:
            raise FtplanError(f"{path}: key 'pissa_iter' must be -1 (a full SVD) or at least 0, got {iters}")
        what, _ = init_lora("pissa_iter", "pissa" if iters == -1 else f"pissa_niter_{iters}", path)
        notes.append(f"pissa_init (pissa_iter {iters}): {what}")
    return fields, bits


def _max_samples(k: Keys) -> int | None:
    value = k.get("max_samples", int)
    if value is not None and value < 1:
        raise FtplanError(f"{k.path}: key 'max_samples' must be at least 1 (or left out for every example), got "
                          f"{value}")
    return value


def _oft(k: Keys, w: _Warnings, notes: list[str], bits: int | None) -> dict[str, Any]:
    """OFT: peft's OFTConfig takes r (oft_rank, blocks per layer) or oft_block_size, never both
    (tuners/oft/config.py); LLaMA-Factory hands it lora_target, not oft_target, as the target modules
    (model/adapter.py), and refuses OFT with Unsloth or KTransformers."""
    path = k.path
    block = k.get("oft_block_size", int, 32)  # OFTArguments: 32
    blocks = k.get("oft_rank", int, 0)  # OFTArguments: 0
    if block < 0 or blocks < 0:
        raise FtplanError(f"{path}: keys 'oft_block_size' and 'oft_rank' must be at least 0, got {block} and "
                          f"{blocks}")
    if block and blocks:
        raise FtplanError(f"{path}: key 'oft_rank' {blocks} with oft_block_size {block} (LLaMA-Factory's default "
                          "is 32): peft's OFTConfig takes one of them and raises on both; set oft_block_size: 0 to "
                          "use oft_rank, or remove oft_rank")
    if not block and not blocks:
        raise FtplanError(f"{path}: keys 'oft_block_size' and 'oft_rank' are both 0: peft's OFTConfig needs one; "
                          "set oft_block_size (e.g. 32)")
    for switch, what in (("use_unsloth", "Unsloth"), ("use_kt", "KTransformers")):
        if k.get(switch, bool, False):
            raise FtplanError(f"{path}: key '{switch}': LLaMA-Factory does not support {what} with finetuning_type "
                              "oft (model/adapter.py); use lora or remove it")
    target = k.joined("lora_target", "all")
    written = k.joined("oft_target", "all")
    if target_names(written) != target_names(target):
        notes.append(f"oft_target {written}: LLaMA-Factory hands lora_target ({target}) to peft's OFTConfig, not "
                     "oft_target (model/adapter.py); planned on lora_target")
    k.get("module_dropout", float, 0.0)  # drops whole blocks of the rotation: a mask per block, no memory to speak of
    if bits:
        w.add("oft_quantized", ("quantization_bit", "finetuning_type"),
              f"finetuning_type oft on a {bits}-bit base (quantization_bit {bits}): this plan keeps the frozen base "
              f"in 16 bits, {_over_under('overstates')}", "overstates")
    return {"lora_target": target, "oft_block_size": block, "oft_blocks": blocks}


def _method_warnings(k: Keys, w: _Warnings, method: str) -> None:
    if method in ("lora", "oft") and k.get("adapter_name_or_path", (str, list)) and not k.get("create_new_adapter",
                                                                                             bool):
        w.add("resumed_adapter", "adapter_name_or_path",
              "adapter_name_or_path: training continues that adapter with its own rank and target modules "
              "(model/adapter.py), not lora_rank/lora_target; the estimate may be off either way", "unknown")
    if method in ("lora", "oft"):
        extra = k.joined("additional_target", "")
        if extra:
            w.add("additional_target", "additional_target",
                  f"additional_target {extra}: those modules train in full (an fp32 copy, gradients and AdamW "
                  "states); this plan trains the adapters only, so it understates memory", "understates")
        elif k.get("resize_vocab", bool) and method == "lora":
            w.add("resize_vocab", "resize_vocab", "resize_vocab with LoRA: LLaMA-Factory trains the embeddings and "
                  "the LM head in full (model/adapter.py); this plan does not, so it understates memory",
                  "understates")
    else:
        k.get("resize_vocab", bool)
    if method == "freeze":
        modules = k.joined("freeze_trainable_modules", "all")
        if modules != "all":
            w.add("freeze_modules", "freeze_trainable_modules",
                  f"freeze_trainable_modules {modules}: only those modules of the trainable layers train; this plan "
                  "trains the whole layers, so it overstates memory", "overstates")
        extra = k.joined("freeze_extra_modules", "")
        if extra:
            w.add("freeze_extra", "freeze_extra_modules",
                  f"freeze_extra_modules {extra}: those modules train too (an fp32 copy, gradients and AdamW "
                  "states); this plan does not count them, so it understates memory", "understates")
    if k.get("use_llama_pro", bool):
        direction: Direction = "understates" if method == "freeze" else "overstates"
        w.add("llama_pro", "use_llama_pro",
              "use_llama_pro: only the expanded blocks, spread through the model, train; this plan trains "
              + ("the last layers (backward stops earlier than the first expanded block)" if method == "freeze"
                 else "every target layer") + f", {_over_under(direction)}", direction)


# LLaMA-Factory's own optimizers (train/trainer_utils.py `create_custom_optimizer`, checked in this order), with
# FinetuningArguments' defaults (hparams/finetuning_args.py): GaLore takes optim adamw_torch, an 8-bit bnb AdamW
# or adafactor, APOLLO only adamw_torch
GALORE_OPTIM = {"adamw_torch": "galore-adamw", "adamw_bnb_8bit": "galore-adamw-8bit",
                "adamw_8bit": "galore-adamw-8bit", "paged_adamw_8bit": "galore-adamw-8bit",
                "adafactor": "galore-adafactor"}


def _custom_optimizer(k: Keys, w: _Warnings, optim: str, path) -> dict:
    """The Plan fields of use_galore / use_apollo / use_badam / use_adam_mini / use_muon, when one is on."""
    for switch, prefix, allowed in (("use_galore", "galore", GALORE_OPTIM),
                                    ("use_apollo", "apollo", {"adamw_torch": "apollo-adamw"})):
        if not k.get(switch, bool):
            continue
        if optim not in allowed and k.get("optim", str) is None:
            optim = "adamw_torch"  # LLaMA-Factory's GaLore/APOLLO examples leave optim out (transformers 4's default)
        if optim not in allowed:
            raise FtplanError(f"{path}: key 'optim': {switch} runs with optim {', '.join(sorted(allowed))}, got "
                              f"{optim} (LLaMA-Factory raises NotImplementedError); set one of those")
        return {"optimizer": allowed[optim], "projection_rank": k.positive(f"{prefix}_rank", 16),
                "projection_update_interval": k.positive(f"{prefix}_update_interval", 200),
                "optimizer_in_backward": k.get(f"{prefix}_layerwise", bool, False)}
    if k.get("use_badam", bool):
        if k.get("badam_mode", str, "layer") == "ratio":
            w.add("badam", "badam_mode", "badam_mode ratio: BAdam updates a share of every matrix (badam_update_ratio)"
                  "; this plan keeps full AdamW states and gradients, so it overstates memory", "overstates")
            return {}
        return {"optimizer": "badam"}
    if k.get("use_adam_mini", bool):
        return {"optimizer": "adam-mini"}
    if k.get("use_muon", bool):
        return {"optimizer": "muon"}
    return {}


def _liger(k: Keys, notes: list[str], stage: str) -> tuple[bool | None, str]:
    """(fused loss, Liger's other kernels). enable_liger_kernel calls Liger's apply function for the model type
    with its defaults (model_utils/liger_kernel.py apply_liger_kernel: rope, RMSNorm, SwiGLU/GeGLU and the fused
    linear cross-entropy); outside pt/sft (require_logits) it swaps the fused loss for the plain cross-entropy,
    which never runs there (the trainers call the model without labels: dpo/trainer.py concatenated_forward pops
    them), so the full logits are planned. The Trainer's use_liger_kernel applies the same defaults, changed by
    liger_kernel_config. A model type Liger does not patch gets nothing: the estimate warns (planner.liger).
    Without either key it is left to the stage's default, which for LLaMA-Factory's trainers is the full logits."""
    lf = k.get("enable_liger_kernel", bool, False)
    hf = k.get("use_liger_kernel", bool, False)
    hf_config = k.get("liger_kernel_config", (dict, str), {})
    hf_config = hf_config if isinstance(hf_config, dict) else {}
    asked = lf or (hf and hf_config.get("fused_linear_cross_entropy", True) is not False)
    fused = asked and stage in ("pt", "sft")
    if not (lf or hf):
        return None, ""
    kernels = liger.DEFAULT if lf else liger.from_apply_kwargs(hf_config, loss=stage in ("pt", "sft") and not fused)
    if not fused:
        notes.append(f"stage {stage} computes the full logits, so Liger's fused cross-entropy does not apply "
                     "(model/loader.py)" if asked else "Liger's fused cross-entropy is off (liger_kernel_config)")
    return fused, kernels


def _packing(k: Keys, w: _Warnings, notes: list[str], stage: str, attention: str, batch: int) -> dict[str, bool]:
    """Packed rows (hparams/data_args.py: neat_packing turns packing on; hparams/parser.py: packing unset is on
    for stage pt). PackedSupervisedDatasetProcessor (data/processor/supervised.py) fills each row to cutoff_len
    with greedy_knapsack and pads it to that length: the micro-batch keeps per_device_train_batch_size rows of
    cutoff_len tokens, as planned. Plain packing keeps an all-ones attention mask, so packed sequences attend to
    each other under every kernel. neat_packing numbers them in the mask (data/collator.py
    SFTDataCollatorWith4DAttentionMask): with fa2 the collator drops the mask and transformers keeps them apart
    from position_ids, asserting one row per batch; other kernels get the 4D mask (`Plan.mask_4d`)."""
    neat = k.get("neat_packing", bool, False)
    packing = k.get("packing", bool)
    if neat and stage != "sft":
        raise FtplanError(f"{k.path}: key 'neat_packing' works with stage sft only (hparams/parser.py refuses it "
                          f"for stage {stage}); remove it or use packing")
    if neat and packing is False:
        notes.append("neat_packing turns packing on (LLaMA-Factory sets packing: true with it)")
    packed = bool(neat or packing or (packing is None and stage == "pt"))
    if packed and not neat:
        notes.append("packing without neat_packing: sequences packed into a row attend to each other (an all-ones "
                     "mask); neat_packing keeps them apart")
    if neat and attention == "flash" and batch > 1:
        w.add("neat_packing_batch", ("neat_packing", "per_device_train_batch_size"),
              f"neat_packing with fa2 needs one row per micro-batch (LLaMA-Factory's collator asserts bsz 1), got "
              f"{batch}: training stops at the first batch; set per_device_train_batch_size: 1", "unknown")
    return {"packing": packed, "mask_4d": neat and attention != "flash"}


def _model_warnings(k: Keys, w: _Warnings, notes: list[str], method: str) -> None:
    config = k.config
    rope = k.get("rope_scaling", str)
    if rope:
        notes.append(f"rope_scaling {rope}: RoPE is stretched to cutoff_len; activations follow cutoff_len as planned")
    for switch, what, direction in (
            ("use_unsloth", "Unsloth's kernels and its offloaded gradient checkpointing", "overstates"),
            ("shift_attn", "S^2-Attn (LongLoRA) attends within groups of a quarter of the sequence; this matters "
                           "with eager attention", "overstates"),
            ("upcast_lmhead_output", "the LM head's output (the logits) is kept in fp32", "understates")):
        if k.get(switch, bool):
            w.add(switch, switch, f"{switch}: {what}; this plan does not model it, {_over_under(direction)}",
                  direction)
    mod = k.get("mixture_of_depths", str)
    if mod:
        w.add("mixture_of_depths", "mixture_of_depths", f"mixture_of_depths {mod}: tokens skip the computation of "
              f"every other layer; this plan runs every token through every layer, {_over_under('overstates')}",
              "overstates")
    if k.get("use_kt", bool):
        w.add("ktransformers", w.group("use_kt"), "use_kt: KTransformers keeps the MoE experts (and their LoRA) on "
              f"the CPU; this plan puts the whole model on the GPU, {_over_under('overstates')}", "overstates")
    mm = [key for key in MULTIMODAL_KEYS if key in config]
    for key in mm:
        k.get(key, (str, int, float, bool))
    if mm:
        tower = config.get("freeze_vision_tower", True) is False
        lm_frozen = config.get("freeze_language_model") is True
        direction: Direction = "overstates" if lm_frozen and not tower else "understates"
        w.add("multimodal", mm, "multimodal settings (" + ", ".join(mm) + "): image/video/audio tokens count inside "
              "cutoff_len, but the vision/audio tower's weights and activations" +
              (" (trained: freeze_vision_tower false, so also its gradients and optimizer states)" if tower else "")
              + " are not modelled" + (" and the frozen language model trains nothing (freeze_language_model)"
                                        if lm_frozen else "") + f", {_over_under(direction)}", direction)
    for switch in ("use_dft_loss", "use_eaft_loss", "use_asft_loss"):
        if k.get(switch, bool):
            extra = " and a frozen reference model (full or freeze fine-tuning)" if (
                switch == "use_asft_loss" and method != "lora") else ""
            w.add(switch.removeprefix("use_"), w.group(switch),
                  f"{switch}: the loss also keeps vocabulary-sized probabilities per token{extra}; this plan counts "
                  f"the plain cross-entropy, {_over_under('understates')}", "understates")


def _system_warnings(k: Keys, w: _Warnings) -> None:
    """Launch, compile and parallelism settings that change what one GPU holds."""
    if k.get("fp8", bool):
        w.add("fp8", w.group("fp8"), "fp8: FP8 matmuls (torchao/Transformer Engine) save their inputs in 8 bits; "
              f"this plan saves them in the compute dtype, {_over_under('overstates')}", "overstates")
    if k.get("torch_compile", bool) or k.get("torchdynamo", str):
        w.add("torch_compile", ["torch_compile", "torchdynamo", *GROUPS["torch_compile"]],
              "torch_compile: compiled graphs fuse element-wise operations and keep fewer activations; this plan "
              f"replays eager PyTorch, {_over_under('overstates')}", "overstates")
    for key in GROUPS["torch_compile"]:
        k.get(key, str)
    if k.get("auto_find_batch_size", bool):
        w.add("auto_find_batch_size", "auto_find_batch_size", "auto_find_batch_size: after an out-of-memory error "
              "the Trainer halves the micro-batch and retries; this plan is for the micro-batch as written",
              "unknown")
    smoothing = k.get("label_smoothing_factor", float, 0.0)
    if smoothing:
        w.add("label_smoothing", "label_smoothing_factor", f"label_smoothing_factor {smoothing}: the Trainer's "
              "label smoother keeps a full-vocabulary log-softmax per token; this plan counts the plain "
              f"cross-entropy, {_over_under('understates')}", "understates")
    if k.get("use_cache", bool):
        w.add("use_cache", "use_cache", "use_cache: the forward pass returns a KV cache, which stays alive through "
              f"the step; this plan has none, {_over_under('understates')}", "understates")
    for key in ("use_cpu", "no_cuda", "use_mps_device"):
        if k.get(key, bool):
            w.add("not_cuda", key, f"{key}: the run does not use a CUDA GPU, so GPU memory does not apply",
                  "unknown")
    if k.get("use_hyper_parallel", bool):
        w.add("hyper_parallel", w.group("use_hyper_parallel"), "use_hyper_parallel: HyperParallel's FSDP/tensor "
              f"parallel backend shards the model; this plan is data parallel, {_over_under('overstates')}",
              "overstates")
    megatron = [key for key in MEGATRON_KEYS if key in k.config and key not in MEGATRON_PLANNED]
    for key in megatron:
        k.get(key, (str, int, float, bool, dict))
    if megatron:
        w.add("megatron", megatron, f"{', '.join(megatron)}: Megatron-Core's own kernels, recomputation and "
              "pipeline schedule; this plan replays the Hugging Face model with the parallel sizes, so the "
              "estimate may be off either way", "unknown")


# The Megatron sizes the plan takes (megatron_bridge_args.py; mcore_adapter's TrainingArguments share the names)
MEGATRON_SIZES = {"tensor_model_parallel_size": "tensor_parallel", "pipeline_model_parallel_size":
                  "pipeline_parallel", "expert_model_parallel_size": "expert_parallel",
                  "context_parallel_size": "context_parallel"}
MEGATRON_PLANNED = (*MEGATRON_SIZES, "use_distributed_optimizer", "sequence_parallel")


def _parallel_fields(k: Keys, w: _Warnings, notes: list[str], zero: int) -> dict[str, Any]:
    """Parallel sizes as plan fields (planner.parallel): Megatron-Core's (USE_MCA=1 / USE_MEGATRON_BRIDGE=1), or
    accelerate's parallelism_config, which LLaMA-Factory hands to TrainingArguments; with the fewest GPUs they
    need. Megatron's distributed optimizer shards the fp32 master weights and optimizer state over the
    data-parallel ranks: ZeRO-1."""
    import math

    sizes = {field: k.positive(key, 1) for key, field in MEGATRON_SIZES.items() if key in k.config}
    distributed, sequence_parallel = k.get("use_distributed_optimizer", bool), k.get("sequence_parallel", bool)
    if sizes or distributed:
        tp, pp = sizes.get("tensor_parallel", 1), sizes.get("pipeline_parallel", 1)
        cp, ep = sizes.get("context_parallel", 1), sizes.get("expert_parallel", 1)
        out: dict[str, Any] = {**sizes, "gpus": pp * math.lcm(tp * cp, tp * ep)}
        if distributed:
            out["zero"] = 1
        if tp > 1 and not sequence_parallel:
            w.add("megatron_sequence_parallel", "sequence_parallel", "sequence_parallel false with "
                  f"tensor_model_parallel_size {tp}: the norms' and dropouts' inputs are whole on every rank, while "
                  f"this plan splits every activation by TP, {_over_under('understates')}", "understates")
        notes.append("Megatron-Core sizes: " + ", ".join(f"{key} {k.config[key]}" for key in MEGATRON_SIZES
                                                         if key in k.config))
        return out
    parallel = read_parallelism(k)
    if parallel.replicated > 1 and zero:
        w.finding(hsdp_warning("parallelism_config", parallel.replicated))
    return dict(parallel.fields)


def _dialect(k: Keys, w: _Warnings, other: frozenset[str], name: str) -> None:
    """Keys of the other LLaMA-Factory format: its parser stops on them (HfArgumentParser, allow_extra_keys off)."""
    found = [key for key in k.config if key in other]
    if found:
        w.add("other_format", found, f"{', '.join(found)}: LLaMA-Factory's {name} key(s), which this format's "
              "parser rejects; they were ignored", "unknown")


def _resolve_data(data: DataInfo, base: Path) -> DataInfo:
    """Find the files behind dataset names (dataset_dir/dataset_info.json) and count them."""
    folder = resolve_path(data.dataset_dir or "data", base)
    info_file = folder / "dataset_info.json"
    info = {}
    if info_file.is_file():
        try:
            info = json.loads(info_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            info = {}
    files, count = [], 0
    for name in data.datasets:
        entry = info.get(name) or {}
        file = entry.get("file_name")
        if not file:
            continue
        target = folder / file
        if target.is_file():
            files.append(str(target))
            count += count_records(target)
    samples = count or None
    if data.max_samples:
        samples = min(samples, data.max_samples * max(1, len(data.datasets))) if samples else None
    return data.model_copy(update={"files": files, "samples": samples})


# ---------------------------------------------------------------- v1

V1_MODEL = "Qwen/Qwen3-4B-Instruct-2507"  # v1/config/model_args.py ModelArguments.model
V1_PREF_LOSSES = ("sigmoid", "orpo", "simpo")  # v1/config/training_args.py pref_loss
V1_PREFERENCE_KEYS = ("pref_loss", "pref_beta", "pref_ftx", "simpo_gamma", "dpo_label_smoothing", "ld_alpha")


def _v1_stage(k: Keys, notes: list[str], override: str | None) -> str:
    """The command names v1's stage (`llamafactory-cli sft|dpo|rm`, v1/launcher.py): `--stage`, else dpo when the
    file has preference settings, else sft. v1's DPO (v1/trainers/dpo_trainer.py) keeps a reference only for
    pref_loss sigmoid: a deep copy for full tuning, the policy with its adapter disabled for LoRA."""
    pref = k.config.get("pref_loss") or "sigmoid"
    if pref not in V1_PREF_LOSSES:
        raise FtplanError(f"{k.path}: key 'pref_loss' must be one of {', '.join(V1_PREF_LOSSES)}, got {pref!r}")
    said = "--fix writes v0 key names (per_device_train_batch_size is micro_batch_size here)"
    if override is not None:
        if override not in ("sft", "dpo", "orpo", "simpo", "rm"):
            raise FtplanError(f"LLaMA-Factory v1 runs sft, dpo (with pref_loss orpo or simpo) and rm, not "
                              f"{override}", field="stage")
        command = "dpo" if override in ("orpo", "simpo") else override
        notes.append(f"LLaMA-Factory v1 format: planned as `llamafactory-cli {command}` (--stage {override}); {said}")
        if override == "dpo" and k.get("pref_loss", str, "sigmoid") != "sigmoid":
            notes.append(f"--stage dpo: planned with a reference model, not the config's reference-free pref_loss "
                         f"{pref}")
        return override
    found = [key for key in V1_PREFERENCE_KEYS if key in k.config]
    if not found:
        notes.append("LLaMA-Factory v1 format: planned as `llamafactory-cli sft` (the command, not the file, names "
                     f"the stage: pass --stage for dpo or rm); {said}")
        return "sft"
    pref = k.get("pref_loss", str, "sigmoid")
    notes.append(f"LLaMA-Factory v1 format with preference settings ({', '.join(found)}): planned as "
                 f"`llamafactory-cli dpo` (the command names the stage; pass --stage sft if it is not); {said}")
    return {"orpo": "orpo", "simpo": "simpo"}.get(pref, "dpo")


def _plugin(k: Keys, key: str) -> dict[str, Any] | None:
    """A v1 plugin mapping (v1/config/arg_utils.py get_plugin_config): a mapping or JSON text with a 'name'."""
    value = k.get(key, (dict, str))
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip().startswith("{") else None
        except json.JSONDecodeError:
            value = None
        if not isinstance(value, dict):
            raise FtplanError(f"{k.path}: key '{key}' must be a mapping with a 'name'")
    if "name" not in value:
        raise FtplanError(f"{k.path}: key '{key}' needs a 'name' (LLaMA-Factory v1 plugin configs do)")
    return value


def read_v1(keys: Keys, base: Path, override: str | None = None) -> RunConfig:
    """The v1 format, as v1/core/model_engine.py and v1/core/base_trainer.py run it."""
    k, path, config = keys, keys.path, keys.config
    w, notes = _Warnings(config), []
    model = k.get("model", str) or V1_MODEL
    if "model" not in config:
        notes.append(f"no 'model': LLaMA-Factory v1's default {V1_MODEL}")
    stage = _v1_stage(k, notes, override)
    peft = _plugin(k, "peft_config")
    if peft and peft.get("export_dir"):
        raise FtplanError(f"{path}: not a training config: peft_config.export_dir makes it a merge and export "
                          "(llamafactory-cli merge)")
    quant = _plugin(k, "quant_config")
    kernels = _plugin(k, "kernel_config")
    dist = _plugin(k, "dist_config")
    optim = _plugin(k, "optim_config")
    model_class = k.get("model_class", str, "llm")

    method, rank, target, dropout, layers, use_dora = "full", 8, "all", 0.0, 2, False
    if peft is not None:
        name = peft["name"]
        if name == "lora":  # v1/plugins/model_plugins/peft.py LoraParams
            method = "lora"
            rank, dropout = int(peft.get("r", 8)), float(peft.get("lora_dropout", 0.05))
            targets = peft.get("target_modules", "all")
            target = ",".join(targets) if isinstance(targets, list) else str(targets)
            use_dora = bool(peft.get("use_dora", False))  # LoraParams: false
            if peft.get("use_rslora"):
                notes.append(rslora_note("peft_config.use_rslora"))
            if peft.get("modules_to_save"):
                w.add("modules_to_save", "peft_config", f"peft_config.modules_to_save {peft['modules_to_save']}: "
                      "those modules train in full; this plan trains the adapters only, "
                      f"{_over_under('understates')}", "understates")
        elif name == "freeze":  # FreezeParams
            method = "freeze"
            layers = int(peft.get("freeze_trainable_layers", 2))
            modules = peft.get("freeze_trainable_modules", "all")
            if modules not in ("all", ["all"]):
                w.add("freeze_modules", "peft_config", f"peft_config.freeze_trainable_modules {modules}: only those "
                      f"modules train; this plan trains the whole layers, {_over_under('overstates')}", "overstates")
            if peft.get("freeze_extra_modules"):
                w.add("freeze_extra", "peft_config", f"peft_config.freeze_extra_modules "
                      f"{peft['freeze_extra_modules']}: those train too; this plan does not count them, "
                      f"{_over_under('understates')}", "understates")
        else:
            hint = " (OFT is the v0 format's finetuning_type: oft)" if name == "oft" else ""
            raise FtplanError(f"{path}: peft_config name must be lora or freeze (LLaMA-Factory v1), got "
                              f"{name!r}{hint}")

    bits = None
    if quant is not None:  # v1/plugins/model_plugins/quantization.py: bnb defaults to 4 bits
        bits = quant.get("quantization_bit", 4 if quant["name"] == "bnb" else None)
        if bits not in (4, 8):
            raise FtplanError(f"{path}: quant_config.quantization_bit must be 4 or 8, got {bits!r}")
        if method != "lora":
            raise FtplanError(f"{path}: quant_config quantizes the base: train LoRA on it (peft_config name: lora)")

    ds, zero, offload, offload_params = DeepSpeed(), 0, False, False
    dist_name = dist["name"] if dist else None
    if dist_name == "deepspeed":  # v1/plugins/trainer_plugins/distributed/deepspeed.py: config_file
        if not dist.get("config_file"):
            raise FtplanError(f"{path}: dist_config deepspeed needs a config_file")
        ds = deepspeed_config(dist["config_file"], k, base, key="dist_config.config_file")
        zero, offload, offload_params = ds.stage, ds.offload_optimizer, ds.offload_param
        notes.append(ds.note or "")
    elif dist_name in ("fsdp2", "fsdpturbo"):  # distributed/fsdp2.py: reshard_after_forward True by default
        zero = 3 if dist.get("reshard_after_forward", True) is not False else 2
        notes.append(f"dist_config {dist_name}: planned as ZeRO-{zero}")
        if dist.get("offload_params"):  # fsdp2.py: CPUOffloadPolicy, the optimizer stepping on the host too
            offload, offload_params = True, zero == 3
            if zero != 3:
                w.finding(param_offload_warning("dist_config"))
        if dist_name == "fsdpturbo" and dist.get("ep_size", 1) not in (1, None):
            w.add("expert_parallel", "dist_config", f"dist_config fsdpturbo ep_size {dist['ep_size']}: the MoE "
                  "experts are split across GPUs; this plan shards them as any weight, so the estimate may be off "
                  "either way", "unknown")
    elif dist_name is not None:
        raise FtplanError(f"{path}: dist_config name must be fsdp2, fsdpturbo or deepspeed, got {dist_name!r}")

    bf16 = k.get("bf16", bool, True)  # v1/config/training_args.py: true
    # model_engine.py: a full fine-tune is cast to fp32 and trains in bf16 only through FSDP2's mixed-precision
    # policy or DeepSpeed; LoRA and freeze keep the checkpoint's dtype (bf16 assumed) with fp32 trainable weights
    if method == "full":
        precision = "bf16-mixed" if bf16 and dist_name is not None else "fp32"
    else:
        precision = "bf16-mixed"
    replicate = k.get("mp_replicate_size", int, 1)
    if replicate > 1:
        w.add("v1_parallel", "mp_replicate_size", f"mp_replicate_size {replicate}: hybrid sharding replicates the "
              "model across groups of GPUs; this plan does not model it, so the estimate may be off either way",
              "unknown")
    cp = k.positive("cp_size", 1)  # v1/config/training_args.py: each sequence split over cp_size ranks
    k.get("cp_mode", str)
    shard = k.get("mp_shard_size", int)
    dp = k.get("dp_size", int)
    micro = k.positive("micro_batch_size", 1)  # training_args.py: 1
    global_batch = k.get("global_batch_size", int)
    accum = 1
    if global_batch:
        accum = max(1, global_batch // (micro * (dp or 1)))
        notes.append(f"global_batch_size {global_batch}: {accum} micro-batches per step on "
                     f"{dp or 1} data-parallel GPU(s)")
    strategy = k.get("batching_strategy", str, "normal")
    if strategy != "normal":
        w.add("batching_strategy", "batching_strategy", f"batching_strategy {strategy}: micro-batches are "
              "packed or sized by token count rather than micro_batch_size x cutoff_len; the estimate may be off "
              "either way", "unknown")
    attention = FLASH_ATTN.get(k.get("flash_attn", str, "sdpa"))
    if attention is None:
        raise FtplanError(f"{path}: key 'flash_attn' must be eager, sdpa or flash_attention_2")
    if model_class != "llm":
        w.add("model_class", "model_class", f"model_class {model_class}: a "
              + ("token-classification head (one score per token) replaces the LM head, so this plan overstates "
                 "the logits" if model_class == "cls" else "bare model without an LM head")
              + "; the estimate is off", "overstates")
    if kernels is not None:
        names = [n.strip() for n in str(kernels["name"]).split(",") if n.strip()]
        other = [n for n in names if n not in ("auto",)]
        if other:
            w.add("kernels", "kernel_config", f"kernel_config {', '.join(other)}: "
                  + ("in training v1 keeps Liger's plain cross-entropy (require_logits), so the logits are planned "
                     "in full; Liger's other kernels " if "liger_kernel" in other else "these kernels ")
                  + f"save activations this plan counts, {_over_under('overstates')}", "overstates")
    optimizer = "adamw"  # base_trainer.py: torch.optim.AdamW without an optim_config
    if optim is not None:
        name = str(optim["name"]).lower()
        if name == "muon":
            w.add("muon", "optim_config", "optim_config muon: Muon keeps one momentum for the 2-D weights instead "
                  f"of Adam's two moments; this plan keeps AdamW states, {_over_under('overstates')}", "overstates")
        elif name not in ("adamw", "adam"):
            w.add("optimizer_nearest", "optim_config", f"optim_config {name}: planned as AdamW; the estimate may be "
                  "off either way", "unknown")
    plan = build_plan(
        "llamafactory", path, method=method, precision=precision, optimizer=optimizer, batch_size=micro,
        seq_len=k.positive("cutoff_len", 2048), grad_accum=accum,
        gradient_checkpointing=k.get("enable_activation_checkpointing", bool, True),  # training_args.py: true
        attention=attention, lora_rank=rank, lora_target=target, lora_dropout=dropout, use_dora=use_dora,
        freeze_trainable_layers=layers, quant_bits=bits, zero=zero, offload_optimizer=offload and zero > 0,
        offload_params=offload_params, stage=stage,
        **({"context_parallel": cp, "gpus": (k.get("dp_size", int) or 1) * cp} if cp > 1 else {}),
    )
    scheduler = _plugin(k, "lr_scheduler_config")  # base_trainer.py: a constant rate without one
    hyper = Hyper(learning_rate=k.get("learning_rate", float, 1e-4), epochs=k.get("num_train_epochs", float, 3.0),
                  max_steps=k.get("max_steps", int), lr_scheduler=(scheduler or {}).get("name", "constant"),
                  max_grad_norm=k.get("max_grad_norm", float, 1.0),
                  lora_alpha=float(peft.get("lora_alpha", 16)) if method == "lora" else None,
                  use_rslora=bool(peft.get("use_rslora", False)) if method == "lora" else False, bf16=bf16)
    train = k.get("train_dataset", str)
    data = DataInfo(datasets=[train] if train else [], dataset_dir=None)
    _dialect(k, w, V0_ALL - V1_KEYS, "v0 format (model_name_or_path:, ...)")
    # GPUs the file implies: data-parallel x context-parallel, else the shard group, else fsdpturbo's expert groups
    gpus = dp * k.get("cp_size", int, 1) if dp else shard or (dist or {}).get("ep_size")
    gpus = gpus if isinstance(gpus, int) else None
    return RunConfig(path=path, format="llamafactory", model=model, plan=plan, hyper=hyper, data=data,
                     notes=[n for n in notes if n], warnings=w.items, gpus=gpus if gpus and gpus > 1 else None,
                     dialect="v1")


# --fix on a v1 file: the settings v1 keeps as top-level keys (v1/config/*.py), and v0's keys as v1 spells them.
# The method, LoRA, quantization, optimizer, schedule and sharding live in v1's plugin mappings (peft_config,
# quant_config, optim_config, lr_scheduler_config, dist_config), which --fix leaves to the user; the stage is the
# command (llamafactory-cli sft|dpo|rm).
V1_WRITABLE = frozenset({"batch_size", "seq_len", "gradient_checkpointing", "attention", "learning_rate",
                         "max_grad_norm", "bf16"})
V1_FLASH_ATTN = {"fa2": "flash_attention_2", "disabled": "eager", "sdpa": "sdpa"}


def v1_keys(changes: dict[str, Any]) -> dict[str, Any]:
    """v0 `--fix` keys and values (of V1_WRITABLE settings) as v1's."""
    out: dict[str, Any] = {}
    for key, value in changes.items():
        if key == "per_device_train_batch_size":
            out["micro_batch_size"] = value
        elif key == "disable_gradient_checkpointing":
            out["enable_activation_checkpointing"] = not value
        elif key == "flash_attn":
            out["flash_attn"] = V1_FLASH_ATTN[value]
        elif key in ("cutoff_len", "learning_rate", "max_grad_norm", "bf16"):
            out[key] = value
    return out


FRAMEWORK = Framework(
    name="llamafactory", read=read, model_key="model_name_or_path", title="LLaMA-Factory",
    signature=frozenset({"finetuning_type", "stage", "cutoff_len", "lora_target", "quantization_bit", "template"})
    | V1_SIGNATURE,
    recognised=RECOGNISED, unwritable=UNWRITABLE, method_keys=method_keys, known=KNOWN,
    rejects_unknown=True,  # hparams/parser.py: HfArgumentParser.parse_dict without ALLOW_EXTRA_ARGS
    fix_values={"gradient_checkpointing": lambda on: not on,  # the key is disable_gradient_checkpointing
                "stage": stage_keys,
                "attention": FLASH_ATTN_BACK.__getitem__,
                "precision": lambda precision: {**precision_keys(precision), "pure_bf16": precision == "bf16"}},
    default_lora_alpha=lambda rank: 2 * rank,  # LLaMA-Factory's FinetuningArguments: lora_rank * 2
)
