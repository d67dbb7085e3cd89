"""Hugging Face TrainingArguments and TRL configs (SFTConfig + ModelConfig, as `trl sft --config` reads them).

A config is TRL's when it has a key only TRL writes (`TRL_MARKERS`), and TRL changes the defaults
(huggingface/trl at f2cd577): bf16 autocast unless fp16 and gradient checkpointing on
(trl/trainer/base_config.py), the model loaded in float32 unless `dtype` says otherwise
(trl/trainer/model_config.py; trl/scripts/sft.py hands it to from_pretrained), max_length 1024
(trl/trainer/sft_config.py). Without one, TrainingArguments' own defaults hold (transformers
training_args.py: fp32, no checkpointing).

Attention names and peft's target_modules are transformers' and peft's; axolotl loads models the same way, so
its module reuses `attention` and `regex_targets`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from planner import liger, param_targets
from planner.configs.common import (
    TRAINING_ARGUMENTS,
    TRAINING_ARGUMENTS_IRRELEVANT,
    DataInfo,
    Direction,
    Framework,
    Keys,
    RunConfig,
    build_plan,
    deepspeed_config,
    generation_seq_len,
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
from planner.configs.lora_variants import rslora_note
from planner.errors import FtplanError
from planner.findings import Finding
from planner.params import target_names
from planner.plan import TRL_VLLM_SHARE
from planner.stages import GRPO_COMPLETION_DEFAULT, PREFERENCE


def words(text: str) -> frozenset[str]:
    """A key list written as whitespace-separated names."""
    return frozenset(text.split())


# ---------------------------------------------------------------- the keys

# TRL's own keys: trl 1.x trainer/sft_config.py, dpo_config.py, kto_config.py, grpo_config.py, rloo_config.py,
# reward_config.py, model_config.py (ModelConfig) and scripts/utils.py (ScriptArguments,
# DatasetMixtureConfig); the CLI's `env` and the launcher arguments it hands to accelerate; names of TRL 0.x
# that configs still carry.
TRL_KEYS = words("""
model_name_or_path model_revision dtype torch_dtype attn_implementation use_peft lora_r lora_alpha
lora_dropout lora_target_modules lora_target_parameters lora_modules_to_save lora_task_type use_rslora
use_dora load_in_8bit load_in_4bit bnb_4bit_quant_type use_bnb_nested_quant bnb_4bit_quant_storage
dataset_name dataset_config dataset_train_split dataset_test_split dataset_streaming ignore_bias_buffers
datasets streaming test_split_size model_init_kwargs trust_remote_code router_aux_loss_coef chat_template_path
dataset_text_field dataset_kwargs dataset_num_proc eos_token pad_token max_length truncation_mode
shuffle_dataset packing packing_strategy padding_free pad_to_multiple_of eval_packing completion_only_loss
assistant_only_loss loss_type activation_offloading disable_dropout precompute_ref_log_probs
precompute_ref_batch_size loss_weights ld_alpha f_divergence_type f_alpha_divergence_coef label_smoothing beta
use_weighting discopop_tau sync_ref_model ref_model_mixup_alpha ref_model_sync_steps cast_lm_head_to_fp32 alpha
is_encoder_decoder
num_generations num_generations_eval max_completion_length ds3_gather_for_generation generation_batch_size
steps_per_generation temperature top_p top_k min_p generation_kwargs chat_template_kwargs repetition_penalty
cache_implementation use_vllm vllm_mode vllm_model_impl vllm_enable_sleep_mode vllm_structured_outputs_regex
vllm_server_base_url vllm_server_host vllm_server_port vllm_server_timeout vllm_group_port
vllm_gpu_memory_utilization vllm_max_model_length vllm_tensor_parallel_size num_iterations epsilon delta
epsilon_high sapo_temperature_neg sapo_temperature_pos vespo_k_pos vespo_lambda_pos vespo_k_neg
vespo_lambda_neg importance_sampling_level reward_weights multi_objective_aggregation scale_rewards
mask_truncated_completions top_entropy_quantile entropy_coef use_adaptive_entropy entropy_coef_min
entropy_coef_max entropy_coef_delta entropy_target max_tool_calling_iterations
vllm_importance_sampling_correction vllm_importance_sampling_mode vllm_importance_sampling_clip_max
vllm_importance_sampling_clip_min vllm_importance_sampling_cap off_policy_mask_threshold
use_bias_correction_kl log_completions log_multimodal num_completions_to_print log_unique_prompts
log_completions_hub_repo use_transformers_continuous_batching transformers_continuous_batching_config
use_transformers_paged desirable_weight undesirable_weight center_rewards_coefficient normalize_advantages
reward_clip_range env accelerate_config num_processes max_seq_length dataset_batch_size max_prompt_length
max_target_length model_adapter_name ref_adapter_name generate_during_eval ref_model_init_kwargs
force_use_ref_model use_logits_to_keep padding_value label_pad_token_id rpo_alpha cpo_alpha simpo_gamma
orpo_alpha
""")
# transformers 5.9 renamed gradient_checkpointing(_kwargs) to activation_checkpointing(_kwargs), keeping the
# old names as aliases (training_args.py)
NEW_TRAINING_ARGUMENTS = words("activation_checkpointing activation_checkpointing_kwargs")

KNOWN = TRAINING_ARGUMENTS | NEW_TRAINING_ARGUMENTS | TRL_KEYS | {"model"}

# Keys that only TRL writes: any one of them makes the config TRL's and brings TRL's defaults.
TRL_MARKERS = words("""
max_length max_seq_length packing packing_strategy padding_free dataset_text_field completion_only_loss
assistant_only_loss dataset_kwargs chat_template_path model_init_kwargs eval_packing activation_offloading
dataset_batch_size use_peft lora_r lora_alpha lora_dropout lora_target_modules lora_target_parameters
lora_modules_to_save lora_task_type use_rslora use_dora load_in_4bit load_in_8bit bnb_4bit_quant_type
use_bnb_nested_quant bnb_4bit_quant_storage dataset_train_split dataset_test_split dataset_config
dataset_streaming ignore_bias_buffers accelerate_config
""")
# `dataset_name` is TRL's ScriptArguments key and also the transformers examples' (run_clm.py); these tell.
HF_EXAMPLE_KEYS = words("block_size dataset_config_name train_file validation_file config_name "
                        "tokenizer_name cache_dir use_fast_tokenizer model_type")

# TRL's trainers (trl 1.16 trainer/{dpo,kto,reward,grpo,rloo}_config.py; cpo and orpo in trl/experimental). The
# command (`trl dpo --config ...`) names the trainer, not the file; `read` infers it from the keys (`TRAINER_KEYS`,
# then `SHARED_KEYS`), or takes it from `--stage`. `fused`: the trainer patches TRL's chunked fused LM head
# (trainer/utils.py add_fused_lm_head, which DPO, KTO, GRPO and RLOO always apply), so no (tokens, vocab) logits
# exist; ORPO, CPO and the reward trainer compute the full logits (or a one-score head).
@dataclass(frozen=True)
class Trainer:
    name: str  # TRL's config class, in messages
    stage: str  # the plan's stage (planner.plan.Stage)
    lr: float  # the config's learning_rate default
    fused: bool = False


TRAINERS: dict[str, Trainer] = {
    "sft": Trainer("SFTConfig", "sft", 2e-5),
    "dpo": Trainer("DPOConfig", "dpo", 1e-6, fused=True),
    "kto": Trainer("KTOConfig", "kto", 1e-6, fused=True),
    "reward": Trainer("RewardConfig", "rm", 1e-4),
    "orpo": Trainer("ORPOConfig", "orpo", 1e-6),
    "cpo": Trainer("CPOConfig", "simpo", 1e-6),
    "grpo": Trainer("GRPOConfig", "grpo", 1e-6, fused=True),
    "rloo": Trainer("RLOOConfig", "grpo", 1e-6, fused=True),
}
# The plan's stage as the TRL trainer `--stage` asks for (TRL 1.x has no PPO trainer).
TRAINER_OF_STAGE = {"sft": "sft", "pt": "sft", "dpo": "dpo", "kto": "kto", "rm": "reward", "orpo": "orpo",
                    "simpo": "cpo", "grpo": "grpo"}

GRPO_KEYS = words("""
    num_generations num_generations_eval max_completion_length use_vllm vllm_mode vllm_gpu_memory_utilization
    vllm_tensor_parallel_size vllm_max_model_length vllm_model_impl vllm_enable_sleep_mode generation_batch_size
    steps_per_generation num_iterations epsilon delta epsilon_high reward_weights scale_rewards
    mask_truncated_completions importance_sampling_level multi_objective_aggregation top_entropy_quantile
    entropy_coef use_adaptive_entropy entropy_coef_min entropy_coef_max entropy_coef_delta entropy_target
    sapo_temperature_neg sapo_temperature_pos vespo_k_pos vespo_lambda_pos vespo_k_neg vespo_lambda_neg
    ds3_gather_for_generation cast_lm_head_to_fp32 use_transformers_paged use_transformers_continuous_batching
    transformers_continuous_batching_config max_tool_calling_iterations off_policy_mask_threshold
    use_bias_correction_kl vllm_importance_sampling_correction vllm_importance_sampling_mode
    vllm_importance_sampling_clip_max vllm_importance_sampling_clip_min vllm_importance_sampling_cap""")
RLOO_KEYS = words("normalize_advantages reward_clip_range")
# Which trainer a config is for, by its keys: the first entry with a key in the config names it. Keys only one
# config has (TRAINER_KEYS) come first; keys several share (SHARED_KEYS: max_completion_length is GRPO's, RLOO's,
# CPO's and ORPO's; beta every preference trainer's) decide only when nothing more specific is there.
TRAINER_KEYS: list[tuple[str, frozenset[str]]] = [
    ("kto", words("desirable_weight undesirable_weight")),
    ("reward", words("center_rewards_coefficient")),
    ("cpo", words("cpo_alpha simpo_gamma")),
    ("orpo", words("orpo_alpha")),  # TRL 0.x's spelling of ORPO's lambda (axolotl's too)
    ("rloo", RLOO_KEYS),
    ("grpo", GRPO_KEYS - words("max_completion_length")),
    ("dpo", words("""
        f_divergence_type f_alpha_divergence_coef use_weighting ld_alpha discopop_tau loss_weights rpo_alpha
        ref_adapter_name model_adapter_name force_use_ref_model ref_model_init_kwargs max_target_length""")),
]
SHARED_KEYS: list[tuple[str, frozenset[str]]] = [
    ("grpo", words("max_completion_length")),
    ("dpo", words("""
        precompute_ref_log_probs precompute_ref_batch_size sync_ref_model ref_model_mixup_alpha
        ref_model_sync_steps max_prompt_length generate_during_eval beta label_smoothing""")),
]
STAGE_KEYS = frozenset().union(*(keys for _, keys in TRAINER_KEYS + SHARED_KEYS))

# Keys `read` looks at: planned, or warned about when set.
READ = words("""
model_name_or_path model deepspeed fsdp fsdp_config accelerate_config num_processes load_in_4bit load_in_8bit
use_peft lora_task_type lora_target_modules lora_r lora_alpha lora_dropout use_rslora use_dora
lora_modules_to_save lora_target_parameters fp16 bf16 model_init_kwargs dtype torch_dtype
bnb_4bit_compute_dtype use_bnb_nested_quant bnb_4bit_use_double_quant bnb_4bit_quant_type
activation_checkpointing gradient_checkpointing activation_checkpointing_kwargs gradient_checkpointing_kwargs
attn_implementation max_length max_seq_length use_liger_kernel
liger_kernel_config activation_offloading gradient_accumulation_steps optim adafactor optim_target_modules
per_device_train_batch_size per_gpu_train_batch_size warmup_steps warmup_ratio learning_rate num_train_epochs
max_steps lr_scheduler_type max_grad_norm do_train do_predict do_eval auto_find_batch_size
label_smoothing_factor torch_compile torch_compile_backend torch_compile_mode torchdynamo use_cpu no_cuda
use_mps_device
""")

# Everything else TrainingArguments or TRL takes changes neither memory, stability nor time of the training
# steps: data loading and formatting, logging, the hub, the RL trainers' sampling settings, the vLLM server,
# the preference losses (beta, loss_type, label_smoothing, ...). The trainers' keys that do change memory
# (beta for GRPO, num_generations, precompute_ref_log_probs, use_vllm, ...) are read by `_stage` for the
# trainer they belong to, and irrelevant to the others, so they are here too.
RECOGNISED = (TRAINING_ARGUMENTS_IRRELEVANT | words("""
dataset_name dataset_config dataset_train_split dataset_test_split dataset_streaming ignore_bias_buffers
datasets streaming test_split_size model_revision trust_remote_code router_aux_loss_coef chat_template_path
dataset_text_field dataset_kwargs dataset_num_proc eos_token pad_token truncation_mode shuffle_dataset packing
packing_strategy padding_free pad_to_multiple_of eval_packing completion_only_loss assistant_only_loss
loss_type env dataset_batch_size bnb_4bit_quant_storage disable_dropout temperature top_p top_k min_p
generation_kwargs chat_template_kwargs repetition_penalty cache_implementation vllm_server_base_url
vllm_server_host vllm_server_port vllm_server_timeout vllm_group_port vllm_structured_outputs_regex
log_completions log_multimodal num_completions_to_print log_unique_prompts log_completions_hub_repo
use_logits_to_keep padding_value label_pad_token_id use_cache alpha is_encoder_decoder
""") | STAGE_KEYS) - READ

# ModelConfig and SFTConfig keys the plan does not model: what they do, and which way the estimate is off.
NOT_MODELLED: dict[str, tuple[str, Direction]] = {
    "lora_modules_to_save": ("these modules train as full copies (weights, gradients, optimizer state), "
                             "which this plan does not count", "understates"),
}


def _target_parameters(r: _Read, k: Keys, path: Path, method: str) -> str:
    """ModelConfig's lora_target_parameters, which get_peft_config hands to peft as target_parameters
    (planner.param_targets). peft's ParamWrapper refuses lora_dropout != 0, and TRL's default is 0.05."""
    value = k.get("lora_target_parameters", (str, list))
    if method not in ("lora", "qlora") or not value:
        return ""
    if k.get("lora_dropout", float, 0.05):
        raise FtplanError(f"{path}: key 'lora_target_parameters' needs lora_dropout: 0 (peft's ParamWrapper "
                          "refuses dropout on parameters, and TRL's default is 0.05); set lora_dropout: 0")
    names, unknown = param_targets.modelled(value)
    if unknown:
        r.warn("lora_target_parameters", "lora_target_parameters", f"lora_target_parameters {', '.join(unknown)}: "
               f"LoRA on parameters other than {param_targets.KNOWN} is not counted", "understates")
    return names


def say(direction: Direction) -> str:
    """How a warning ends: which way the estimate is off."""
    return {"overstates": "so the estimate overstates memory",
            "understates": "so the estimate understates memory",
            "unknown": "so the estimate may be off either way"}[direction]


# ---------------------------------------------------------------- attention and LoRA targets


def attention(name: str | None, key: str) -> tuple[str, Finding | None]:
    """A transformers `attn_implementation` as the plan's kernel; unset is transformers' default, sdpa."""
    if name is None:
        return "sdpa", None
    lowered = name.strip().lower()
    if lowered == "eager":
        return "eager", None
    if "flash" in lowered:  # flash_attention_2/3, kernels-community/flash-attn*, paged|flash_attention_2
        return "flash", None
    if "sdpa" in lowered:
        return "sdpa", None
    if lowered in ("flex_attention", "xformers") or "sage" in lowered:
        return "flash", None  # fused kernels that keep no score matrix, as flash-attention
    return "sdpa", warning("attention_unknown", key, f"{key} {name}: an attention kernel ftplan does not "
                           "know, planned as sdpa; the estimate may be off either way", "unknown")


# Module names a regex target may pick out, and where they sit in common architectures: peft matches a string
# target_modules as a regular expression against each module's full name (peft tuners_utils.py,
# check_target_module_exists), which the plan's comma list of names cannot say.
_LEAVES = sorted(words("""
q_proj k_proj v_proj o_proj qkv_proj gate_proj up_proj down_proj gate_up_proj c_attn c_proj c_fc
query_key_value dense dense_h_to_4h dense_4h_to_h fc1 fc2 w1 w2 w3 in_proj out_proj x_proj q_a_proj q_b_proj
kv_a_proj_with_mqa kv_b_proj wqkv"""))
_ROOTS = ("model.layers", "model.language_model.layers", "language_model.model.layers",
          "model.text_model.layers", "model.model.layers", "transformer.h", "gpt_neox.layers")
_BLOCKS = ("self_attn", "mlp", "cross_attn", "mlp.shared_experts", "attn", "attention", "self_attention",
           "mixer")
_LAYERS = 48


def regex_targets(pattern: str) -> tuple[str | None, bool]:
    """A regex `target_modules` as the plan's comma list of module names, and whether it leaves some layers
    out; None when it names none of the usual projections."""
    if not re.search(r"[\\^$*+?()\[\]|{}]", pattern):
        return None, False
    try:
        regex = re.compile(pattern)
    except re.error:
        return None, False
    names, partial = [], False
    for leaf in _LEAVES:
        for root in _ROOTS:
            # a few layer numbers find the block; every layer then says whether some are left out
            block = next((b for b in _BLOCKS for i in (0, 1, 2, 3, 7)
                          if regex.fullmatch(f"{root}.{i}.{b}.{leaf}")), None)
            if block is not None:
                names.append(leaf)
                partial |= not all(regex.fullmatch(f"{root}.{i}.{block}.{leaf}") for i in range(_LAYERS))
                break
    return (",".join(names) if names else None), partial


def targets_of(k: Keys, key: str, default: str, warnings: list[Finding]) -> str:
    """`key` as the plan's lora_target: a list or comma list of names, "all-linear", or a regex."""
    value = k.get(key, (str, list), default)
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if value.strip().lower() in ("all-linear", "all_linear"):
        return "all-linear"
    names, partial = regex_targets(value)
    if names is None:
        return value
    if partial:
        warnings.append(warning("lora_layers", key, f"{key} {value!r} adapts only some layers; this plan "
                                f"adapts {names} in every layer, {say('overstates')}", "overstates"))
    return names


# ---------------------------------------------------------------- the TRL CLI's launcher

# trl/accelerate_configs/*.yaml, which `accelerate_config: NAME` selects: (ZeRO stage, FSDP, processes)
ACCELERATE_PRESETS = {"single_gpu": (0, False, 1), "multi_gpu": (0, False, 8), "zero1": (1, False, 8),
                      "zero2": (2, False, 8), "zero3": (3, False, 8), "fsdp1": (3, True, 8),
                      "fsdp2": (3, True, 8)}
# accelerate's FSDP sharding (FSDP2 reshard_after_forward, FSDP1 sharding_strategy by name or number) as ZeRO
ACCELERATE_SHARDING = {"true": 3, "false": 2, "full_shard": 3, "shard_grad_op": 2, "no_shard": 0,
                       "hybrid_shard": 3, "hybrid_shard_zero2": 2, "1": 3, "2": 2, "3": 0, "4": 3, "5": 2}


@dataclass(frozen=True)
class Launch:
    """What the launcher shards: a ZeRO stage (FSDP's as its ZeRO equivalent) and what it offloads."""

    zero: int = 0
    offload_optimizer: bool = False
    offload_param: bool = False  # parameters and gradients on CPU (FSDP offload, ZeRO-3 offload_param)
    checkpointing: bool = False
    note: str | None = None


def _accelerate(k: Keys, base: Path) -> tuple[Launch | None, int | None]:
    """`accelerate_config` (a preset shipped with TRL or an accelerate config file) and `num_processes`: keys
    the TRL CLI does not parse itself but hands to `accelerate launch` (trl/cli/commands/training.py,
    trl/cli/accelerate_config.py)."""
    spec, gpus = k.get("accelerate_config", str), k.get("num_processes", int)
    if spec is None:
        return None, gpus
    if spec in ACCELERATE_PRESETS:
        stage, fsdp, processes = ACCELERATE_PRESETS[spec]
        what = (f"FSDP full_shard, planned as ZeRO-{stage}" if fsdp else f"DeepSpeed ZeRO-{stage}" if stage
                else "data parallel")
        note = f"accelerate_config {spec} (TRL's preset): {what}, {gpus or processes} processes"
        return Launch(zero=stage, note=note), gpus or processes
    file = resolve_path(spec, base)
    if not file.is_file():
        raise FtplanError(f"{k.path}: key 'accelerate_config' is {spec!r}: neither one of TRL's presets "
                          f"({', '.join(ACCELERATE_PRESETS)}) nor a file")
    import yaml

    try:
        launcher = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError:
        raise FtplanError(f"{file}: not valid YAML") from None
    if not isinstance(launcher, dict):
        raise FtplanError(f"{file}: expected an accelerate config (a mapping)")
    gpus = gpus or launcher.get("num_processes")
    kind = str(launcher.get("distributed_type", "")).upper()
    if kind == "DEEPSPEED":
        ds = launcher.get("deepspeed_config") or {}
        if ds.get("deepspeed_config_file"):
            inner = deepspeed_config(str(ds["deepspeed_config_file"]), k, file.parent, "accelerate_config")
            stage, offload, param = inner.stage, inner.offload_optimizer, inner.offload_param
        else:  # accelerate's own deepspeed_config keys
            stage = int(ds.get("zero_stage", 0) or 0)
            offload = str(ds.get("offload_optimizer_device", "none")).lower() in ("cpu", "nvme") and stage > 0
            param = str(ds.get("offload_param_device", "none")).lower() in ("cpu", "nvme") and stage == 3
        note = f"accelerate_config {spec}: DeepSpeed ZeRO-{stage}"
        if offload:
            note += " with optimizer offload"
        return Launch(zero=stage, offload_optimizer=offload, offload_param=param, note=note), gpus
    if kind == "FSDP":  # accelerate's keys: fsdp_reshard_after_forward, fsdp_sharding_strategy, ...
        config = {str(key).removeprefix("fsdp_"): value
                  for key, value in (launcher.get("fsdp_config") or {}).items()}
        reshard = config.get("reshard_after_forward", config.get("sharding_strategy", True))
        zero = ACCELERATE_SHARDING.get(str(reshard).lower(), 3)
        offload = str(config.get("offload_params", False)).lower() == "true" and zero > 0
        checkpointing = str(config.get("activation_checkpointing", False)).lower() == "true"
        note = f"accelerate_config {spec}: FSDP{config.get('version', 1)} planned as ZeRO-{zero}"
        return Launch(zero=zero, offload_optimizer=offload, offload_param=offload,
                      checkpointing=checkpointing, note=note), gpus
    return None, gpus


# ---------------------------------------------------------------- the reader

# ModelConfig's `dtype` (trl/trainer/model_config.py: auto, bfloat16, float16, float32) as the weights' dtype.
DTYPES = {"bfloat16": "bf16", "bf16": "bf16", "float16": "fp16", "fp16": "fp16", "half": "fp16",
          "float32": "fp32", "fp32": "fp32", "float": "fp32", "auto": "auto"}


def trl_markers(config: dict) -> list[str]:
    found = sorted(config.keys() & (TRL_MARKERS | STAGE_KEYS))
    if "dataset_name" in config and not config.keys() & HF_EXAMPLE_KEYS:
        found.append("dataset_name")
    return found


class _Read:
    """What one reading collects besides the plan: notes (info), warnings, and the TRL defaults applied."""

    def __init__(self, k: Keys, trl: bool):
        self.k, self.trl = k, trl
        self.notes: list[str] = []
        self.warnings: list[Finding] = []
        self.defaults: list[str] = []

    def warn(self, code: str, keys: str | list[str], message: str, direction: Direction) -> None:
        self.warnings.append(warning(code, keys, f"{message}, {say(direction)}", direction))


def read(keys: Keys, base: Path, stage: str | None = None) -> RunConfig:
    """`stage` (the plan's, from `--stage`) names the TRL trainer the config is run with; without it, the
    config's keys do (`TRAINER_KEYS`)."""
    k, path = keys, keys.path
    model = k.get("model_name_or_path", str) or k.get("model", str)
    if not model:
        raise FtplanError(f"{path}: missing key 'model_name_or_path'")
    markers = trl_markers(k.config)
    r = _Read(k, trl=bool(markers) or stage not in (None, "sft"))
    predict = k.get("do_predict", bool) or k.get("do_eval", bool)
    if not r.trl and k.get("do_train", bool) is False and predict:
        raise FtplanError(f"{path}: not a training config: do_train is false (an evaluation or prediction "
                          "run)")
    name = _trainer(r, stage)
    trainer = TRAINERS[name]

    zero, offload, fsdp_checkpointing, gpus, offload_params = _sharding(r, base)
    parallel = read_parallelism(k)
    if parallel.replicated > 1 and zero:
        r.warnings.append(hsdp_warning("parallelism_config", parallel.replicated))
    if parallel.fields.get("gpus", 1) > (gpus or 1):
        gpus = parallel.fields["gpus"]
    if gpus and parallel.fields:
        parallel.fields["gpus"] = gpus
    method, quant_bits = _method(r, trainer)
    precision, bf16, fp16, weights_dtype = _precision(r, method=method, sharded=zero > 0)
    checkpointing, checkpoint_offload = _checkpointing(r)
    checkpointing = checkpointing or fsdp_checkpointing
    # TRL's activation_offloading (sft/dpo/kto/reward trainers: trl/models/activation_offloading.py) takes every
    # saved tensor, the checkpointed layers' inputs among them, so it covers transformers' checkpoint offload
    activation_offload = "saved" if k.get("activation_offloading", bool, False) else \
        "checkpoint" if checkpoint_offload else "off"
    init_kwargs = k.get("model_init_kwargs", dict, {})
    attn_key, attn_name = "attn_implementation", k.get("attn_implementation", str)
    if attn_name is None and isinstance(init_kwargs.get("attn_implementation"), str):
        attn_key, attn_name = "model_init_kwargs", init_kwargs["attn_implementation"]
    kernel, attn_warning = attention(attn_name, attn_key)
    if attn_warning:
        r.warnings.append(attn_warning)
    liger_fused, liger_kernels = _kernels(r, trainer, name)
    # TRL's DPO, KTO, GRPO and RLOO compute the log-probabilities through their fused LM head; ORPO, CPO and
    # the reward trainer call the model without labels, so Liger's fused cross-entropy never runs there
    fused = trainer.fused or (liger_fused and name == "sft")
    _runtime(r)

    grad_accum = k.positive("gradient_accumulation_steps", 1)
    optim_name = k.get("optim", str, "adamw_torch_fused")  # training_args.py, for torch >= 2.8
    if k.get("adafactor", bool, False):  # transformers 4.x: the deprecated switch for optim adafactor
        optim_name = "adafactor"
    optim_fields, optim_warning = optimizer_settings(optim_name, "optim", k.get("optim_args", str), where=str(path))
    if optim_warning:
        r.warnings.append(optim_warning)
    k.get("optim_target_modules", (str, list))  # GaLore/APOLLO's targets: planned as the decoder's linears
    if method == "lora" and r.trl:
        r.defaults += [f"{key} {value}" for key, value in (("lora_r", 16), ("lora_alpha", 32),
                                                           ("lora_dropout", 0.05)) if key not in k.config]
        if "lora_target_modules" not in k.config:
            r.defaults.append("peft's default target modules for the model type (q_proj, v_proj for Llama, "
                              "Mistral, Qwen and Gemma)")
    # trl/trainer/utils.py get_peft_config: LoraConfig(use_dora=..., use_rslora=...) only with use_peft
    use_dora = k.get("use_dora", bool, False) and method == "lora"
    if method == "lora" and k.get("use_rslora", bool, False):
        r.notes.append(rslora_note("use_rslora"))
    target_parameters = _target_parameters(r, k, path, method)
    batch = k.get("per_device_train_batch_size", int)
    if batch is None:
        batch = k.get("per_gpu_train_batch_size", int, 8)  # transformers 4.x's old name
    if batch < 1:
        raise FtplanError(f"{path}: key 'per_device_train_batch_size' must be at least 1, got {batch}")
    stage_fields = _stage(r, name, method=method, zero=zero, batch=batch, grad_accum=grad_accum, gpus=gpus)
    if stage == "pt":  # `trl sft` on plain text: pretraining, as --stage says
        stage_fields["stage"] = "pt"
    stage_fields |= _packing(r, name, kernel)
    plan = build_plan(
        "hf", path, method=method, quant_bits=quant_bits, precision=precision, weights_dtype=weights_dtype,
        **optim_fields,
        batch_size=batch, grad_accum=grad_accum, gradient_checkpointing=checkpointing,
        activation_offload=activation_offload, attention=kernel,
        # model_config.py: lora_r 16, lora_dropout 0.05, lora_target_modules None (peft's per-model default)
        lora_rank=k.positive("lora_r", 16), lora_dropout=k.get("lora_dropout", float, 0.05),
        lora_target=targets_of(k, "lora_target_modules", "q_proj,v_proj", r.warnings), use_dora=use_dora,
        lora_target_parameters=target_parameters,
        # model_config.py: use_bnb_nested_quant False (bitsandbytes' bnb_4bit_use_double_quant, likewise)
        double_quant=k.get("use_bnb_nested_quant", bool, k.get("bnb_4bit_use_double_quant", bool, False)),
        zero=zero, offload_optimizer=offload, offload_params=offload_params, fused_loss=fused,
        liger_kernels=liger_kernels, framework="trl", **stage_fields, **parallel.fields,
    )
    k.get("bnb_4bit_quant_type", str)  # nf4 or fp4: the same bytes
    if r.trl:
        shown = ", ".join(markers[:4]) + (", ..." if len(markers) > 4 else "")
        shown = f" ({shown})" if markers else ""
        applied = f"TRL's defaults applied: {', '.join(r.defaults)}" if r.defaults else "TRL's defaults"
        r.notes.insert(0, f"TRL {trainer.name}{shown}: {applied}")
    # learning_rate: each config's default (TRAINERS); TrainingArguments 5e-5
    lr_default = trainer.lr if r.trl else 5e-5
    hyper = read_hyper(k, epochs="num_train_epochs", epochs_default=3.0, scheduler="lr_scheduler_type",
                       scheduler_default="linear", fp16=fp16, bf16=bf16, lr_default=lr_default)
    hyper = hyper.model_copy(update={"beta": _preference_beta(k, name)})
    return RunConfig(path=path, format="hf", model=model, plan=plan, hyper=hyper, data=DataInfo(),
                     notes=r.notes, warnings=r.warnings, gpus=gpus if gpus and gpus > 1 else None)


def _preference_beta(k: Keys, trainer: str) -> float | None:
    """A preference trainer's `beta` (DPO, KTO; ORPO's and CPO's lambda, TRL 0.x's orpo_alpha); GRPO's beta is the
    KL weight, read by `_grpo`."""
    if TRAINERS[trainer].stage not in PREFERENCE:
        return None
    beta = k.get("beta", float)
    return k.get("orpo_alpha", float) if beta is None and trainer == "orpo" else beta


def _trainer(r: _Read, stage: str | None) -> str:
    """The TRL trainer: the one `--stage` names, else the one the config's keys name, else SFT."""
    config = r.k.config
    inferred, shared = _inferred_trainer(config)
    if stage is None:
        if shared:
            found = sorted(config.keys() & STAGE_KEYS)
            r.notes.append(f"{', '.join(found)}: keys several TRL trainers take; planned as "
                           f"{TRAINERS[inferred].name} (--stage names the trainer `trl <command>` runs)")
        return inferred
    if stage == "ppo":
        raise FtplanError("TRL 1.x has no PPO trainer (its online RL trainers are GRPO and RLOO); plan it with "
                          "{stage} grpo", field="stage")
    name = TRAINER_OF_STAGE[stage]
    if name == "grpo" and config.keys() & RLOO_KEYS:
        name = "rloo"
    if inferred not in ("sft", name):
        r.notes.append(f"--stage {stage}: planned as TRL's {TRAINERS[name].name}, although the config's keys are "
                       f"{TRAINERS[inferred].name}'s")
    return name


def _inferred_trainer(config: dict) -> tuple[str, bool]:
    """The trainer the keys name, and whether only keys several trainers share named it."""
    for name, keys in TRAINER_KEYS:
        if config.keys() & keys:
            return name, False
    if config.get("loss_type") in ("simpo", "alphapo"):
        return "cpo", False  # CPOConfig's SimPO and AlphaPO losses (DPOConfig has neither)
    for name, keys in SHARED_KEYS:
        if config.keys() & keys:
            return name, True
    return "sft", False


def _sharding(r: _Read, base: Path) -> tuple[int, bool, bool, int | None, bool]:
    """DeepSpeed, FSDP (TrainingArguments' fsdp / fsdp_config), or the accelerate config the TRL CLI launches
    with: ZeRO stage, optimizer offload, FSDP's activation checkpointing, the processes asked for, and the
    parameter offload (ZeRO-3 offload_param, FSDP offload_params)."""
    k = r.k
    ds = deepspeed_config(k.get("deepspeed", (str, dict)), k, base)
    fsdp = read_fsdp(k, base)
    launcher, gpus = _accelerate(k, base)
    if ds.stage or ds.offload_optimizer:
        launch = Launch(zero=ds.stage, offload_optimizer=ds.offload_optimizer, offload_param=ds.offload_param,
                        note=ds.note)
        key = "deepspeed"
    elif fsdp.zero:
        launch = Launch(zero=fsdp.zero, offload_optimizer=fsdp.offload, offload_param=fsdp.offload,
                        checkpointing=bool(fsdp.checkpointing), note=fsdp.note)
        key = "fsdp_config"
    elif launcher is not None:
        launch, key = launcher, "accelerate_config"
    else:
        return 0, False, False, gpus, False
    if launch.note:
        r.notes.append(launch.note)
    params = launch.offload_param and launch.zero == 3
    if launch.offload_param and not params:
        r.warnings.append(param_offload_warning(key))
    return launch.zero, launch.offload_optimizer, launch.checkpointing, gpus, params


def _method(r: _Read, trainer: Trainer) -> tuple[str, int | None]:
    """ModelConfig: use_peft, load_in_4bit / load_in_8bit (model_config.py; trl/trainer/utils.py
    get_peft_config, get_quantization_config)."""
    k = r.k
    four, eight = k.get("load_in_4bit", bool, False), k.get("load_in_8bit", bool, False)
    if four and eight:
        raise FtplanError(f"{k.path}: keys 'load_in_4bit' and 'load_in_8bit' are both true; choose one")
    peft = k.get("use_peft", bool)
    if peft is None and (four or eight) and any(str(key).startswith("lora_") for key in k.config):
        peft = True
        r.notes.append("use_peft unset, with load_in_4bit/8bit and lora_* keys: planned as QLoRA")
    if (four or eight) and not peft:
        raise FtplanError(f"{k.path}: key 'load_in_{4 if four else 8}bit' without use_peft: true is a "
                          "quantized full fine-tune, which the Trainer refuses; set use_peft: true")
    if k.get("lora_task_type", str, "CAUSAL_LM") == "SEQ_CLS" and trainer.stage != "rm":
        r.warn("lora_task_type", "lora_task_type", "lora_task_type SEQ_CLS: a sequence-classification "
               "(reward) model, planned as a causal LM", "unknown")
    for key, (why, direction) in NOT_MODELLED.items():
        if k.get(key, (bool, list, str, dict)) not in (None, False, [], "", {}):
            r.warn(key, key, f"{key}: {why}", direction)
    return ("lora" if peft else "full"), (4 if four else 8 if eight else None)


def _precision(r: _Read, *, method: str, sharded: bool) -> tuple[str, bool, bool, str | None]:
    """The dtype the model is loaded in (ModelConfig `dtype`: float32 unless set, trl/scripts/sft.py) and the
    Trainer's autocast switches (TRL: bf16 unless fp16, base_config.py). 16-bit weights train as they are,
    with no fp32 master copy, unless DeepSpeed or FSDP keep one (both up-cast trainable weights under
    autocast). Also the frozen base's dtype where it is not the autocast's (TRL's QLoRA computes in it too:
    get_quantization_config sets bnb_4bit_compute_dtype to `dtype`, trl/trainer/utils.py)."""
    k = r.k
    fp16 = k.get("fp16", bool, False)
    bf16_value = k.get("bf16", bool)
    bf16 = (not fp16) if bf16_value is None and r.trl else bool(bf16_value)
    if bf16_value is None and r.trl and bf16:
        r.defaults.append("bf16 autocast")
    if bf16 and fp16:
        precision_of(bf16, fp16, False, k.path)  # both on: the shared error
    init_kwargs = k.get("model_init_kwargs", dict, {})
    dtype_key = next((key for key in ("dtype", "torch_dtype") if k.get(key, str) is not None), None)
    raw = k.get(dtype_key, str) if dtype_key else init_kwargs.get("dtype") or init_kwargs.get("torch_dtype")
    where = dtype_key or "model_init_kwargs"
    if raw is None:
        weights = "fp32"  # ModelConfig.dtype defaults to float32; a plain script's from_pretrained, alike
        if r.trl:
            r.defaults.append("the model loaded in float32 (dtype)")
    else:
        weights = DTYPES.get(str(raw).removeprefix("torch.").lower())
        if weights is None:
            raise FtplanError(f"{k.path}: key '{where}' must be auto, bfloat16, float16 or float32, got "
                              f"{raw!r}")
        if weights == "auto":
            weights = "bf16"
            r.notes.append(f"{where} auto: the checkpoint's own dtype, assumed bfloat16")
    compute = k.get("bnb_4bit_compute_dtype", str)  # not TRL's: TRL computes in `dtype` (trainer/utils.py)
    if compute is not None and DTYPES.get(compute.removeprefix("torch.").lower()) not in (weights, None):
        r.warn("compute_dtype", "bnb_4bit_compute_dtype", f"bnb_4bit_compute_dtype {compute} differs from "
               "the weights' dtype; ftplan computes in the weights' dtype", "unknown")
    if weights == "fp32":
        precision = precision_of(bf16, fp16, False, k.path)
    elif not (bf16 or fp16) or (method == "full" and not sharded):
        if weights == "fp16" and method == "full" and fp16:
            # torch's GradScaler, which fp16: true turns on, raises at the first step (amp/grad_scaler.py
            # `_unscale_grads_`) on the fp16 gradients of fp16 weights
            raise FtplanError(f"{k.path}: keys '{where}' float16 and 'fp16' true on a full fine-tune: the "
                              "Trainer's gradient scaler stops at the first step (\"Attempting to unscale FP16 "
                              "gradients.\"); load in float32 for fp16 mixed precision, or set fp16: false for "
                              "pure fp16")
        precision = "fp16" if weights == "fp16" else "bf16"  # 16-bit weights trained as loaded
    else:
        # LoRA: a 16-bit frozen base, fp32 adapters and autocast; full under DeepSpeed/FSDP: fp32 master weights
        precision = "bf16-mixed" if bf16 else "fp16-mixed"
    autocast = {"bf16-mixed": "bf16", "fp16-mixed": "fp16"}.get(precision, precision)
    return precision, bf16, fp16, (weights if method != "full" and weights != autocast else None)


def _checkpointing(r: _Read) -> tuple[bool, bool]:
    """transformers 5.9's activation_checkpointing (gradient_checkpointing is its alias); TRL turns it on
    (base_config.py). Also whether its kwargs' `offload` holds the checkpointed inputs in host memory (the Trainer
    pops it for `activation_checkpointing_enable(offload=...)`, trainer.py)."""
    k = r.k
    key = ("activation_checkpointing" if k.get("activation_checkpointing", bool) is not None
           else "gradient_checkpointing")
    on = k.get(key, bool)
    if on is None:
        on = r.trl
        if r.trl:
            r.defaults.append("gradient checkpointing")
    kwargs = k.get(f"{key}_kwargs", (dict, str), {}) or {}
    if isinstance(kwargs, dict) and on:
        every = kwargs.get("every_n_layers") or 1
        if isinstance(every, int) and every > 1:
            r.warn("partial_checkpointing", f"{key}_kwargs", f"{key}_kwargs every_n_layers {every}: only "
                   "some layers are checkpointed, while this plan checkpoints every layer", "understates")
    offload = isinstance(kwargs, dict) and bool(on) and bool(kwargs.get("offload"))
    return bool(on), offload


def _seq_len(r: _Read) -> int:
    """TRL's max_length (max_seq_length before TRL 0.20): 1024 in every 1.x config that has one."""
    k = r.k
    key = "max_length" if "max_length" in k.config else "max_seq_length"
    seq_len = k.get(key, int)
    if seq_len is None:
        seq_len = 1024  # sft_config.py, dpo_config.py, kto_config.py, reward_config.py: max_length 1024
        if r.trl:
            r.defaults.append("max_length 1024")
        else:
            r.notes.append("no sequence length in the config (TrainingArguments have none): planned at 1024 "
                           "tokens")
    if seq_len < 1:
        raise FtplanError(f"{k.path}: key '{key}' must be at least 1, got {seq_len}")
    return seq_len


def _packing(r: _Read, name: str, kernel: str) -> dict[str, Any]:
    """SFTConfig's packing, packing_strategy (bfd) and padding_free. SFTTrainer (trl/trainer/sft_trainer.py)
    packs rows of max_length (`pack_dataset`) and makes the batch padding-free with `padding_free` or with
    packing_strategy bfd / bfd_split: DataCollatorForLanguageModeling concatenates the micro-batch into one row,
    position_ids restarting at each sequence. The other trainers' keys keep their rows in the plan."""
    k = r.k
    packing = k.get("packing", bool, False)
    strategy = k.get("packing_strategy", str, "bfd")
    padding_free = k.get("padding_free", bool, False)
    if name != "sft":
        if packing or padding_free:
            r.warn("padding_free", ["padding_free", "packing"], f"the {name} trainer's padding-free batches are "
                   "not modelled: its rows are planned padded to max_length", "overstates")
        return {}
    flat = padding_free or (packing and strategy in ("bfd", "bfd_split"))
    if flat and not packing and k.config.get("max_length", 0) is not None:
        raise FtplanError(f"{k.path}: key 'padding_free' without packing needs max_length: null (SFTTrainer "
                          "refuses to pad-free a batch it would have to truncate); set packing: true or "
                          "max_length: null")
    if flat and not packing:
        r.notes.append("padding_free with max_length null: sequences are not truncated; each is planned at "
                       "max_length's default 1024 tokens, so set --token-fill to the share of real tokens")
    if flat and kernel != "flash":
        r.notes.append(f"padding_free with {kernel} attention: TRL documents flash attention only; transformers "
                       "keeps the packed sequences apart with a block-diagonal mask over the whole row")
    if packing and strategy == "wrapped":
        r.notes.append("packing_strategy wrapped cuts sequences at row ends; rows of max_length tokens")
    return {"packing": packing, "padding_free": flat}


def _stage(r: _Read, name: str, *, method: str, zero: int, batch: int, grad_accum: int,
           gpus: int | None) -> dict[str, Any]:
    """The plan's stage fields as TRL's trainer `name` runs the config: the sequence length, the reference
    model, precomputed reference log-probs, and GRPO's generations and vLLM."""
    k = r.k
    out: dict[str, Any] = {"stage": TRAINERS[name].stage}
    if name in ("grpo", "rloo"):
        return out | _grpo(r, name, method=method, zero=zero, batch=batch, grad_accum=grad_accum, gpus=gpus)
    out["seq_len"] = _seq_len(r)
    if name in ("dpo", "kto"):
        # dpo_trainer.py / kto_trainer.py: no reference model with PEFT (the adapter is disabled instead) or with
        # precompute_ref_log_probs (under FSDP one is loaded for the precompute and freed before training)
        precompute = k.get("precompute_ref_log_probs", bool, False)
        out["precompute_ref_log_probs"] = precompute
        if k.get("force_use_ref_model", bool, False) and method == "lora":
            out["reference_model"] = True  # TRL 0.x: a separate reference model beside the PEFT policy
            r.notes.append("force_use_ref_model (TRL 0.x): a separate frozen reference model beside the LoRA "
                           "policy")
        if k.get("sync_ref_model", bool, False):
            if precompute:
                raise FtplanError(f"{k.path}: keys 'sync_ref_model' and 'precompute_ref_log_probs' are both true, "
                                  "which TRL refuses (precomputed log-probs assume a fixed reference)")
            _sync_ref_model(r, zero)
    elif name in ("orpo", "cpo"):
        completion = k.get("max_completion_length", int)  # orpo_config.py, cpo_config.py: None (no cap)
        if completion is not None:
            if completion < 1:
                raise FtplanError(f"{k.path}: key 'max_completion_length' must be at least 1, got {completion}")
            out["max_completion_len"] = min(completion, out["seq_len"])
        loss = k.config.get("loss_type") or "sigmoid"  # cpo_config.py: sigmoid; the same memory either way
        if name == "cpo":
            # cpo_trainer.py skips the NLL term's cross-entropy when cpo_alpha is 0; loss_type alphapo sets it to 0
            alpha = 0.0 if loss == "alphapo" else k.get("cpo_alpha", (int, float), 1.0)
            out["nll_term"] = alpha != 0
        if name == "cpo" and loss not in ("simpo", "alphapo"):
            r.notes.append(f"CPOConfig loss_type {loss}: reference-free like SimPO (chosen and rejected through the "
                           "policy alone, its NLL term from the same logits), so planned as simpo")
    return out


def _sync_ref_model(r: _Read, zero: int) -> None:
    """sync_ref_model mixes the policy into the reference in place (callbacks.py SyncRefModelCallback); under
    ZeRO-3 it first gathers every parameter of both models at once."""
    if zero == 3:
        r.warn("sync_ref_model", "sync_ref_model", "sync_ref_model under ZeRO-3: every few steps TRL gathers all "
               "the parameters of the policy and the reference model on each GPU to mix them, which this plan "
               "does not count", "understates")


def _grpo(r: _Read, name: str, *, method: str, zero: int, batch: int, grad_accum: int,
          gpus: int | None) -> dict[str, Any]:
    """GRPOConfig / RLOOConfig (grpo_config.py, rloo_config.py): beta 0.0 / 0.05, num_generations 8 / 2,
    max_completion_length 512, use_vllm False, vllm_mode colocate, vllm_gpu_memory_utilization 0.3. The
    micro-batch (per_device_train_batch_size) counts completions."""
    k = r.k
    rloo = name == "rloo"
    beta = k.get("beta", float, 0.05 if rloo else 0.0)
    # grpo_trainer.py: no reference model with beta 0.0, nor with PEFT (the adapter is disabled instead)
    if beta == 0.0:
        reference = False
    elif method == "full":
        reference = True
    else:
        reference = None
        r.notes.append(f"beta {beta:g} with LoRA: the reference log-probs come from the policy with its adapter "
                       "disabled, so there is no reference copy")
    if reference is not False and k.get("sync_ref_model", bool, False):
        _sync_ref_model(r, zero)
    generations = k.positive("num_generations", 2 if rloo else 8)
    completion = k.get("max_completion_length", int, GRPO_COMPLETION_DEFAULT)
    if completion < 1:
        raise FtplanError(f"{k.path}: key 'max_completion_length' must be at least 1, got {completion}")
    vllm = "off"
    if k.get("use_vllm", bool, False):
        vllm = k.get("vllm_mode", str, "colocate")
        if vllm not in ("colocate", "server"):
            raise FtplanError(f"{k.path}: key 'vllm_mode' must be colocate or server, got {vllm!r}")
    share = k.get("vllm_gpu_memory_utilization", float, TRL_VLLM_SHARE)
    if vllm == "colocate" and k.get("vllm_enable_sleep_mode", bool, False):
        r.warn("vllm_sleep", "vllm_enable_sleep_mode", "vllm_enable_sleep_mode: the colocated vLLM releases its "
               "weights and KV cache while the model trains, while this plan keeps its share of the GPU reserved "
               "throughout", "overstates")
    prompt = k.get("max_prompt_length", int)  # TRL 0.x; TRL 1.x truncates no prompt
    if prompt is not None and prompt < 1:
        raise FtplanError(f"{k.path}: key 'max_prompt_length' must be at least 1, got {prompt}")
    total_key = "max_length" if "max_length" in k.config else "vllm_max_model_length"
    total = k.get(total_key, int)
    seq_len, assumed = generation_seq_len(completion, prompt, total)
    if assumed is not None:
        r.warn("grpo_prompt", "max_completion_length", f"{name.upper()}: TRL 1.x truncates no prompt (no "
               f"max_prompt_length), so the sequence is {assumed}; longer prompts need more", "unknown")
    elif prompt is None:
        r.notes.append(f"{total_key} {total}: sequences planned at {total} tokens, prompt and completion")
    _generation(r, vllm=vllm, zero=zero, batch=batch, grad_accum=grad_accum, gpus=gpus)
    if k.get("cast_lm_head_to_fp32", bool, False):
        r.warn("lm_head_fp32", "cast_lm_head_to_fp32", "cast_lm_head_to_fp32: the LM head is kept and run in "
               "float32 (an fp32 copy of a vocabulary x hidden matrix), which this plan keeps in 16 bits",
               "understates")
    used = {"beta": beta, "num_generations": generations, "max_completion_length": completion}
    defaults = [f"{key} {value:g}" if isinstance(value, float) else f"{key} {value}"
                for key, value in used.items() if key not in k.config]
    r.defaults += defaults
    return {"seq_len": seq_len, "max_completion_len": completion, "reference_model": reference,
            "num_generations": generations, "vllm": vllm, "vllm_gpu_memory_utilization": share}


def _generation(r: _Read, *, vllm: str, zero: int, batch: int, grad_accum: int, gpus: int | None) -> None:
    """Where GRPO's completions are generated: transformers' generate on the training GPUs (vLLM off) holds a
    KV cache for the whole generation batch, per_device_train_batch_size x steps_per_generation (by default
    gradient_accumulation_steps) completions per GPU (grpo_trainer.py _prepare_inputs)."""
    k = r.k
    steps = k.get("steps_per_generation", int)
    size = k.get("generation_batch_size", int)
    if steps is not None and size is not None:
        raise FtplanError(f"{k.path}: keys 'generation_batch_size' and 'steps_per_generation' cannot both be set "
                          "(TRL refuses it)")
    per_gpu = size // (gpus or 1) if size is not None else batch * (steps or grad_accum)
    paged = [key for key in ("use_transformers_paged", "use_transformers_continuous_batching")
             if k.get(key, bool, False)]
    k.get("transformers_continuous_batching_config", dict)
    if vllm != "off":
        return
    if paged:
        r.warn("paged_generation", paged, f"{paged[0]}: transformers' paged KV cache, sized by its own "
               "configuration, holds the generation", "unknown")
    elif per_gpu != batch * grad_accum:  # the plan sizes TRL's default: micro-batch x accumulation
        why = f"generation_batch_size {size}" if size is not None else f"steps_per_generation {steps}"
        r.warn("generation_batch", [key for key in ("generation_batch_size", "steps_per_generation")
                                    if key in k.config],
               f"{why}: without vLLM, TRL generates {per_gpu} completions per GPU in one generate call, whose KV "
               f"cache this plan sizes for {batch * grad_accum} (micro-batch x accumulation)",
               "understates" if per_gpu > batch * grad_accum else "overstates")
    if zero == 3 and k.get("ds3_gather_for_generation", bool, True):
        r.warn("ds3_generation", "ds3_gather_for_generation" if "ds3_gather_for_generation" in k.config else
               "deepspeed", "ZeRO-3 with ds3_gather_for_generation (TRL's default): generation gathers the whole "
               "model on each GPU, while this plan keeps it sharded", "understates")


def _kernels(r: _Read, trainer: Trainer, name: str) -> tuple[bool, str]:
    """use_liger_kernel: (Liger's fused linear cross-entropy, its other kernels). The Trainer passes
    liger_kernel_config to liger_kernel's _apply_liger_kernel_to_instance as the keyword arguments of the model
    type's apply function (transformers integrations/liger.py), whose defaults are rope, rms_norm, swiglu/geglu
    and the fused loss (planner.liger). DPO, KTO, GRPO and RLOO turn Liger's fused cross-entropy off for their
    own fused LM head, and refuse it when asked for (dpo_trainer.py); only SFT calls the model's loss, so the
    plain cross-entropy counts there alone."""
    k = r.k
    if not k.get("use_liger_kernel", bool, False):
        k.get("liger_kernel_config", dict)
        return False, ""
    config = k.get("liger_kernel_config", dict, {})
    if trainer.fused and config.get("fused_linear_cross_entropy") is True:
        raise FtplanError(f"{k.path}: key 'liger_kernel_config' fused_linear_cross_entropy true: TRL's "
                          f"{trainer.name} refuses it (its own fused LM head replaces it); remove it")
    fused = bool(config.get("fused_linear_cross_entropy", True))
    if fused and not trainer.fused and config.get("cross_entropy"):
        raise FtplanError(f"{k.path}: key 'liger_kernel_config' cross_entropy true: Liger's apply functions assert "
                          "it is not on beside fused_linear_cross_entropy (on by default); set that false")
    return fused, liger.from_apply_kwargs(config, loss=name == "sft" and not fused)


def _runtime(r: _Read) -> None:
    """TrainingArguments that change how the step runs rather than what it holds: warned when set."""
    k = r.k
    if k.get("auto_find_batch_size", bool, False):
        r.warn("auto_find_batch_size", "auto_find_batch_size", "auto_find_batch_size: the Trainer halves the "
               "micro-batch after an out-of-memory error, while this plan keeps per_device_train_batch_size",
               "overstates")
    if (k.get("label_smoothing_factor", float, 0.0) or 0.0) > 0:
        r.warn("label_smoothing", "label_smoothing_factor", "label_smoothing_factor: the Trainer's label "
               "smoother takes a log-softmax of the full logits, which this plan does not count",
               "understates")
    compiled = [key for key in ("torch_compile", "torch_compile_backend", "torch_compile_mode", "torchdynamo")
                if k.get(key, (bool, str)) not in (None, False, "")]
    if compiled:
        r.warn("torch_compile", compiled, "torch.compile fuses operations and can save fewer activations, "
               "while this plan replays eager autograd", "overstates")
    cpu = [key for key in ("use_cpu", "no_cuda", "use_mps_device") if k.get(key, bool, False)]
    if cpu:
        r.warn("not_gpu", cpu, f"{cpu[0]}: the run does not use a CUDA GPU; this GPU estimate does not apply",
               "unknown")


def target_modules(target: str) -> str | list[str]:
    """peft's target_modules as TRL's ModelConfig takes it: "all-linear" or a list of names."""
    if target in ("all", "all-linear"):
        return "all-linear"
    return target_names(target)


def quant_keys(bits: int | None) -> dict[str, bool]:
    """Quantized base bits as the load_in_4bit / load_in_8bit switches (TRL's ModelConfig and axolotl)."""
    return {"load_in_4bit": bits == 4, "load_in_8bit": bits == 8}


def method_keys(method: str) -> dict:
    return {"use_peft": method in ("lora", "qlora"), "load_in_4bit": method == "qlora"}


def precision_fix(precision: str) -> dict[str, Any]:
    """Pure bf16 under TRL is the model loaded in bfloat16 (ModelConfig `dtype`), not a Trainer switch."""
    return {**precision_keys(precision), **({"dtype": "bfloat16"} if precision == "bf16" else {})}


def vllm_keys(vllm: str) -> dict[str, Any]:
    """The plan's vLLM use as GRPOConfig's use_vllm and vllm_mode (None: unset where the file has it)."""
    return {"use_vllm": vllm != "off", "vllm_mode": None if vllm == "off" else vllm}


# DeepSpeed settings live in a JSON file the key points at; the command, not the file, names the trainer; and a
# reference model is the trainer's choice (beta for GRPO): not values --fix can write
# activation_offload "checkpoint" is an entry of the nested gradient_checkpointing_kwargs
UNWRITABLE = frozenset({"zero", "offload_optimizer", "stage", "reference_model", "activation_offload",
                        "liger_kernels"})
ATTN_BACK = {"flash": "flash_attention_2", "sdpa": "sdpa", "eager": "eager"}


FRAMEWORK = Framework(
    name="hf", read=read, model_key="model_name_or_path", title="Hugging Face Trainer / TRL",
    signature=frozenset(),  # TrainingArguments have no keys of their own: the format of last resort
    recognised=RECOGNISED, unwritable=UNWRITABLE, method_keys=method_keys, known=KNOWN,
    # `trl sft` stops on a key no dataclass takes, but a training script's own arguments (its ModelArguments)
    # share this format and are not ftplan's to know: an unknown key is said, not held against the config
    rejects_unknown=False,
    fix_values={"precision": precision_fix, "attention": ATTN_BACK.__getitem__, "lora_target": target_modules,
                "quant_bits": quant_keys, "vllm": vllm_keys},
    default_lora_alpha=lambda rank: 32.0,  # trl/trainer/model_config.py: lora_alpha 32
)
