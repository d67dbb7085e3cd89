"""`Plan`: the training settings an estimate is made for.

Each field's names in every front end (CLI flag, config keys, form label) live in
`planner.fields`; validation errors carry the field, and each front end words them.
Facts about the machine (CUDA context, fragmentation, device) are not training
settings: they live on `planner.target.Machine`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from planner import liger, lora_kernels, param_targets
from planner.errors import FtplanError, validation_error

# full/freeze train the model's own weights; the rest train what peft (or, for `adapter`, Houlsby et al.'s
# bottleneck adapters) adds to a frozen base: planner.peft_methods says what each adds
Method = Literal["full", "freeze", "lora", "qlora", "prefix", "prompt", "ptuning", "ia3", "adapter", "oft"]
PromptEncoder = Literal["mlp", "lstm"]
# bf16 / fp16: the weights train in 16 bits as loaded (`dtype=bfloat16/float16`), no autocast, no fp32 master copy;
# pure fp16 has no loss scaling either: the Trainer's fp16=True GradScaler refuses fp16 gradients (torch
# amp/grad_scaler.py `_unscale_grads_`: "Attempting to unscale FP16 gradients."), so it is fp16 weights trained
# with neither fp16 nor bf16 set; *-mixed: fp32 trainable weights under torch.autocast
Precision = Literal["fp32", "bf16", "fp16", "bf16-mixed", "fp16-mixed"]
# The dtype of a frozen base's non-quantized weights (the model's `dtype`/`torch_dtype`) and, under QLoRA, the
# dtype bitsandbytes dequantizes and computes in (`bnb_4bit_compute_dtype`), apart from the precision flag: TRL's
# QLoRA scripts load in float32 unless `dtype` is set (ModelConfig.dtype) and train under bf16 autocast
WeightsDtype = Literal["fp32", "bf16", "fp16"]
# planner.optimizers says what each one keeps: torch AdamW (foreach / fused), bitsandbytes (8-bit, paged, Lion),
# torchao's 8/4-bit AdamW, Adafactor, SGD, Adam-mini, Muon, GaLore / APOLLO (low-rank states), BAdam (one block
# at a time), LOMO / AdaLomo (the update fused into backward)
Optimizer = Literal["adamw", "adamw-fused", "adamw-8bit", "paged-adamw-8bit", "adafactor", "sgd", "sgd-momentum",
                    "paged-adamw", "adamw-torch-8bit", "adamw-torch-4bit", "lion", "paged-lion", "lion-8bit",
                    "paged-lion-8bit", "adam-mini", "muon", "galore-adamw", "galore-adamw-8bit", "galore-adafactor",
                    "apollo-adamw", "badam", "lomo", "adalomo"]
AttentionKernel = Literal["eager", "sdpa", "flash"]
# The training stage (planner.stages says what each one holds in memory): LLaMA-Factory's `stage` values
# (hparams/finetuning_args.py; its ORPO and SimPO are `stage: dpo` with `pref_loss`), axolotl's `rl`, TRL's
# trainers.
Stage = Literal["sft", "pt", "dpo", "orpo", "simpo", "kto", "rm", "ppo", "grpo"]
Vllm = Literal["off", "colocate", "server"]
# Where saved activations live (planner.memory._offloaded says what each keeps on the GPU): "saved" moves every
# tensor autograd saves outside the LM head to host memory (TRL's and torchtune's OffloadActivations, axolotl's
# activation_offloading); "checkpoint" moves only the checkpointed layers' inputs (Unsloth's offloaded
# checkpointing, transformers' checkpointing with offload, axolotl's hidden_states)
ActivationOffload = Literal["off", "saved", "checkpoint"]
Framework = Literal["llamafactory", "trl"]
TRL_VLLM_SHARE = 0.3  # trl GRPOConfig.vllm_gpu_memory_utilization: the share of each GPU vLLM colocate takes  # whose trainer runs a preference or reward stage

METHODS: tuple[str, ...] = Method.__args__
PRECISIONS: tuple[str, ...] = Precision.__args__
OPTIMIZERS: tuple[str, ...] = Optimizer.__args__
ATTENTION_KERNELS: tuple[str, ...] = AttentionKernel.__args__
STAGES: tuple[str, ...] = Stage.__args__

class Plan(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    method: Method = "full"
    precision: Precision = "bf16-mixed"
    optimizer: Optimizer = "adamw"
    batch_size: int = Field(1, description="micro-batch per GPU")
    seq_len: int = 1024
    grad_accum: int = 1
    # Several sequences share a row of seq_len tokens (LLaMA-Factory packing / neat_packing, TRL packing, axolotl
    # sample_packing): the same tokens per micro-batch as rows padded to seq_len
    packing: bool = False
    # The micro-batch flattened into one row without padding (TRL padding_free, its bfd packing; axolotl
    # sample_packing with a varlen kernel): memory follows the real tokens, `token_fill` of batch_size x seq_len
    padding_free: bool = False
    # padding-free: the share of batch_size x seq_len that is real tokens (mean length / seq_len, or axolotl's
    # sample_packing_eff_est); a share rather than a count, so that the batch and length searches scale it
    token_fill: float = 1.0
    # packed rows kept apart by a batch x 1 x seq_len x seq_len mask in the compute dtype that the collator builds
    # (LLaMA-Factory's neat_packing without fa2), on the GPU with the batch for the whole step
    mask_4d: bool = False
    gradient_checkpointing: bool = False
    activation_offload: ActivationOffload = "off"
    attention: AttentionKernel = "sdpa"
    lora_rank: int = 8
    lora_target: str = "all"
    # LoRA on parameters (peft's target_parameters: MoE experts, routers), a comma list in canonical order
    lora_target_parameters: str = ""
    lora_dropout: float = 0.0
    use_dora: bool = False  # DoRA: a magnitude vector per LoRA target, and the adapted weight's norm every step
    num_virtual_tokens: int = 20  # prefix / prompt / ptuning
    prefix_projection: bool = False  # prefix: an MLP reparametrises the prefix (P-Tuning v2 without it)
    encoder_hidden_size: int | None = None  # prefix projection / ptuning encoder width; None: peft's token_dim
    encoder_type: PromptEncoder = "mlp"  # ptuning: peft's PromptEncoder reparameterization
    ia3_target: str | None = None  # ia3: module names; None: peft's default targets for the model type
    adapter_reduction: int = 16  # adapter: hidden size / bottleneck width
    oft_block_size: int | None = None  # oft: the orthogonal blocks' size (None: peft's 32, or 0 with oft_blocks)
    oft_blocks: int = 0  # ... or, when set, blocks per layer (peft's `r`, LLaMA-Factory's oft_rank)
    freeze_trainable_layers: int = 2
    # the frozen base's dtype when it differs from the precision's (WeightsDtype); None: the compute dtype
    weights_dtype: WeightsDtype | None = None
    quant_bits: Literal[4, 8] | None = None  # quantized base weights (QLoRA); None with qlora means 4
    # the fused 3-D MoE expert tensors quantized too (axolotl's quantize_moe_experts; planner.moe_quant), which
    # bitsandbytes alone leaves in the compute dtype
    quantize_experts: bool = False
    double_quant: bool = True
    gpus: int = 1  # every GPU of the run, across nodes
    zero: Literal[0, 1, 2, 3] = 0
    offload_optimizer: bool = False
    # ZeRO-3 offload_param / FSDP offload_params: the parameter shards (with the optimizer offloaded, the
    # gradients too) live in host memory; only the gathered layers come to the GPU
    offload_params: bool = False
    # model parallel degrees (planner.parallel): GPUs = TP x PP x CP x data parallel, experts EP-split
    tensor_parallel: int = 1
    expert_parallel: int = 1
    pipeline_parallel: int = 1
    context_parallel: int = 1  # ring attention / Ulysses: each GPU holds seq_len / CP tokens of a sequence
    nodes: int = 1  # host memory is reported per node: gpus / nodes GPUs share one
    # an input only: with it, gpus = nodes x gpus_per_node (stored as gpus; kept None)
    gpus_per_node: int | None = None
    # fused linear cross-entropy (Liger / Cut Cross-Entropy) or TRL's fused LM head: no full logits; None: the
    # stage's trainer decides (planner.stages.uses_fused_head)
    fused_loss: bool | None = None
    # Liger's other kernels (planner.liger): a comma list of rope, rms_norm, glu, layer_norm, cross_entropy, or
    # `default` (the model type's own set); stored in canonical order so equal plans compare equal
    liger_kernels: str = ""
    # axolotl's fused LoRA kernels (planner.lora_kernels): a comma list of qkv, o, mlp, in canonical order
    lora_kernels: str = ""
    optimizer_in_backward: bool = False  # torchtune's optimizer_in_bwd: step each parameter in its grad hook
    # GaLore / APOLLO: the rank of the projected gradient and how many steps a projection is kept (the update
    # step recomputes it; the memory does not depend on the interval); layer-wise = optimizer_in_backward
    projection_rank: int = Field(128, ge=1)
    projection_update_interval: int = Field(200, ge=1)
    stage: Stage = "sft"
    # ORPO/SimPO and reward models keep different tensors in LLaMA-Factory's trainers and TRL's (planner.stages)
    framework: Framework = "llamafactory"
    # a frozen reference model on the GPU; None: the stage's and method's default (planner.stages)
    reference_model: bool | None = None
    precompute_ref_log_probs: bool = False  # reference log-probs computed before training: no reference model
    # TRL's ORPO and CPO/SimPO add an NLL term on the chosen half; CPOConfig's cpo_alpha 0 (AlphaPO, paper SimPO)
    # drops it and the log-softmax it keeps
    nll_term: bool = True
    num_generations: int = 8  # GRPO: completions per prompt (TRL's default)
    max_completion_len: int | None = None  # completion tokens within seq_len (GRPO default: TRL's 512)
    vllm: Vllm = "off"  # GRPO generation: transformers' generate, vLLM beside training, or a vLLM server
    vllm_gpu_memory_utilization: float = TRL_VLLM_SHARE

    @model_validator(mode="before")
    @classmethod
    def _lora_on_quantized_base_is_qlora(cls, data):
        # LLaMA-Factory's finetuning_type: lora + quantization_bit: 4 is QLoRA
        if isinstance(data, dict) and data.get("method") == "lora" and data.get("quant_bits"):
            data = {**data, "method": "qlora"}
        return data

    @model_validator(mode="before")
    @classmethod
    def _oft_blocks_replace_the_default_block_size(cls, data):
        # peft takes either r or oft_block_size; a count of blocks given alone means "not the default size"
        if isinstance(data, dict) and data.get("oft_block_size") is None:
            data = {**data, "oft_block_size": 0 if data.get("oft_blocks") else 32}
        return data

    @model_validator(mode="before")
    @classmethod
    def _name_lists_in_canonical_order(cls, data):
        # comma lists stored in one order, so that equal plans compare (and memoize) equal
        if isinstance(data, dict):
            parsers = {"liger_kernels": liger.parse, "lora_kernels": lora_kernels.parse,
                       "lora_target_parameters": param_targets.parse}
            data = {**data, **{key: parse(data[key]) for key, parse in parsers.items() if key in data}}
        return data

    @model_validator(mode="before")
    @classmethod
    def _gpus_per_node_sets_gpus(cls, data):
        if isinstance(data, dict) and data.get("gpus_per_node") is not None:
            per_node, nodes = data["gpus_per_node"], data.get("nodes", 1)
            if isinstance(per_node, int) and isinstance(nodes, int) and per_node >= 1 and nodes >= 1:
                gpus = per_node * nodes
                if data.get("gpus") not in (None, gpus):
                    raise FtplanError(f"gives {nodes} x {per_node} = {gpus} GPUs, but {{gpus}} says "
                                      f"{data['gpus']}; give one of them", field="gpus_per_node")
                data = {**data, "gpus": gpus, "gpus_per_node": None}
        return data

    @model_validator(mode="after")
    def _check(self) -> Plan:
        if self.quant_bits and self.method not in ("lora", "qlora"):
            raise FtplanError(
                f"{self.quant_bits}-bit weights cannot be trained with {{method}} {self.method}; train LoRA "
                "adapters on the quantized base (QLoRA) or drop {quant_bits}", field="quant_bits")
        for field in ("batch_size", "seq_len", "grad_accum", "gpus", "lora_rank", "num_generations",
                      "num_virtual_tokens", "adapter_reduction", "tensor_parallel", "expert_parallel",
                      "pipeline_parallel", "context_parallel", "nodes", "gpus_per_node"):
            if getattr(self, field) is not None and getattr(self, field) < 1:
                raise FtplanError(f"must be at least 1, got {getattr(self, field)}", field=field)
        if self.freeze_trainable_layers == 0 and self.method == "freeze":
            raise FtplanError("0 trains nothing; use N > 0 (last N layers) or -N (first N)",
                              field="freeze_trainable_layers")
        if self.quantize_experts and self.method != "qlora":
            raise FtplanError("quantizes the MoE experts of a quantized base: it needs QLoRA ({method} qlora, or "
                              "{quant_bits} 4 or 8)", field="quantize_experts")
        if self.use_dora and not self.lora_family:
            raise FtplanError(f"is a LoRA variant; {{method}} {self.method} has no LoRA adapters: use lora or qlora",
                              field="use_dora")
        if self.lora_target_parameters and not self.lora_family:
            raise FtplanError(f"puts LoRA on parameters; {{method}} {self.method} has no LoRA adapters: use lora or "
                              "qlora, or drop {lora_target_parameters}", field="lora_target_parameters")
        if self.prefix_projection and self.method != "prefix":
            raise FtplanError(f"reparametrises prefix tuning only; {{method}} is {self.method}", field="prefix_projection")
        if self.encoder_hidden_size is not None and self.encoder_hidden_size < 1:
            raise FtplanError(f"must be at least 1, got {self.encoder_hidden_size}", field="encoder_hidden_size")
        if self.method == "oft" and (self.oft_block_size < 0 or self.oft_blocks < 0
                                     or (self.oft_block_size == 0) == (self.oft_blocks == 0)):
            raise FtplanError("set exactly one of {oft_block_size} and {oft_blocks} (peft's OFTConfig requires one "
                              f"and only one), got {self.oft_block_size} and {self.oft_blocks}",
                              field="oft_block_size")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise FtplanError(f"must be in [0, 1), got {self.lora_dropout}", field="lora_dropout")
        if self.weights_dtype and self.method == "full":
            raise FtplanError("sets a frozen base's dtype; a full fine-tune trains every weight in the dtype "
                              "{precision} gives: drop {weights_dtype} or choose {precision}",
                              field="weights_dtype")
        if self.offload_optimizer and self.zero == 0:
            raise FtplanError("needs ZeRO: set {zero} to 1, 2 or 3, as DeepSpeed requires",
                              field="offload_optimizer")
        self._check_layout()
        if self.activation_offload == "checkpoint" and not self.gradient_checkpointing:
            raise FtplanError("offloads the inputs that gradient checkpointing keeps, so it needs "
                              "{gradient_checkpointing}; turn that on, or offload every saved tensor with saved",
                              field="activation_offload")
        if self.optimizer_in_backward and (self.grad_accum > 1 or self.zero):
            raise FtplanError("steps each parameter as its gradient arrives, so it cannot accumulate gradients "
                              "or shard them; set {grad_accum} to 1 and {zero} to 0", field="optimizer_in_backward")
        if not 0.0 < self.token_fill <= 1.0:
            raise FtplanError(f"must be in (0, 1], the share of {{batch_size}} x {{seq_len}} that is real tokens, got "
                              f"{self.token_fill}", field="token_fill")
        if self.token_fill < 1.0 and not self.padding_free:
            raise FtplanError("is the share of real tokens in a padding-free micro-batch; turn on {padding_free} or "
                              "drop it (padded and packed rows hold {batch_size} x {seq_len} tokens)",
                              field="token_fill")
        if self.mask_4d and (not self.packing or self.padding_free or self.attention == "flash"):
            raise FtplanError("is the mask that keeps packed rows apart without flash attention: it needs "
                              "{packing}, rows ({padding_free} off) and {attention} sdpa or eager", field="mask_4d")
        if self.padding_free and self.stage not in ("sft", "pt"):
            raise FtplanError(f"flattens a language-modelling micro-batch; stage {self.stage} keeps its rows "
                              "(chosen/rejected pairs, generations): drop {padding_free}", field="padding_free")
        if self.max_completion_len is not None and not 1 <= self.max_completion_len <= self.seq_len:
            raise FtplanError(f"must be between 1 and {{seq_len}} ({self.seq_len}: prompt + completion), got "
                              f"{self.max_completion_len}", field="max_completion_len")
        if not 0.0 < self.vllm_gpu_memory_utilization < 1.0:
            raise FtplanError(f"must be in (0, 1), got {self.vllm_gpu_memory_utilization}",
                              field="vllm_gpu_memory_utilization")
        if not self.nll_term and self.stage != "simpo":
            raise FtplanError(f"only SimPO/CPO can drop the NLL term (TRL's cpo_alpha 0); stage {self.stage} "
                              "always keeps it; turn it off only with {stage} simpo", field="nll_term")
        if self.fused_loss and "cross_entropy" in self.liger_kernels.split(","):
            raise FtplanError("cross_entropy is Liger's plain cross-entropy over the full logits, which the fused "
                              "loss ({fused_loss}) never makes (Liger asserts that not both are on); drop one",
                              field="liger_kernels")
        if self.vllm != "off" and self.stage not in ("grpo", "ppo"):
            raise FtplanError(f"generates completions, which stage {self.stage} does not; use it with {{stage}} "
                              "grpo", field="vllm")
        return self

    def _check_layout(self) -> None:
        if self.offload_params and self.zero != 3:
            raise FtplanError("offloads parameter shards, so the parameters must be sharded: set {zero} to 3 "
                              "(ZeRO-3 offload_param, FSDP full_shard with offload_params)", field="offload_params")
        if self.gpus % self.nodes:
            raise FtplanError(f"{self.nodes} nodes must hold the same number of GPUs, but {{gpus}} is {self.gpus}; "
                              "give {gpus_per_node}, or a multiple of the node count", field="nodes")
        if self.gpus % (self.model_parallel * self.context_parallel):
            raise FtplanError(f"is {self.gpus}, not a multiple of TP x PP x CP = "
                              f"{self.tensor_parallel} x {self.pipeline_parallel} x {self.context_parallel}; raise "
                              "{gpus} or lower a parallel size", field="gpus")
        if (self.gpus // self.pipeline_parallel) % (self.tensor_parallel * self.expert_parallel):
            raise FtplanError(f"x {{tensor_parallel}} ({self.expert_parallel} x {self.tensor_parallel}) must "
                              f"divide the {self.gpus // self.pipeline_parallel} GPUs of a pipeline stage "
                              "(Megatron-Core's expert grid); lower it or raise {gpus}", field="expert_parallel")

    @property
    def model_parallel(self) -> int:
        """GPUs one copy of the model is split over by tensor and pipeline parallel."""
        return self.tensor_parallel * self.pipeline_parallel

    @property
    def shard_ranks(self) -> int:
        """The ranks ZeRO / FSDP / Megatron's distributed optimizer shard over: data x context parallel."""
        return self.gpus // self.model_parallel

    @property
    def data_parallel(self) -> int:
        """Ranks that read different sequences (a context-parallel group reads the same ones)."""
        return self.gpus // (self.model_parallel * self.context_parallel)

    @property
    def per_node_gpus(self) -> int:
        return self.gpus // self.nodes

    @property
    def lora_family(self) -> bool:
        """LoRA adapters on linear layers (plain, DoRA, on a quantized base)."""
        return self.method in ("lora", "qlora")

    @property
    def peft(self) -> bool:
        """A frozen base with small trainable additions (every method but full and freeze)."""
        return self.method not in ("full", "freeze")

    @property
    def prompt_learning(self) -> bool:
        """Virtual tokens: prepended to the input (prompt, ptuning) or to every layer's keys and values (prefix)."""
        return self.method in ("prefix", "prompt", "ptuning")

    @property
    def base_bits(self) -> int:
        """Bits of the quantized base weights under QLoRA."""
        return self.quant_bits or 4

    @property
    def tokens(self) -> int:
        """Tokens in one micro-batch: padded or packed rows of `seq_len`, or a padding-free micro-batch's own."""
        full = self.batch_size * self.seq_len
        return max(1, round(self.token_fill * full)) if self.padding_free else full

    @property
    def rows(self) -> tuple[int, int]:
        """(rows, tokens per row) the model runs on: a padding-free micro-batch is one row of all its tokens."""
        return (1, self.tokens) if self.padding_free else (self.batch_size, self.seq_len)

    @property
    def compute_dtype(self) -> str:
        return {"fp32": "fp32", "bf16": "bf16", "fp16": "fp16", "bf16-mixed": "bf16",
                "fp16-mixed": "fp16"}[self.precision]

    @property
    def base_dtype(self) -> str:
        """The frozen base's non-quantized weights (and QLoRA's dequantized matmuls): `weights_dtype` or the
        compute dtype."""
        return self.weights_dtype or self.compute_dtype

    @property
    def mixed(self) -> bool:
        return self.precision.endswith("-mixed")

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.grad_accum * self.data_parallel

    def shape_free(self) -> Plan:
        """This plan at a micro-batch of one one-token row: the key of what the micro-batch's shape does not change
        (the layout, the model states), so that a batch or length search computes it once. Not a valid plan to
        estimate: it skips validation."""
        return self.model_copy(update={"batch_size": 1, "seq_len": 1, "token_fill": 1.0})

    @classmethod
    def build(cls, **fields) -> Plan:
        """Validate user input; errors come back as one FtplanError carrying the field."""
        try:
            return cls(**fields)
        except ValidationError as exc:
            raise validation_error(exc, tuple(cls.model_fields)) from None

    def with_(self, **changes) -> Plan:
        """A validated copy (pydantic's model_copy skips validation)."""
        return Plan.build(**{**self.model_dump(), **changes})

