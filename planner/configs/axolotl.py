"""axolotl configs (`axolotl train config.yml`): keys and defaults, as axolotl runs them.

Read from axolotl's source (axolotl-ai-cloud/axolotl at 067b021): the pydantic schema
(src/axolotl/utils/schemas/), the dtype it loads the model in (src/axolotl/utils/config/__init__.py,
resolve_dtype), the model loader (src/axolotl/loaders/model.py, adapter.py), the FSDP environment it sets
(src/axolotl/utils/trainer.py) and the plugins' arguments (src/axolotl/integrations/*/args.py). axolotl drops
keys its schema does not know; every key it knows is read into the plan, recognised as irrelevant, or warned
about with the way the estimate is off.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from planner import lora_kernels, param_targets
from planner.configs.common import (
    DataInfo,
    DeepSpeed,
    Direction,
    Framework,
    Fsdp,
    Keys,
    RunConfig,
    build_plan,
    deepspeed_config,
    generation_seq_len,
    optimizer_settings,
    param_offload_warning,
    precision_keys,
    precision_of,
    read_hyper,
    resolve_path,
    warning,
)
from planner.configs.hf import attention, quant_keys, say, targets_of, words
from planner.configs.lora_variants import init_lora, loraplus_note, rslora_note
from planner.errors import FtplanError
from planner.findings import Finding
from planner.params import target_names
from planner.plan import TRL_VLLM_SHARE
from planner.stages import PREFERENCE

# ---------------------------------------------------------------- the keys

# Every top-level key axolotl's schema takes: the fields (and aliases) of AxolotlInputConfig and its mixins
# (utils/schemas/config.py, model.py, peft.py, training.py, integrations.py, multimodal.py, deprecated.py),
# listed once from the source.
SCHEMA_KEYS = words("""
accelerator_config activation_offloading adam_beta1 adam_beta2 adam_beta3 adam_epsilon adam_epsilon2 adapter
added_tokens_overrides attn_implementation auto_find_batch_size auto_resume_from_checkpoints
axolotl_config_path base_model base_model_config batch_flattening batch_size bench_dataset bench_split bf16
bfloat16 bnb_config_kwargs center_rewards_coefficient chat_template chat_template_jinja chat_template_kwargs
chunked_cross_entropy chunked_cross_entropy_num_chunks cls_model_config comet_api_key comet_experiment_config
comet_experiment_key comet_mode comet_online comet_project_name comet_workspace context_parallel_size
cosine_constant_lr_ratio cosine_min_lr_ratio cpo_alpha curriculum_sampling dataloader_drop_last
dataloader_num_workers dataloader_pin_memory dataloader_prefetch_factor dataset_exact_deduplication
dataset_keep_in_memory dataset_num_proc dataset_prepared_path dataset_processes dataset_shard_idx
dataset_shard_num datasets ddp ddp_broadcast_buffers ddp_bucket_cap_mb ddp_find_unused_parameters ddp_timeout
deepcompile deepspeed default_system_message device device_map dion_lr dion_momentum dion_rank_fraction
dion_rank_multiple_of do_bench_eval do_causal_lm_eval dp_replicate_size dp_shard_size dpo_beta
dpo_generate_during_eval dpo_label_smoothing dpo_loss_type dpo_loss_weights dpo_norm_loss dpo_padding_free
dpo_use_liger_kernel dpo_use_logits_to_keep dpo_use_weighting dynamic_checkpoint eaft_alpha eaft_k
eager_attention early_stopping_patience ebft embedding_lr embedding_lr_scale embeddings_skip_upcast eot_tokens
eval_batch_size eval_causal_lm_metrics eval_max_new_tokens eval_sample_packing eval_sequence_len eval_steps
eval_strategy eval_table_size evals_per_epoch evaluation_strategy excess_length_strategy
experimental_skip_move_to_device experts_implementation fix_untrained_tokens flash_attention
flash_attn_cross_entropy flash_attn_d512 flash_attn_fuse_mlp flash_attn_rms_norm flash_optimum flex_attention
flex_attn_compile_kwargs float16 float32 fp16 fp32_norm_classes fp32_norms fp8
fp8_enable_fsdp_float8_all_gather freeze_mm_modules fsdp fsdp_config fsdp_final_state_dict_type fsdp_version
fused_attn_kernel gc_collect_steps gc_steps gemma4_hybrid_attn_impl generate_samples generation_do_sample
generation_max_new_tokens generation_prompt_ratio generation_temperature generation_top_k generation_top_p
gptq gpu_memory_limit gradient_accumulation_steps gradient_checkpointing gradient_checkpointing_kwargs
gradio_max_new_tokens gradio_server_name gradio_server_port gradio_share gradio_temperature gradio_title
greater_is_better group_by_length heads_k_stride hf_mlflow_log_artifacts hf_use_auth_token hub_model_id
hub_revision hub_strategy image_resize_algorithm image_size include_tkps include_tokens_per_second
is_falcon_derived_model is_llama_derived_model is_mistral_derived_model is_preprocess is_qwen_derived_model
jagged_restart_anneal_steps jagged_restart_steps jagged_restart_warmup_steps kto_desirable_weight
kto_undesirable_weight large_head_attention layer_offloading learning_rate lisa_layers_attribute lisa_n_layers
lisa_step_interval llama4_linearized_experts load_best_model_at_end load_in_4bit load_in_8bit local_rank
logging_steps lora_alpha lora_alpha_pattern lora_dropout lora_embedding_kernel lora_fan_in_fan_out
lora_mlp_kernel lora_model_dir lora_modules_to_save lora_o_kernel lora_on_cpu lora_qkv_kernel lora_r
lora_rank_pattern lora_target_linear lora_target_modules lora_target_parameters loraplus_lr_embedding
loraplus_lr_ratio loss_watchdog_patience loss_watchdog_threshold low_cpu_mem_usage lr_div_factor lr_groups
lr_quadratic_warmup lr_scheduler lr_scheduler_kwargs max_grad_norm max_memory max_packed_sequence_len
max_prompt_len max_steps mean_resizing_embeddings merge_lora merge_method metric_for_best_model
micro_batch_size min_sample_len mlflow_experiment_name mlflow_run_name mlflow_tracking_uri model_config
model_kwargs model_quantization_config model_quantization_config_kwargs model_revision model_type
multipack_real_batches neftune_noise_alpha noisy_embedding_alpha num_dataset_shards_to_save num_epochs
num_generation_samples num_labels optim_args optim_target_modules optimizer orpo_alpha otel_metrics_host
otel_metrics_port output_dir overrides_of_model_config overrides_of_model_kwargs pad_to_multiple_of
pad_to_sequence_len peft peft_autocast_adapter_dtype peft_ensure_weight_tying peft_init_lora_weights
peft_layer_replication peft_layers_pattern peft_layers_to_transform peft_trainable_token_indices peft_use_dora
peft_use_rslora plugins pose_max_context_len pose_num_chunks pose_split_on_token_ids precompute_ref_log_probs
preprocess_iterable pretrain_multipack_attn pretrain_multipack_buffer_size pretraining_dataset
pretraining_sample_concatenation process_reward_model processor_kwargs processor_type profiler_steps
profiler_steps_start push_dataset_to_hub qat qgalore_cos_threshold qgalore_gamma_proj qgalore_proj_bits
qgalore_proj_group_size qgalore_proj_quant qgalore_proj_type qgalore_queue_size qgalore_rank qgalore_scale
qgalore_update_proj_gap qlora_sharded_model_loading quantization quantize_moe_experts ray_num_workers
ray_run_name reinit_weights relora relora_cpu_offload relora_prune_method relora_prune_ratio
remove_unused_columns resize_token_embeddings_to_32x resources_per_worker resume_from_checkpoint
revision_of_model reward_model ring_attn_func rl rl_beta role_boundaries rope_scaling rpo_alpha s2_attention
sage_attention sample_packing sample_packing_bin_size sample_packing_eff_est sample_packing_group_size
sample_packing_mp_start_method sample_packing_sequentially save_first_step save_only_model save_safetensors
save_steps save_strategy save_total_limit saves_per_epoch scaling_softmax scaling_softmax_bias
scaling_softmax_factor sdp_attention sdpa_varlen seed selective_checkpointing sequence_len
sequence_parallel_degree shrink_embeddings shuffle_before_merging_datasets shuffle_merged_datasets simpo_gamma
skip_prepare_dataset special_tokens streaming streaming_multipack_buffer_size strict tensor_parallel_size
test_datasets tf32 tiled_mlp tiled_mlp_num_shards tiled_mlp_use_original_mlp tokenizer_config tokenizer_legacy
tokenizer_save_jinja_files tokenizer_type tokenizer_use_fast tokenizer_use_mistral_common tokens torch_compile
torch_compile_backend torch_compile_mode torch_compile_options torch_empty_cache_steps torchdistx_path
total_num_tokens total_supervised_tokens trackio_project_name trackio_run_name trackio_space_id
train_on_inputs trainer_cls trl trust_remote_code type_of_model unfrozen_parameters use_comet use_eaft
use_kernels use_mlflow use_onebitllms use_otel_metrics use_pose use_ray use_tensorboard use_trackio use_wandb
val_set_size vllm wandb_entity wandb_log_model wandb_mode wandb_name wandb_project wandb_run_id wandb_watch
warmup_ratio warmup_steps weight_decay world_size xformers_attention""")
# The plugins' keys (integrations/*/args.py: the class each plugin's get_input_args names), which axolotl
# accepts only with the plugin in `plugins`; without it the schema drops them (integrations/config.py).
PLUGIN_KEYS: dict[str, frozenset[str]] = {
    "cut_cross_entropy": words("cut_cross_entropy"),
    "densemixer": words("dense_mixer"),
    "diffusion": words("diffusion"),
    "expert_parallel": words("""
        expert_parallel_size expert_parallel_backend expert_parallel_num_nvl_bytes
        expert_parallel_num_rdma_bytes expert_parallel_token_capacity
        expert_parallel_fallback_on_unsupported"""),
    "grokfast": words("grokfast_alpha grokfast_lamb"),
    "hatchery": words("hatchery"),
    "kd": words("""
        kd_trainer kd_ce_alpha kd_alpha kd_temperature kd_beta kd_normalize_topk kd_online_server_base_url
        kd_online_topk kd_online_server kd_online_timeout kd_temperature_min"""),
    "kernels": words("""
        expert_backend nonexpert_quantization moe_grouped_backend moe_dequant_chunk_size moe_bnb_fast
        use_scattermoe use_sonicmoe use_dsv4_kernels use_glm_dsa_kernels dsv4_fp8_nonexpert_mode
        dsv4_fp8_lora_kernel dsv4_shared_mlp_lora_kernel dsv4_bf16_all dsv4_fp4_grouped_mode
        gemma4_fp8_nonexpert gemma4_nf4_nonexpert nvfp4_merge_aware nvfp4_merge_aware_start_step"""),
    "liger": words("""
        liger_rope liger_rms_norm liger_rms_norm_gated liger_layer_norm liger_swiglu liger_glu_activation
        liger_cross_entropy liger_fused_linear_cross_entropy liger_use_token_scaling"""),
    "llm_compressor": words("llmcompressor"),
    "lm_eval": words("lm_eval_tasks lm_eval_batch_size lm_eval_post_train lm_eval_model"),
    "mora": words("mora"),
    "nemo_gym": words("""
        nemo_gym_enabled nemo_gym_dir nemo_gym_auto_clone nemo_gym_config_paths nemo_gym_head_port
        nemo_gym_server_timeout nemo_gym_verify_timeout nemo_gym_run_timeout nemo_gym_datasets
        nemo_gym_auto_start nemo_gym_model_name nemo_gym_multi_turn nemo_gym_max_turns"""),
    "spectrum": words("spectrum_top_fraction spectrum_model_name"),
    "swanlab": words("""
        use_swanlab swanlab_project swanlab_experiment_name swanlab_description swanlab_mode swanlab_workspace
        swanlab_api_key swanlab_log_model swanlab_web_host swanlab_api_host swanlab_lark_webhook_url
        swanlab_lark_secret swanlab_log_completions swanlab_completion_log_interval
        swanlab_completion_max_buffer"""),
}
# Keys of older axolotl releases that configs still carry; the schema drops them, as any unknown key.
LEGACY_KEYS = words("gptq_groupsize gptq_model_v1 gptq_disable_exllama debug")

KNOWN = SCHEMA_KEYS | frozenset().union(*PLUGIN_KEYS.values()) | LEGACY_KEYS

# `rl` (utils/schemas/enums.py RLType) as the plan's stage (core/builders/rl.py: ipo is DPO with loss_type
# ipo; gdpo GRPO with multi_objective_aggregation normalize_then_sum; ebft GRPO with feature-matching rewards).
RL_STAGES = {"dpo": "dpo", "ipo": "dpo", "orpo": "orpo", "simpo": "simpo", "kto": "kto", "grpo": "grpo",
             "gdpo": "grpo", "ebft": "grpo"}
# The plan's stage as axolotl's keys (`--stage`); axolotl has no PPO.
STAGE_RL = {"dpo": "dpo", "orpo": "orpo", "simpo": "simpo", "kto": "kto", "grpo": "grpo"}
# TRL as axolotl pins it (pyproject.toml: trl==1.8.0), whose defaults differ from TRL 1.16's: GRPOConfig
# max_completion_length 256, and no fused LM head (DPO, KTO and GRPO compute the full logits unless Liger's
# chunked losses are asked for).
TRL_GRPO_COMPLETION = 256

# Settings that change what a step holds and that this plan does not model: each group of keys, what they do,
# and which way the estimate is off when one of them is set.
NOT_MODELLED: list[tuple[tuple[str, ...], str, Direction]] = [
    (("unfrozen_parameters",),
     "only the parameters matching these patterns train; this plan trains every weight", "overstates"),
    (("lisa_n_layers", "lisa_step_interval", "lisa_layers_attribute"),
     "LISA trains a few sampled layers at a time; this plan trains every layer", "overstates"),
    (("spectrum_top_fraction", "spectrum_model_name"),
     "Spectrum trains only the highest-SNR share of the weights; this plan trains every weight",
     "overstates"),
    (("lora_modules_to_save",),
     "these modules train as full copies (weights, gradients, optimizer state), which this plan does not "
     "count", "understates"),
    (("peft_trainable_token_indices",),
     "trainable token rows of the embeddings are not counted", "understates"),
    (("peft_layers_to_transform", "peft_layers_pattern"),
     "LoRA adapts only these layers; this plan adapts every layer", "overstates"),
    (("peft_layer_replication",), "layers are replicated, which this plan does not count", "understates"),
    (("lora_rank_pattern",), "some modules get another rank than lora_r", "unknown"),
    (("lora_embedding_kernel",),
     "axolotl's fused LoRA embedding kernel saves other tensors than peft's embedding adapter", "unknown"),
    (("layer_offloading",),
     "frozen layers are offloaded to CPU memory between uses; this plan keeps them on the GPU", "overstates"),
    (("selective_checkpointing", "dynamic_checkpoint"),
     "some activations are kept rather than recomputed; this plan checkpoints every layer", "understates"),
    (("qat",), "quantization-aware training fake-quantizes weights and activations, whose copies this plan "
     "does not count", "understates"),
    (("fp8", "fp8_enable_fsdp_float8_all_gather"),
     "FP8 linears save fp8 activations; this plan saves them in 16 bits", "overstates"),
    (("model_quantization_config", "model_quantization_config_kwargs"),
     "the base is loaded quantized (MXFP4 or FP8); this plan loads it in 16 bits", "overstates"),
    (("gptq", "gptq_groupsize", "gptq_model_v1", "gptq_disable_exllama"),
     "the base is a GPTQ-quantized checkpoint; this plan loads it in 16 bits", "overstates"),
    (("use_onebitllms",), "the base is a 1-bit model; this plan loads it in 16 bits", "overstates"),
    (("chunked_cross_entropy", "chunked_cross_entropy_num_chunks"),
     "the loss is computed in chunks, without the fp32 copy of the logits this plan counts", "overstates"),
    (("tiled_mlp", "tiled_mlp_num_shards", "tiled_mlp_use_original_mlp"),
     "the MLP runs in tiles along the sequence, saving less than this plan counts", "overstates"),
    (("use_kernels",),
     "Hub kernels replace modules with fused ones that save fewer activations", "overstates"),
    (("flash_attn_cross_entropy", "flash_attn_rms_norm", "flash_attn_fuse_mlp", "flash_optimum"),
     "flash-attn's fused kernels save fewer activations than the ops this plan replays", "overstates"),
    (("s2_attention",), "shifted sparse attention computes attention in groups", "overstates"),
    (("llama4_linearized_experts",), "the Llama 4 experts are linearized into separate modules", "unknown"),
    (tuple(sorted(PLUGIN_KEYS["kernels"])),
     "the kernels plugin replaces the MoE (and some non-expert) layers with its own kernels", "unknown"),
    (tuple(sorted(PLUGIN_KEYS["expert_parallel"] - {"expert_parallel_size"})),
     "expert parallelism splits the MoE experts across GPUs; this plan keeps them all on each GPU",
     "overstates"),
    (("torch_compile", "torch_compile_backend", "torch_compile_mode", "torch_compile_options", "deepcompile"),
     "compilation fuses operations and can save fewer activations, while this plan replays eager autograd",
     "overstates"),
    (("auto_find_batch_size",), "the Trainer halves the micro-batch after an out-of-memory error, while this "
     "plan keeps micro_batch_size", "overstates"),
    (("max_memory", "gpu_memory_limit"),
     "layers beyond the limit are placed on the CPU; this plan puts the whole model on the GPU",
     "overstates"),
    (("lora_on_cpu",), "LoRA weights are kept on the CPU; this plan puts them on the GPU", "overstates"),
    (tuple(sorted(PLUGIN_KEYS["kd"])),
     "knowledge distillation adds the teacher's top-k logits and a distillation loss", "understates"),
    (("grokfast_alpha", "grokfast_lamb"),
     "Grokfast keeps an EMA of the gradients besides them", "understates"),
    (("processor_type", "processor_kwargs", "freeze_mm_modules", "image_size", "image_resize_algorithm",
      "role_boundaries"),
     "a multimodal model: the image tokens and the vision tower's activations are not modelled", "unknown"),
    (("overrides_of_model_config", "model_config", "overrides_of_model_kwargs", "model_kwargs"),
     "the model's config is overridden at load, while this plan reads the config.json as it is", "unknown"),
    (("trainer_cls",), "a custom trainer class; this plan is the Trainer's supervised step", "unknown"),
    (("diffusion",),
     "diffusion language-model training masks and denoises tokens; this plan is the causal step", "unknown"),
    (("hatchery",),
     "the training runs on a remote service (Tinker/Hatchery); this GPU estimate does not apply", "unknown"),
    (("llmcompressor",), "sparse fine-tuning keeps masks and compression state", "unknown"),
    (("dense_mixer",), "DenseMixer routes every token through every expert in backward", "understates"),
    (("mora",), "MoRA's square adapters are not LoRA's", "unknown"),
]
WARNED_KEYS = frozenset(key for keys, _, _ in NOT_MODELLED for key in keys)

# Keys `read` plans with (Liger's other kernels and the plugins list included).
PLANNED = words("""
base_model adapter load_in_4bit load_in_8bit lora_r lora_alpha lora_dropout lora_target_linear
lora_target_modules lora_target_parameters peft_use_rslora peft_use_dora peft_init_lora_weights peft loraplus_lr_ratio
peft_autocast_adapter_dtype micro_batch_size batch_size sequence_len
gradient_accumulation_steps gradient_checkpointing attn_implementation flash_attention sdp_attention
xformers_attention flex_attention sage_attention eager_attention gemma4_hybrid_attn_impl bf16 fp16 bfloat16
float16 optimizer deepspeed fsdp fsdp_config fsdp_version dp_shard_size dp_replicate_size plugins
context_parallel_size sequence_parallel_degree tensor_parallel_size expert_parallel_size
liger_fused_linear_cross_entropy liger_rope liger_rms_norm liger_rms_norm_gated liger_layer_norm liger_swiglu
liger_glu_activation liger_cross_entropy cut_cross_entropy lora_mlp_kernel lora_qkv_kernel lora_o_kernel
quantize_moe_experts experts_implementation
learning_rate num_epochs max_steps lr_scheduler
warmup_ratio warmup_steps max_grad_norm datasets val_set_size bnb_config_kwargs sample_packing""")

# Everything else axolotl takes changes neither memory, stability nor time of the training steps: logging,
# saving, evaluation, the hub, data preparation, tokenizer and chat template, the learning-rate schedule's
# shape, and the preference losses' settings (dpo_beta, the losses' weights, ...). The sections and switches
# `_stage` reads for the stage they belong to (trl, vllm, precompute_ref_log_probs, dpo_use_liger_kernel, ...)
# are modelled there and irrelevant to the other stages.
RECOGNISED = KNOWN - PLANNED - WARNED_KEYS - {"rl", "reward_model", "process_reward_model"}

# axolotl's own optimizers (utils/schemas/enums.py, CustomSupportedOptimizers); the others are
# TrainingArguments' `optim` names (common.optimizer_for): (planner optimizer, which way the estimate is off,
# why).
CUSTOM_OPTIMIZERS: dict[str, tuple[str, Direction | None, str]] = {
    "optimi_adamw": ("adamw", None, ""),  # a Kahan-summation buffer with pure 16-bit weights: see read()
    "ao_adamw_8bit": ("adamw-torch-8bit", None, ""),
    "ao_adamw_fp8": ("adamw-torch-8bit", None, ""),  # fp8 states: one byte each, as 8-bit states
    "ao_adamw_4bit": ("adamw-torch-4bit", "understates", "torchao's own AdamW4bit default block_size 128 (the "
                      "Trainer passes 256) keeps twice the fp32 scales, 1/32 byte more per parameter"),
    "adopt_adamw": ("adamw", None, ""),  # ADOPT keeps Adam's two states
    "came_pytorch": ("sgd-momentum", "understates", "CAME keeps a momentum plus factored second moments and "
                     "confidence terms"),
    "muon": ("muon", None, ""),
    "dion": ("adamw", "overstates", "Dion keeps low-rank states"),
    "sinkgd": ("adamw", "unknown", "SinkGD's state is not Adam's"),
    "flash_adamw": ("adamw", "overstates", "FlashOptim compresses the states and the master weights"),
    "flash_adam": ("adamw", "overstates", "FlashOptim compresses the states and the master weights"),
    "flash_sgd": ("sgd-momentum", "overstates", "FlashOptim compresses the momentum"),
    "flash_sgdw": ("sgd-momentum", "overstates", "FlashOptim compresses the momentum"),
    "flash_lion": ("sgd-momentum", "overstates", "FlashOptim compresses Lion's momentum"),
    "q_galore_adamw8bit": ("galore-adamw-8bit", "overstates", "Q-GaLore also keeps its projections in int4"),
}

# Liger's kernels besides the fused linear cross-entropy (integrations/liger/args.py), each the keyword argument
# LigerPlugin.pre_model_load passes to the model type's apply function (plugin.py; liger_swiglu is args.py's
# deprecated name of liger_glu_activation), as the plan's kernel names (planner.liger)
LIGER_KERNELS = {"liger_rope": "rope", "liger_rms_norm": "rms_norm", "liger_layer_norm": "layer_norm",
                 "liger_swiglu": "glu", "liger_glu_activation": "glu", "liger_cross_entropy": "cross_entropy"}

# The deprecated attention switches and the attn_implementation each stands for (utils/schemas/enums.py
# LEGACY_ATTN_FLAG_TO_IMPL, most specific first)
LEGACY_ATTENTION = {"xformers_attention": "xformers", "sage_attention": "sage",
                    "flex_attention": "flex_attention", "flash_attention": "flash_attention_2",
                    "sdp_attention": "sdpa", "eager_attention": "eager"}

# The DeepSpeed configs axolotl ships (deepspeed_configs/*.json): ZeRO stage, optimizer offload, parameter
# offload. Examples point at them by a path relative to axolotl's checkout.
SHIPPED_DEEPSPEED = {
    "deepspeed_configs/zero1.json": (1, False, False),
    "deepspeed_configs/zero1_torch_compile.json": (1, False, False),
    "deepspeed_configs/zero2.json": (2, True, False),
    "deepspeed_configs/zero2_torch_compile.json": (2, True, False),
    "deepspeed_configs/zero3.json": (3, False, False),
    "deepspeed_configs/zero3_bf16.json": (3, False, False),
    "deepspeed_configs/zero3_bf16_cpuoffload_all.json": (3, True, True),
    "deepspeed_configs/zero3_bf16_cpuoffload_params.json": (3, False, True),
}

# FSDP's sharding options (transformers trainer_utils.py FSDPOption) as ZeRO stages
FSDP_SHARDING = {"full_shard": 3, "hybrid_shard": 3, "shard_grad_op": 2, "hybrid_shard_zero2": 2,
                 "no_shard": 0}


def _set(value: Any) -> bool:
    """A key counts as set unless it is null, false, 0 or empty (axolotl writes some switches as strings)."""
    if isinstance(value, str):
        return value.strip().lower() not in ("false", "no", "off", "0", "")
    return value not in (None, False, 0, [], {})


class _Read:
    def __init__(self, k: Keys):
        self.k = k
        self.notes: list[str] = []
        self.warnings: list[Finding] = []

    def warn(self, code: str, keys: str | list[str], message: str, direction: Direction) -> None:
        """A warning on the keys the file has among `keys` (the first of them when it has none)."""
        keys = [keys] if isinstance(keys, str) else keys
        keys = [key for key in keys if key in self.k.config] or keys[:1]
        self.warnings.append(warning(code, keys, f"{message}, {say(direction)}", direction))


def _plugins(k: Keys) -> set[str]:
    """The plugins in `plugins`, by their integration's folder (axolotl.integrations.liger.LigerPlugin)."""
    out = set()
    for name in k.get("plugins", list, []) or []:
        parts = str(name).split(".")
        out.add(parts[2] if len(parts) > 2 and parts[:2] == ["axolotl", "integrations"] else str(name))
    return out


def read(keys: Keys, base: Path, stage: str | None = None) -> RunConfig:
    """`stage` (a plan stage, from `--stage`) overrides the file's `rl` / `reward_model`."""
    k, path = keys, keys.path
    r = _Read(k)
    model = k.get("base_model", str)
    plugins = _plugins(k)
    dropped: set[str] = set()  # plugin keys without their plugin
    for plugin, plugin_keys in PLUGIN_KEYS.items():
        given = sorted(str(key) for key in k.config.keys() & plugin_keys)
        if given and plugin not in plugins:
            dropped.update(given)
            k.used.update(given)
            if any(_set(k.config[key]) for key in given):
                these = "these keys" if len(given) > 1 else "this key"
                r.notes.append(f"{', '.join(given)}: axolotl drops {these} without the {plugin} plugin in "
                               f"plugins (axolotl.integrations.{plugin}); planned without")
    zero, offload, fsdp_checkpointing, sharded, offload_params = _sharding(r, base)
    parallel = _parallel(r, dropped)
    method, quant_bits = _method(r)
    kernel, attn = _attention(r)
    cut_ce = "cut_cross_entropy" in plugins and k.get("cut_cross_entropy", bool, True)  # args.py: true
    precision, bf16, fp16 = _precision(r, method=method, sharded=sharded, attn=attn, cut_ce=cut_ce)

    # Checkpointing: true, or "offload"/"offload_disk" (deprecated spellings of activation_offloading,
    # schemas/validation.py check_gradient_checkpointing_w_offload); FSDP's own activation_checkpointing
    gc = k.get("gradient_checkpointing", (bool, str), False)
    checkpointing = _set(gc) or fsdp_checkpointing
    checkpointing, activation_offload = _activation_offloading(r, gc, checkpointing, method)

    fused, liger_kernels = _kernels(r, plugins, cut_ce)
    for group, why, direction in NOT_MODELLED:
        given = [key for key in group if key in k.config and key not in dropped]
        for key in group:
            k.get(key, object)
        if any(_set(k.config[key]) for key in given):
            r.warn("not_modelled", given, f"{', '.join(given)}: {why}", direction)
    if k.get("peft_autocast_adapter_dtype", bool) is False and method == "lora":
        r.warn("not_modelled", "peft_autocast_adapter_dtype", "peft_autocast_adapter_dtype false: the "
               "adapters stay in the base's 16-bit dtype, while this plan keeps them in fp32", "overstates")
    use_dora = _lora_variants(r, method, quantized=bool(quant_bits))
    fused_lora = _lora_kernels(r, method, use_dora)
    quantize_experts = _quantize_experts(r, quant_bits)
    _experts_implementation(r, plugins, dropped)

    micro = k.positive("micro_batch_size", 1)
    accum = k.get("gradient_accumulation_steps", int)
    batch_size = k.get("batch_size", int)
    if accum is None:  # utils/config/__init__.py normalize_config: batch_size // micro_batch_size
        accum = max(1, batch_size // micro) if batch_size else 1
    if accum < 1:
        raise FtplanError(f"{path}: key 'gradient_accumulation_steps' must be at least 1, got {accum}")

    optim_name = k.get("optimizer", str, "adamw_torch_fused")  # schemas/training.py
    optim_fields: dict = {}
    if optim_name in CUSTOM_OPTIMIZERS:
        optim, direction, why = CUSTOM_OPTIMIZERS[optim_name]
        if optim_name == "optimi_adamw" and precision == "bf16":
            direction, why = "understates", "optimi keeps a Kahan-summation buffer for 16-bit weights"
        if direction is not None:
            r.warn("optimizer_nearest", "optimizer", f"optimizer {optim_name} is planned as {optim}: {why}",
                   direction)
    else:
        optim_fields, optim_warning = optimizer_settings(optim_name, "optimizer", k.get("optim_args", (str, dict)),
                                                         where=str(path))
        optim = optim_fields.pop("optimizer")
        if optim_warning:
            r.warnings.append(optim_warning)

    if k.get("lora_target_linear", bool, False):
        targets = "all"  # adapter.py: every linear layer, the lora_target_modules among them
        k.get("lora_target_modules", (str, list))
    elif "lora_target_modules" not in k.config and k.config.get("lora_target_parameters"):
        targets = ""  # adapter.py: target_modules [], the parameters alone
    else:
        targets = targets_of(k, "lora_target_modules", "all", r.warnings)
    target_parameters = _target_parameters(r, k, method)
    bnb = k.get("bnb_config_kwargs", dict, {}) or {}
    stage_fields, fused = _stage(r, stage, method=method, zero=zero, batch=micro, grad_accum=accum, fused=fused,
                                 gpus=_gpus(k))
    plan = build_plan(
        "axolotl", path, method=method, quant_bits=quant_bits, precision=precision, optimizer=optim,
        batch_size=micro, grad_accum=accum, gradient_checkpointing=checkpointing,
        activation_offload=activation_offload, attention=kernel, lora_rank=k.positive("lora_r", 8), lora_target=targets,
        lora_target_parameters=target_parameters, use_dora=use_dora,
        lora_dropout=k.get("lora_dropout", float, 0.0),
        # loaders/model.py: bnb_4bit_use_double_quant true, which bnb_config_kwargs may override
        double_quant=bool(bnb.get("bnb_4bit_use_double_quant", True)),
        zero=zero, offload_optimizer=offload, offload_params=offload_params, fused_loss=fused,
        liger_kernels=liger_kernels, lora_kernels=fused_lora, quantize_experts=quantize_experts, framework="trl",
        **parallel,
        **stage_fields, **optim_fields, **_packing(r, attn, stage_fields.get("stage", "sft")),
    )
    hyper = read_hyper(k, epochs="num_epochs", epochs_default=1.0, scheduler="lr_scheduler",
                       scheduler_default="cosine", fp16=fp16, bf16=bf16)
    if "warmup_steps" not in k.config and "warmup_ratio" not in k.config:
        # core/builders/base.py _configure_warmup_and_logging: 3% of the steps (at most 100) when unset
        hyper = hyper.model_copy(update={"warmup_ratio": 0.03})
    if plan.stage in PREFERENCE:
        hyper = hyper.model_copy(update={"beta": _trl_beta(k)})
    raw = k.get("datasets", list, []) or []
    data = DataInfo(datasets=[str(d.get("path")) for d in raw if isinstance(d, dict)],
                    val_size=k.get("val_set_size", float, 0.0))
    return RunConfig(path=path, format="axolotl", model=model or "", plan=plan, hyper=hyper, data=data,
                     notes=r.notes, warnings=r.warnings, gpus=_gpus(k))


def _activation_offloading(r: _Read, gc: Any, checkpointing: bool, method: str) -> tuple[bool, str]:
    """activation_offloading (and gradient_checkpointing offload / offload_disk, its deprecated spellings:
    schemas/validation.py check_gradient_checkpointing_w_offload) as the plan's checkpointing and offload mode.

    hidden_states offloads only the checkpointed layers' inputs (monkeypatch/checkpoint_activation_offload.py).
    true, legacy and disk run TRL's OffloadActivations over the whole forward
    (core/trainers/mixins/activation_checkpointing.py): for an adapter it replaces recomputation
    (core/builders/base.py _configure_gradient_checkpointing turns the Trainer's checkpointing off); a full
    fine-tune keeps checkpointing (loaders/model.py _apply_activation_checkpointing wraps every layer)."""
    k = r.k
    mode = k.get("activation_offloading", (bool, str), False)
    if isinstance(gc, str) and gc.strip().lower() in ("offload", "offload_disk"):
        mode = True if gc.strip().lower() == "offload" else "disk"
    if not _set(mode):
        return checkpointing, "off"
    mode = mode.strip().lower() if isinstance(mode, str) else mode
    if mode not in (True, "true", "legacy", "disk", "hidden_states"):
        raise FtplanError(f"{k.path}: key 'activation_offloading' must be true, false, legacy, disk or "
                          f"hidden_states, got {mode!r}")
    if not checkpointing:
        raise FtplanError(f"{k.path}: key 'activation_offloading' needs gradient_checkpointing: true (axolotl "
                          "refuses it otherwise: check_activation_offloading_wo_gc); set both")
    if mode == "hidden_states":
        return True, "checkpoint"
    if mode == "disk":
        r.notes.append("activation_offloading disk: the offloaded activations go to disk files, not host memory")
    if method != "full":
        r.notes.append("activation_offloading with an adapter: axolotl turns gradient checkpointing off, as "
                       "offloading replaces recomputation")
        return False, "saved"
    return True, "saved"


# axolotl's LoRA kernel switches (utils/schemas/config.py) as planner.lora_kernels names
LORA_KERNEL_KEYS = {"lora_qkv_kernel": "qkv", "lora_o_kernel": "o", "lora_mlp_kernel": "mlp"}


def _target_parameters(r: _Read, k: Keys, method: str) -> str:
    """lora_target_parameters, which loaders/adapter.py hands to peft's LoraConfig as target_parameters
    (planner.param_targets); names of other parameters than the MoE experts' and router's stay a warning."""
    value = k.get("lora_target_parameters", (str, list))
    if method not in ("lora", "qlora"):  # no LoraConfig is built without a LoRA adapter
        return ""
    names, unknown = param_targets.modelled(value)
    if unknown:
        r.warn("not_modelled", "lora_target_parameters", f"lora_target_parameters {', '.join(unknown)}: LoRA on "
               f"parameters other than {param_targets.KNOWN} is not counted", "understates")
    return names


def _lora_kernels(r: _Read, method: str, use_dora: bool) -> str:
    """lora_qkv_kernel / lora_o_kernel / lora_mlp_kernel as the plan's `lora_kernels` (planner.lora_kernels).

    Unset, axolotl turns them all on for adapter lora/qlora (utils/schemas/config.py
    check_auto_enable_lora_kernels) unless `rl` or nvfp4_merge_aware is set, a kernel key is given, the adapter is
    8-bit LoRA, trust_remote_code is on, or FSDP1 runs on several GPUs. 8-bit LoRA and trust_remote_code refuse
    them outright (schemas/validation.py check_lora_kernels_8bit, check_lora_kernels_trust_remote_code)."""
    k = r.k
    given = {key: k.get(key, bool) for key in LORA_KERNEL_KEYS}
    adapter = k.get("adapter", str)
    if method != "lora" or adapter not in ("lora", "qlora"):
        return ""
    eight = adapter == "lora" and k.get("load_in_8bit", bool, False)
    remote = _set(k.config.get("trust_remote_code"))
    asked = [key for key, on in given.items() if on]
    if asked and (eight or remote):
        why = "8-bit LoRA (load_in_8bit)" if eight else "trust_remote_code"
        raise FtplanError(f"{k.path}: key '{asked[0]}' is not compatible with {why}: axolotl refuses it; set "
                          f"{asked[0]}: false" + ("" if eight else " or drop trust_remote_code"))
    explicit = any(v is not None for v in given.values()) or k.config.get("lora_embedding_kernel") is not None
    fsdp = k.config.get("fsdp_config")
    version = k.config.get("fsdp_version") or (fsdp.get("fsdp_version") if isinstance(fsdp, dict) else None)
    fsdp1 = fsdp is not None and str(version) != "2"
    if explicit:
        names = [name for key, name in LORA_KERNEL_KEYS.items() if given[key]]
    elif _set(k.config.get("rl")) or _set(k.config.get("nvfp4_merge_aware")) or eight or remote or fsdp1:
        return ""
    else:
        names = list(LORA_KERNEL_KEYS.values())
    if not names:
        return ""
    if use_dora:
        r.warn("not_modelled", [key for key in LORA_KERNEL_KEYS if given[key]] or "peft_use_dora",
               "axolotl's LoRA kernels with DoRA save the combined outputs and magnitude scales, which this plan "
               "does not model; planned as peft's DoRA layers", "unknown")
        return ""
    kernels = ",".join(names)
    said = "lora_*_kernel unset: axolotl turns them on for LoRA (check_auto_enable_lora_kernels); " \
        if not explicit else ""
    r.notes.append(said + lora_kernels.assumption(kernels))
    return kernels


# transformers 5's MoE kernel when none is asked for (modeling_utils.py get_correct_experts_implementation), the one
# planner.activations replays; the expert_parallel plugin wraps whichever is set around its all-to-all
# (integrations/expert_parallel/plugin.py), which leaves each GPU's expert compute as it is
PLANNED_EXPERTS = "grouped_mm"


def _experts_implementation(r: _Read, plugins: set[str], dropped: set[str]) -> None:
    """experts_implementation: grouped_mm is what this plan replays; scattermoe / sonicmoe are the kernels plugin's
    (integrations/kernels/args.py sets them from use_scattermoe / use_sonicmoe), whose keys are warned as a group;
    eager and batched_mm keep other tensors than grouped_mm."""
    k = r.k
    value = k.get("experts_implementation", str)
    if value is None:
        return
    if value == PLANNED_EXPERTS:
        r.notes.append("experts_implementation grouped_mm: transformers' default MoE kernel, as planned")
        return
    kernels_keys = PLUGIN_KEYS["kernels"] - dropped
    if value in ("scattermoe", "sonicmoe") and "kernels" in plugins and any(_set(k.config.get(key))
                                                                           for key in kernels_keys):
        return  # the kernels plugin's warning covers it
    if value == "batched_mm":  # integrations/moe.py batched_mm_experts_forward: bmm over weights gathered per token
        r.warn("not_modelled", "experts_implementation", "experts_implementation batched_mm: each routed token's "
               "expert weights are gathered into one tensor that the batched matmul keeps for backward, while this "
               "plan replays transformers' grouped_mm", "understates")
        return
    r.warn("not_modelled", "experts_implementation", f"experts_implementation {value}: the MoE experts run another "
           "kernel than transformers' grouped_mm, which this plan replays", "unknown")


def _quantize_experts(r: _Read, quant_bits: int | None) -> bool:
    """quantize_moe_experts: the fused MoE expert tensors quantized as they load (monkeypatch/moe_quant.py
    patch_moe_quantization_on_load; planner.moe_quant), in the base's 4 or 8 bits. utils/schemas/config.py
    check_quantize_moe_experts refuses it with lora_target_linear, and without adapter lora/qlora and
    load_in_4bit or load_in_8bit."""
    k = r.k
    if not k.get("quantize_moe_experts", bool, False):
        return False
    if k.get("lora_target_linear", bool, False):
        raise FtplanError(f"{k.path}: key 'quantize_moe_experts' is not compatible with lora_target_linear (axolotl "
                          "refuses both); name the modules in lora_target_modules and the experts in "
                          "lora_target_parameters")
    if k.get("adapter", str) not in ("lora", "qlora") or not (k.get("load_in_4bit", bool, False)
                                                              or k.get("load_in_8bit", bool, False)):
        raise FtplanError(f"{k.path}: key 'quantize_moe_experts' needs adapter lora or qlora with load_in_4bit or "
                          "load_in_8bit (axolotl refuses it otherwise); set them or drop quantize_moe_experts")
    if not quant_bits:  # adapter lora with load_in_4bit: the linears load in 16 bits (see _method)
        r.warn("not_modelled", "quantize_moe_experts", "quantize_moe_experts on a base whose linears load in 16 "
               "bits: the experts are quantized, while this plan keeps them in the compute dtype", "overstates")
        return False
    r.notes.append(f"quantize_moe_experts: the fused MoE expert tensors are quantized to {quant_bits} bits as they "
                   "load, like the linears")
    return True


def _lora_variants(r: _Read, method: str, quantized: bool) -> bool:
    """peft_use_dora, and the keys that change LoRA's init or scaling but not its tensors (loaders/adapter.py
    _build_lora_config_kwargs: they reach peft's LoraConfig only with adapter lora or qlora). Returns use_dora."""
    k = r.k
    dora = k.get("peft_use_dora", bool, False)
    rslora = k.get("peft_use_rslora", bool, False)
    init = k.get("peft_init_lora_weights", (bool, str))
    ratio = k.get("loraplus_lr_ratio", float)
    peft = k.get("peft", dict, {}) or {}
    loftq = (peft.get("loftq_config") or {}).get("loftq_bits") if isinstance(peft.get("loftq_config"), dict) else None
    if method != "lora":
        given = [key for key in ("peft_use_dora", "peft_use_rslora", "peft_init_lora_weights", "loraplus_lr_ratio",
                                 "peft") if _set(k.config.get(key))]
        if given:
            r.notes.append(f"{', '.join(given)}: LoRA settings, which act only with adapter lora or qlora; ignored "
                           "for this full fine-tune")
        return False
    if rslora:
        r.notes.append(rslora_note("peft_use_rslora"))
    if ratio is not None:
        r.notes.append(loraplus_note("loraplus_lr_ratio", ratio))
    if loftq and init is None:  # schemas/peft.py LoftQConfig: init_lora_weights loftq (model.py: no kbit prep)
        init, key = "loftq", "peft.loftq_config"
    else:
        key = "peft_init_lora_weights"
    if quantized and str(init).lower().startswith("pissa"):
        raise FtplanError(f"{k.path}: key 'peft_init_lora_weights' {init} on a quantized base: peft initialises "
                          "PiSSA only from 16- or 32-bit weights (tuners/lora/layer.py pissa_init raises); remove "
                          "load_in_4bit/load_in_8bit or the PiSSA init")
    if init is not None:
        what, direction = init_lora(key, init, k.path)
        if direction:
            r.warn("lora_init", key, f"{key} {init}: {what}", direction)
        elif what:
            r.notes.append(f"{key} {init}: {what}")
    return dora


def _method(r: _Read) -> tuple[str, int | None]:
    """adapter, load_in_4bit / load_in_8bit (schemas/peft.py validators; loaders/model.py quantizes with
    bitsandbytes only for adapter qlora with load_in_4bit, and lora with load_in_8bit)."""
    k, path = r.k, r.k.path
    adapter = k.get("adapter", str)
    four, eight = k.get("load_in_4bit", bool, False), k.get("load_in_8bit", bool, False)
    if not adapter:
        if four or eight:
            raise FtplanError(f"{path}: key 'load_in_4bit'/'load_in_8bit' without an adapter is a quantized "
                              "full fine-tune, which axolotl refuses; set adapter: qlora")
        return "full", None
    if adapter == "qlora":
        if eight:
            raise FtplanError(f"{path}: key 'adapter' qlora with load_in_8bit: axolotl refuses it; use "
                              "adapter: lora with load_in_8bit")
        if not four:
            raise FtplanError(f"{path}: key 'adapter' qlora needs load_in_4bit: true (axolotl refuses it "
                              "otherwise)")
        return "lora", 4
    if adapter != "lora":
        r.warn("adapter", "adapter", f"adapter {adapter}: not LoRA; planned as LoRA adapters on a frozen "
               "base", "unknown")
        return "lora", None
    if four:
        r.warn("lora_4bit", ["adapter", "load_in_4bit"], "adapter lora with load_in_4bit: axolotl quantizes "
               "to 4 bits only with adapter: qlora, so the base loads in 16 bits and peft's "
               "prepare_model_for_kbit_training casts its weights to fp32; planned as LoRA on a 16-bit base",
               "understates")
        return "lora", None
    return "lora", 8 if eight else None


# utils/schemas/enums.py ATTN_IMPLS_SUPPORTING_PACKING: the kernels that run packed sequences apart (varlen)
PACKING_KERNELS = frozenset({"flash_attention_2", "flash_attention_3", "flex_attention", "xformers", "sage",
                             "kernels-community/flash-attn2", "kernels-community/flash-attn3",
                             "kernels-community/sage-attention"})


def _packing(r: _Read, attn: str | None, stage: str) -> dict[str, Any]:
    """sample_packing: the MultipackBatchSampler fills bins with whole sequences. With a kernel that supports
    packing, core/trainers/base.py `_create_multipack_sampler` takes batch_size 1 and bins of micro_batch_size x
    sequence_len tokens (multipack_real_batches off, core/builders/causal.py): one flattened row, padding-free;
    otherwise micro_batch_size rows of sequence_len, the mask dropped so transformers keeps the sequences apart
    from position_ids (`attn_decontaminates_packing`: sdpa, eager). pad_to_sequence_len (on by default with
    sample_packing, schemas/validation.py) pads each bin to its capacity, so the micro-batch holds all the tokens
    the plan counts either way; sample_packing_eff_est only sizes the epoch."""
    k = r.k
    if not k.get("sample_packing", bool, False):
        return {}
    k.get("sample_packing_eff_est", float)
    real_rows = k.get("multipack_real_batches", bool)
    flat = (not real_rows if real_rows is not None else attn in PACKING_KERNELS) and stage in ("sft", "pt")
    if not (attn in PACKING_KERNELS or attn in (None, "sdpa", "eager")):
        r.notes.append(f"sample_packing with attn_implementation {attn}: axolotl cannot keep packed sequences "
                       "apart with it, so they attend to each other")
    if k.get("pad_to_sequence_len", bool) is False:
        r.notes.append("pad_to_sequence_len false: bins are not padded; planned at their capacity, the fullest "
                       "micro-batch")
    return {"packing": True, "padding_free": flat}


def _attention(r: _Read) -> tuple[str, str | None]:
    """attn_implementation, or the deprecated switches it replaced (schemas/config.py
    normalize_attn_implementation); unset, transformers' default, sdpa. Returns the plan's kernel and the
    attn_implementation."""
    k = r.k
    attn = k.get("attn_implementation", str)
    flags = [flag for flag in LEGACY_ATTENTION if _set(k.get(flag, (bool, str), False))]
    if attn and flags:
        raise FtplanError(f"{k.path}: key 'attn_implementation' cannot be combined with the deprecated "
                          f"'{flags[0]}' (axolotl refuses both); keep attn_implementation")
    key = "attn_implementation"
    if attn is None and flags:
        key, attn = flags[0], LEGACY_ATTENTION[flags[0]]
    if k.get("gemma4_hybrid_attn_impl", bool, False) and attn is None:
        attn = "flash_attention_2"  # normalize_attn_implementation defaults it for gemma4_hybrid_attn_impl
    kernel, unknown = attention("sdpa" if attn == "fp8" else attn, key)  # fp8 loads as sdpa (model.py)
    if unknown:
        r.warnings.append(unknown)
    return kernel, attn


def _precision(r: _Read, *, method: str, sharded: bool, attn: str | None,
               cut_ce: bool) -> tuple[str, bool, bool]:
    """The dtype axolotl loads the model in (utils/config/__init__.py resolve_dtype: bfloat16 for bf16 or bf16
    auto, float16 for fp16 or load_in_8bit, else float32) and the autocast the Trainer adds (bf16/fp16).

    A full fine-tune trains those 16-bit weights as they are, with no fp32 master copy, unless DeepSpeed or
    FSDP keep one (both up-cast the trainable weights under mixed precision: accelerate
    utils/fsdp_utils.py fsdp2_prepare_model, DeepSpeed's fp32 partitions)."""
    k = r.k
    bf16_raw = k.get("bf16", (bool, str), "auto")  # schemas/config.py: bf16 defaults to "auto"
    auto = isinstance(bf16_raw, str) and bf16_raw.strip().lower() == "auto"
    fp16 = k.get("fp16", bool, False)
    bf16 = False if auto and fp16 else auto or _set(bf16_raw)  # resolve_dtype: fp16 turns bf16 auto off
    if auto and bf16:
        said = "bf16 unset: axolotl's default is auto" if "bf16" not in k.config else "bf16 auto"
        r.notes.append(f"{said}: bf16 on a GPU that has it (Ampere or newer), fp16 on older ones; planned "
                       "as bf16")
    if bf16 and fp16:
        precision_of(bf16, fp16, False, k.path)  # both true: the shared error
    bfloat16, float16 = k.get("bfloat16", bool, False), k.get("float16", bool, False)
    if bf16 or bfloat16:
        weights = "bf16"
    elif k.get("load_in_8bit", bool, False) or fp16 or float16:
        weights = "fp16"
    else:
        weights = "fp32"
    if weights == "fp32":
        return precision_of(bf16, fp16, False, k.path), bf16, fp16
    if method == "full" and not sharded:
        if weights == "fp16" and fp16:
            # torch's GradScaler raises at the first step on fp16 gradients (amp/grad_scaler.py _unscale_grads_)
            raise FtplanError(f"{k.path}: key 'fp16' true on a full fine-tune: axolotl loads the weights in "
                              "float16 and the Trainer's gradient scaler stops at the first step (\"Attempting "
                              "to unscale FP16 gradients.\"); use bf16, or float16: true with fp16: false for "
                              "pure fp16")
        if attn in (None, "sdpa", "eager") and not cut_ce:
            # loaders/model.py _configure_embedding_dtypes: the embeddings, LM head and norms go to fp32, and
            # back to 16 bits only for adapters, FSDP, cut_cross_entropy or attention other than sdpa/eager
            r.warn("fp32_embeddings", ["attn_implementation"] if attn else ["bf16"], "full fine-tune with "
                   f"{attn or 'default (sdpa)'} attention: axolotl keeps the embeddings, LM head and norms "
                   "in fp32 (with their gradients and optimizer states), while this plan keeps every weight "
                   "in 16 bits", "understates")
        return ("fp16" if weights == "fp16" else "bf16"), bf16, fp16  # the 16-bit weights trained as loaded
    if not (bf16 or fp16):
        return ("fp16" if weights == "fp16" else "bf16"), bf16, fp16  # 16-bit weights with no autocast: pure
    return ("bf16-mixed" if bf16 else "fp16-mixed"), bf16, fp16


def _sharding(r: _Read, base: Path) -> tuple[int, bool, bool, bool, bool]:
    """DeepSpeed, or FSDP as axolotl sets it up (utils/trainer.py setup_fsdp_envs; core/builders/base.py
    hands fsdp_config to TrainingArguments): ZeRO stage, optimizer offload, FSDP's activation
    checkpointing, whether the weights are sharded, and whether their shards are offloaded (ZeRO-3
    offload_param; FSDP offload_params, CPUOffload(Policy) for FSDP1 and 2 alike)."""
    k = r.k
    spec = k.get("deepspeed", (str, dict))
    shipped = SHIPPED_DEEPSPEED.get(Path(spec).as_posix().removeprefix("./")) if isinstance(spec, str) \
        else None
    if shipped is not None and not resolve_path(spec, base).is_file():
        stage, optimizer, param = shipped
        note = (f"deepspeed {spec}: axolotl's own (not found here; `axolotl fetch deepspeed_configs` copies "
                f"it), ZeRO-{stage}" + (" with optimizer offload" if optimizer else "")
                + (" and parameter offload" if param else ""))
        ds = DeepSpeed(stage=stage, offload_optimizer=optimizer, offload_param=param, note=note)
    else:
        ds = deepspeed_config(spec, k, base)
    fsdp = _fsdp(r)
    if ds.stage or ds.offload_optimizer:
        if fsdp.zero:
            raise FtplanError(f"{k.path}: keys 'deepspeed' and 'fsdp_config' are both set; axolotl takes one")
        if ds.note:
            r.notes.append(ds.note)
        return ds.stage, ds.offload_optimizer, False, ds.stage > 0, ds.offload_param
    if fsdp.note:
        r.notes.append(fsdp.note)
    if fsdp.offload and fsdp.zero != 3:
        r.warnings.append(param_offload_warning("fsdp_config"))
    return fsdp.zero, fsdp.offload, bool(fsdp.checkpointing), fsdp.zero > 0, fsdp.offload and fsdp.zero == 3


def _parallel(r: _Read, dropped: set[str]) -> dict[str, int]:
    """Context, tensor and expert parallel sizes (planner.parallel), and the GPUs they need at least.

    context_parallel_size (sequence_parallel_degree is its deprecated spelling, schemas/validation.py) makes
    ring-flash-attn groups whose ranks share each sequence and read the same batch (core/trainers/grpo/
    sampler.py: num_sp_groups = world_size // context_parallel_size); tensor_parallel_size is accelerate's
    ParallelismConfig tp_size beside FSDP2 (utils/trainer.py setup_parallelism_envs); expert_parallel_size the
    expert_parallel plugin's EP group (integrations/expert_parallel/plugin.py: ep x dp_shard x tp x cp = world)."""
    k = r.k
    cp = k.positive("context_parallel_size", 1) if "context_parallel_size" in k.config else \
        k.positive("sequence_parallel_degree", 1)
    tp = k.positive("tensor_parallel_size", 1)
    ep = 1 if "expert_parallel_size" in dropped else k.positive("expert_parallel_size", 1)
    if cp == tp == ep == 1:
        return {}
    return {"context_parallel": cp, "tensor_parallel": tp, "expert_parallel": ep,
            "gpus": max(_gpus(k) or 1, cp * tp * ep)}


def _fsdp(r: _Read) -> Fsdp:
    """FSDP in axolotl: `fsdp_config` turns it on (keys with or without the `fsdp_` prefix,
    schemas/validation.py check_fsdp_config_kwargs_prefix), as does the deprecated `fsdp` option list.
    Version 1 unless fsdp_version says 2 (check_fsdp_version_in_fsdp_config). Sharding: full_shard unless the
    option list or reshard_after_forward: false say otherwise; the schema (schemas/fsdp.py FSDPConfig) has no
    sharding_strategy and drops it."""
    k = r.k
    raw = k.get("fsdp", (list, str))
    options = raw.lower().split() if isinstance(raw, str) else [str(o).strip().lower() for o in raw or []]
    config = k.get("fsdp_config", dict)
    version = k.get("fsdp_version", int)
    if config is None and not options:
        return Fsdp()
    config = {str(key) if key == "fsdp_version" else str(key).removeprefix("fsdp_"): value
              for key, value in (config or {}).items()}
    version = version or config.get("fsdp_version") or config.get("version") or 1
    named = [FSDP_SHARDING[o] for o in options if o in FSDP_SHARDING]
    reshard = config.get("reshard_after_forward")
    zero = named[0] if named else 2 if str(reshard).lower() == "false" else 3
    if config.get("sharding_strategy") not in (None, "FULL_SHARD", "full_shard", 1) and not named:
        r.notes.append(f"fsdp_config sharding_strategy {config['sharding_strategy']}: not in axolotl's FSDP "
                       "schema, which drops it; planned as full_shard")
    offload = "offload" in options or _set(config.get("offload_params", False))
    checkpointing = _set(config.get("activation_checkpointing", False))
    name = {3: "full_shard", 2: "shard_grad_op", 0: "no_shard"}[zero]
    note = None
    if zero:
        note = f"FSDP{version} {name}: planned as ZeRO-{zero} across the GPUs the launcher starts"
        if checkpointing:
            note += ", with FSDP's activation checkpointing"
    return Fsdp(zero=zero, offload=offload and zero > 0, checkpointing=checkpointing, note=note)


def _kernels(r: _Read, plugins: set[str], cut_ce: bool) -> tuple[bool, str]:
    """(the fused loss, Liger's other kernels): Cut Cross-Entropy (on by default with its plugin) or Liger's fused
    linear cross-entropy, and the liger_* kernels that LigerPlugin hands the model type's apply function (unset is
    off: it passes the keys' None). The plain cross-entropy runs only where the model computes its loss (no `rl`).
    liger_rms_norm_gated (the Qwen3.5 linear-attention layers' gated RMSNorm) is not modelled."""
    k = r.k
    liger = "liger" in plugins
    flce = liger and k.get("liger_fused_linear_cross_entropy", bool, False)
    if not liger:
        return bool(cut_ce), ""
    kernels = {name for key, name in LIGER_KERNELS.items() if _set(k.get(key, (bool, str)))}
    if k.get("rl", str) is not None:
        kernels.discard("cross_entropy")
    if _set(k.get("liger_rms_norm_gated", (bool, str))):
        r.warn("liger_kernels", "liger_rms_norm_gated", "liger_rms_norm_gated: Liger's gated RMSNorm saves fewer "
               "activations than the ops this plan replays, which it does not model", "overstates")
    return bool(cut_ce or flce), ",".join(sorted(kernels))


def _stage(r: _Read, override: str | None, *, method: str, zero: int, batch: int, grad_accum: int, fused: bool,
           gpus: int | None) -> tuple[dict[str, Any], bool]:
    """The plan's stage fields as axolotl runs `rl` and `reward_model` (core/builders/rl.py, causal.py), and the
    fused loss they leave: TRL 1.8's trainers call the model without labels, so Cut Cross-Entropy and Liger's fused
    cross-entropy compute the full logits there; only Liger's chunked DPO and GRPO losses avoid them."""
    k = r.k
    rl = k.get("rl", str)
    if rl is not None and rl not in RL_STAGES:
        raise FtplanError(f"{k.path}: key 'rl' must be one of {', '.join(RL_STAGES)}, got {rl!r}")
    reward = next((key for key in ("reward_model", "process_reward_model") if k.get(key, bool, False)), None)
    if override is not None:
        if override == "ppo":
            raise FtplanError("axolotl has no PPO trainer (its RL trainers: rl grpo, gdpo, ebft); plan it with "
                              "{stage} grpo", field="stage")
        file_stage = RL_STAGES[rl] if rl else "rm" if reward else "sft"
        if override != file_stage:
            r.notes.append(f"--stage {override}: planned as that, not as the config's {file_stage}")
        rl = STAGE_RL.get(override) if override not in ("sft", "pt", "rm") else None
        if override == "dpo" and k.config.get("rl") == "ipo":
            rl = "ipo"
        reward = (reward or "reward_model") if override == "rm" else None
    elif rl and reward:  # utils/trainer.py setup_trainer: `rl` picks the RL builder, which has no reward model
        r.notes.append(f"rl {rl} with {reward}: axolotl trains with the {rl.upper()} trainer; {reward} is unused")
        reward = None
    fields: dict[str, Any] = {"seq_len": k.positive("sequence_len", 512)}  # schemas/config.py: 512
    if rl is None and reward is None:
        fields["stage"] = override if override == "pt" else "sft"
        return fields, fused
    if fused:
        r.notes.append("Cut Cross-Entropy / Liger's fused cross-entropy: the preference and RL trainers call the "
                       "model without labels, so the full logits are planned")
    if reward is not None:
        if reward == "process_reward_model":
            r.warn("process_reward_model", "process_reward_model", "process_reward_model: one sequence per "
                   "example with a per-token score head, planned as pairwise reward modelling (chosen and "
                   "rejected sequences)", "overstates")
        return fields | {"stage": "rm"}, False
    fields["stage"] = RL_STAGES[rl]
    if rl in ("dpo", "ipo"):
        return _dpo(r, fields)
    if rl == "kto" and k.get("precompute_ref_log_probs", bool, False):
        r.notes.append("precompute_ref_log_probs: axolotl passes it to DPO only (core/trainers/dpo); KTO keeps its "
                       "reference model")
    if rl == "simpo":
        # core/builders/rl.py hands cpo_alpha to CPOConfig only when set (TRL's default 1.0 keeps the NLL term)
        fields["nll_term"] = k.get("cpo_alpha", (int, float), 1.0) != 0
    if rl in ("grpo", "gdpo", "ebft"):
        grpo = _grpo(r, rl, method=method, zero=zero, batch=batch, grad_accum=grad_accum, gpus=gpus)
        fused = grpo.pop("fused_loss")
        return fields | grpo, fused
    return fields, False


def _dpo(r: _Read, fields: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """rl dpo / ipo (core/trainers/dpo/__init__.py DPOStrategy): precompute_ref_log_probs, and Liger's fused DPO
    loss with dpo_use_liger_kernel (no logits; TRL 1.8 refuses it with precomputed log-probs)."""
    k = r.k
    precompute = k.get("precompute_ref_log_probs", bool, False)
    liger = k.get("dpo_use_liger_kernel", bool, False)
    if liger and precompute:
        raise FtplanError(f"{k.path}: keys 'dpo_use_liger_kernel' and 'precompute_ref_log_probs': TRL's Liger DPO "
                          "loss does not support precomputed reference log-probs (it refuses them)")
    if k.get("dpo_use_logits_to_keep", bool, False) and not liger:
        r.warn("dpo_logits_to_keep", "dpo_use_logits_to_keep", "dpo_use_logits_to_keep: logits are computed for "
               "the completion positions only, while this plan counts them for the whole sequence",
               "overstates")
    return fields | {"precompute_ref_log_probs": precompute}, liger


def _trl_beta(k: Keys) -> float | None:
    """The `beta` axolotl hands TRL's RL trainers (core/builders/rl.py: trl.beta, else rl_beta, else orpo_alpha);
    None leaves TRL's own default. The deprecated dpo_beta only logs a warning (schemas/deprecated.py)."""
    trl = k.get("trl", dict, {}) or {}
    beta = trl.get("beta")
    if beta is None:
        beta = k.get("rl_beta", float)
    if beta is None:
        beta = k.get("orpo_alpha", float)
    return None if beta is None else float(beta)


def _grpo(r: _Read, rl: str, *, method: str, zero: int, batch: int, grad_accum: int,
          gpus: int | None) -> dict[str, Any]:
    """rl grpo / gdpo / ebft: the `trl:` section (schemas/trl.py) as core/trainers/grpo/__init__.py hands it to
    TRL 1.8's GRPOConfig (beta 0.0, num_generations 8, vllm_mode colocate, vllm_gpu_memory_utilization 0.3),
    and the `vllm:` section (schemas/vllm.py: gpu_memory_utilization 0.9), used only with trl.vllm_mode
    colocate."""
    k = r.k
    trl = k.get("trl", dict, {}) or {}
    vllm_section = k.get("vllm", dict, {}) or {}
    beta = _trl_beta(k) or 0.0
    if beta == 0.0:
        reference = False
    elif method == "full":
        reference = True  # grpo_trainer.py builds one (axolotl's own model_ref is not passed to GRPO)
    else:
        reference = None
        r.notes.append(f"beta {beta:g} with an adapter: the reference log-probs come from the policy with its "
                       "adapter disabled, so there is no reference copy")
    generations = trl.get("num_generations") or 8
    if rl == "ebft" and (k.get("ebft", dict, {}) or {}).get("mode") == "strided":
        # core/trainers/ebft/strided.py: a plain Trainer generating rollouts inside each document, with no
        # GRPOConfig and so no rule that a batch holds whole prompt groups
        generations = 1
    completion = trl.get("max_completion_length")
    if completion is None:
        completion = TRL_GRPO_COMPLETION
        if rl != "ebft":  # EBFT hands it over only when set (core/trainers/ebft/__init__.py): TRL's default holds
            r.warn("grpo_completion", "trl", "trl.max_completion_length unset: axolotl passes None to TRL, so "
                   "generation stops at the model's generation_config limits; planned at TRL 1.8's default of "
                   f"{TRL_GRPO_COMPLETION} completion tokens", "unknown")
    for name, value in (("trl.num_generations", generations), ("trl.max_completion_length", completion)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise FtplanError(f"{k.path}: key '{name}' must be a whole number of at least 1, got {value!r}")
    vllm = "off"
    share = TRL_VLLM_SHARE  # unless axolotl hands over vllm.gpu_memory_utilization
    if trl.get("use_vllm") is True:
        mode = trl.get("vllm_mode")
        vllm = mode or "colocate"  # TRL 1.8's default
        if vllm not in ("colocate", "server"):
            raise FtplanError(f"{k.path}: key 'trl.vllm_mode' must be colocate or server, got {mode!r}")
        if mode == "colocate":
            share = vllm_section.get("gpu_memory_utilization", 0.9)
            if not isinstance(share, (int, float)) or isinstance(share, bool):
                raise FtplanError(f"{k.path}: key 'vllm.gpu_memory_utilization' must be a number, got {share!r}")
            share = float(share)
            if trl.get("vllm_enable_sleep_mode"):
                r.warn("vllm_sleep", "trl", "trl.vllm_enable_sleep_mode: the colocated vLLM releases its weights "
                       "and KV cache while the model trains, while this plan keeps its share of the GPU reserved",
                       "overstates")
        elif mode is None:
            r.notes.append("trl.use_vllm without trl.vllm_mode: TRL's colocate, with TRL's vllm_gpu_memory_utilization "
                           "0.3 (axolotl hands over vllm.gpu_memory_utilization only with vllm_mode colocate)")
    total = k.get("sequence_len", int)
    seq_len, assumed = generation_seq_len(completion, None, total)
    if assumed is not None:
        r.warn("grpo_prompt", "trl", f"rl {rl}: prompts are not truncated (TRL 1.8 has no max_prompt_length and "
               f"axolotl does not hand sequence_len to GRPO), so the sequence is {assumed}; longer prompts need "
               "more", "unknown")
    else:
        r.warn("grpo_prompt", "sequence_len", f"rl {rl}: axolotl does not hand sequence_len to GRPO and TRL 1.8 "
               f"truncates no prompt; planned at sequence_len {total} tokens, prompt and completion, so longer "
               "prompts need more", "unknown")
    if reference is not False and trl.get("sync_ref_model") and zero == 3:
        r.warn("sync_ref_model", "trl", "trl.sync_ref_model under ZeRO-3: every few steps TRL gathers all the "
               "parameters of the policy and the reference model on each GPU to mix them, which this plan does "
               "not count", "understates")
    _generation(r, trl, vllm=vllm, zero=zero, batch=batch, grad_accum=grad_accum, gpus=gpus)
    if rl == "gdpo":
        r.notes.append("rl gdpo: GRPO with each reward normalised on its own (multi_objective_aggregation "
                       "normalize_then_sum), the same memory as GRPO")
    if rl == "ebft":
        r.warn("ebft", ["rl", "ebft"], "rl ebft: GRPO whose rewards match the hidden features of a frozen feature "
               "network (a deep copy of the model for full fine-tuning, the shared base with an adapter) on the "
               "generated completions; planned as GRPO without it", "understates")
    fused = bool(trl.get("use_liger_loss"))  # LigerFusedLinearGRPOLoss: no logits
    return {"seq_len": seq_len, "max_completion_len": completion, "reference_model": reference,
            "num_generations": generations, "vllm": vllm, "vllm_gpu_memory_utilization": share,
            "fused_loss": fused}


def _generation(r: _Read, trl: dict, *, vllm: str, zero: int, batch: int, grad_accum: int,
                gpus: int | None) -> None:
    """Without vLLM, TRL generates the whole generation batch in one generate call: trl.generation_batch_size
    over the processes, by default micro_batch_size x gradient_accumulation_steps completions per GPU."""
    if vllm != "off":
        return
    size = trl.get("generation_batch_size")
    per_gpu = size // (gpus or 1) if isinstance(size, int) and size > 0 else batch * grad_accum
    if per_gpu != batch * grad_accum:  # the plan sizes TRL's default: micro-batch x accumulation
        r.warn("generation_batch", "trl", f"trl.generation_batch_size {size}: without vLLM, TRL generates "
               f"{per_gpu} completions per GPU in one generate call, whose KV cache this plan sizes for "
               f"{batch * grad_accum} (micro-batch x accumulation)",
               "understates" if per_gpu > batch * grad_accum else "overstates")
    if zero == 3:
        r.warn("ds3_generation", "deepspeed", "ZeRO-3 without vLLM: TRL gathers the whole model on each GPU to "
               "generate (ds3_gather_for_generation), while this plan keeps it sharded", "understates")


def _gpus(k: Keys) -> int | None:
    """The GPUs the parallelism sizes imply (utils/trainer.py setup_parallelism_envs: a device mesh of
    dp_replicate x dp_shard x context x tensor, with experts split across it)."""
    sizes = [k.get(key, int) for key in ("dp_shard_size", "dp_replicate_size")]
    sizes += [k.config.get(key) for key in ("context_parallel_size", "tensor_parallel_size")]
    if "expert_parallel" in _plugins(k):  # the plugin's EP axis is its own (ep x dp_shard x tp x cp = world)
        sizes.append(k.config.get("expert_parallel_size"))
    product = 1
    for size in sizes:
        if isinstance(size, int) and not isinstance(size, bool) and size > 1:
            product *= size
    return product if product > 1 else None


def attention_keys(kernel: str) -> dict[str, str | None]:
    """The plan's kernel as attn_implementation; the deprecated switches, which axolotl refuses beside it,
    are unset where the file has them (None: see fix_config)."""
    return {**dict.fromkeys(LEGACY_ATTENTION), "attn_implementation": {"flash": "flash_attention_2", "sdpa": "sdpa",
                                                                     "eager": "eager"}[kernel]}


def target_keys(target: str) -> dict:
    """axolotl's lora_target_linear for every linear layer, else lora_target_modules."""
    if target in ("all", "all-linear"):
        return {"lora_target_linear": True}
    return {"lora_target_modules": target_names(target)}


def method_keys(method: str) -> dict:
    """A method as adapter and quantization keys; no adapter (written empty, YAML's null) is full."""
    if method == "full":
        return {"adapter": "", "load_in_4bit": False, "load_in_8bit": False}
    return {"adapter": method, "load_in_4bit": method == "qlora"}


def stage_keys(stage: str) -> dict[str, Any]:
    """A plan stage as `rl` and `reward_model` (None: unset where the file has it)."""
    if stage == "ppo":
        raise FtplanError("axolotl has no PPO trainer", field="stage")
    return {"rl": STAGE_RL.get(stage), "reward_model": True if stage == "rm" else None}


# DeepSpeed settings live in a JSON file the key points at, and GRPO's settings in the nested `trl:` and `vllm:`
# sections, which --fix (top-level keys only) does not edit: not values it can write
UNWRITABLE = frozenset({"zero", "offload_optimizer", "reference_model", "num_generations", "max_completion_len",
                        "vllm", "vllm_gpu_memory_utilization", "liger_kernels"})


FRAMEWORK = Framework(
    name="axolotl", read=read, model_key="base_model", title="axolotl", signature=frozenset({"base_model"}),
    recognised=RECOGNISED, unwritable=UNWRITABLE, method_keys=method_keys, known=KNOWN,
    rejects_unknown=False,  # the schema drops keys it does not know (pydantic's default, extra="ignore")
    fix_values={"precision": precision_keys, "attention": attention_keys, "lora_target": target_keys,
                "lora_target_parameters": param_targets.split,
                "quant_bits": quant_keys, "stage": stage_keys,
                "activation_offload": {"off": False, "saved": True, "checkpoint": "hidden_states"}.__getitem__},
)
