"""The memory model: per-GPU bytes of each component, and the peak over a training step.

A training step is three phases, and the components alive in each differ:

* **forward** (measured at the loss, its largest point): weights, optimizer state,
  saved activations, the logits and their fp32 up-cast;
* **backward**: at its start every activation is still alive while the loss's
  fp32 logit gradients are created; once the head's backward has freed those, the
  last decoder block runs its backward (recomputed first under checkpointing) with
  every layer's saved tensors still alive and its own gradients in flight; at its end
  the activations are gone and every gradient exists, the embedding's being made
  (the peak is at one of these three points: further on, activations are freed layer
  by layer as gradients of the same layers are allocated);
* **optimizer step**: weights, gradients, optimizer state and the optimizer's
  temporaries.

The equations, per GPU (each phase's parts are listed in `Phase.parts`):

    forward   = W + M + O + G_accum + A + L + T_fwd
    backward  = max(W + M + O + G_accum + A + L + T_bwd_start,
                    W + M + O + G_accum + A_blocks + T_last_block,
                    W + M + O + G + T_bwd_end)
    optimizer = W + M + O + G + T_step
    peak_allocated = max(forward, backward, optimizer)
    overhead  = fragmentation x peak_allocated + CUDA context (on a GPU)
    total     = peak_allocated + overhead

with W weights (sharded by ZeRO-3), M fp32 master weights and O optimizer state (sharded by
ZeRO-1+, zero when offloaded), G gradients (sharded by ZeRO-2+, plus DDP's buckets), G_accum
the gradients alive during forward (only with accumulation, plus DDP's buckets), A saved
activations (planner.activations; A_blocks those of the decoder blocks), L the logits, T the
phase's transients (the loss's fp32 copies and gradients, the recomputed block, the last
block's gradients in flight, the embedding's dense gradient, ZeRO-3's gathered layers or largest module,
QLoRA's dequantized weight, the foreach optimizer's temporaries, the ZeRO step's gradient
partition). With activation offloading A and A_blocks are what stays on the GPU (the last block's saved tensors
brought back in its backward), and `Breakdown.host_activations` what moved (`_offloaded`).
`Breakdown.peak` holds the peak phase's parts, which add up to `peak_allocated`;
`total` is what `nvidia-smi` shows at the peak.
"""

from __future__ import annotations

from pydantic import BaseModel

from planner import liger, lora_kernels, parallel, peft_methods
from planner.activations import ActivationBytes, Ctx, T, Tape, saved_bytes
from planner.activations import _mlp as replay_mlp
from planner.memo import by_identity
from planner.methods import (
    DTYPE_BYTES,
    BlockTraining,
    TrainingLayout,
    adapter_dtype,
    block_training,
    checkpoint_weight_bytes,
    keeps_master_copy,
    layout,
    lora_targets,
    param_dtype,
    peft_tensor_sizes,
    quantized_bytes,
)
from planner.optimizers import (
    badam_block,
    optimizer_state,
    step_temporaries,
    steps_in_backward,
    trainable_tensors,
)
from planner.params import ParamCounts, count_params
from planner.plan import Plan
from planner.spec import Block, ModelSpec
from planner.stages import CHUNK_TOKENS, CHUNK_VOCAB, StageRun, kv_cache_bytes, stage_run, stage_spec
from planner.target import Machine

COMPONENTS = ("weights", "reference", "master_weights", "optimizer", "gradients", "activations", "logits",
              "generation", "temporaries")
# load: a base quantized while it loads (QLoRA through bitsandbytes) only; generation: GRPO/PPO rollouts only
PHASES = ("load", "generation", "forward", "backward", "optimizer")


class Phase(BaseModel):
    name: str
    parts: dict[str, int]  # COMPONENTS -> bytes alive at this phase's largest point
    allocated: int  # the sum of `parts`
    what: str  # which transient dominates this phase


class Details(BaseModel):
    """Where the components' bytes come from (per GPU); for reports and `--json` readers."""

    activations_saved_in_blocks: int
    activations_outside_blocks: int
    autocast_weight_copies: int
    autocast_cache_forward: int
    ddp_buckets: int
    recompute_one_block: int
    loss_forward_transient: int
    loss_backward_transient: int
    last_block_backward: int = 0  # gradients in flight while the last block runs its backward, beyond its saved bytes
    embedding_backward: int = 0  # the embedding's dense gradient (and a tied head's sum) at the end of backward
    optimizer_temporaries: int  # all of the step's temporaries, the ZeRO gradient partition included
    zero_gradient_partition: int  # DeepSpeed ZeRO's gradient partition in the master's dtype, built in step()
    zero3_gather: int  # ZeRO-3's gathered parameters (and gradient) in backward; forward holds no gradient
    qlora_dequant: int
    mask_4d: int = 0  # a collator's batch x 1 x seq x seq mask (`Plan.mask_4d`), alive with the batch all step
    reference_weights: int = 0  # frozen reference (DPO/KTO/PPO full or freeze, GRPO with a beta) and PPO reward models
    no_grad_forward: int = 0  # the largest forward without gradients (reference, KTO's KL batch), at its peak
    kv_cache: int = 0  # GRPO/PPO: `generate`'s KV cache for the sequences generated at once
    vllm_reserved: int = 0  # GRPO/PPO with vLLM colocate: its share of the GPU
    fragmentation: int
    cuda_context: int


class Breakdown(BaseModel):
    """Per-GPU bytes: `peak` (the parts at the peak phase) + `overhead` = `total`."""

    total: int
    peak_phase: str
    peak_allocated: int
    peak: dict[str, int]  # COMPONENTS at the peak phase: they add up to `peak_allocated`
    overhead: int  # fragmentation + CUDA context (`details`)
    phases: list[Phase]
    largest: dict[str, int]  # each component at its largest over the phases: a view, not a sum
    cpu_offload: int = 0  # host RAM taken by an offloaded optimizer
    host_activations: int = 0  # host RAM taken by offloaded activations (`Plan.activation_offload`)
    host_params: int = 0  # host RAM taken by offloaded parameter shards (and their gradients) (`Plan.offload_params`)
    host_per_node: int = 0  # every offload above, for all of a node's GPUs (`Plan.nodes`)
    details: Details

    @property
    def peak_what(self) -> str:
        return next(p.what for p in self.phases if p.name == self.peak_phase)


# ---------------------------------------------------------------- components


def weight_bytes(train: TrainingLayout, plan: Plan) -> int:
    """Σ params × bytes of their storage dtype (NF4/int8 with quantization constants).

    ZeRO-3 / FSDP full sharding divides the weights over the GPUs (Rajbhandari et al. 2020, "P_os+g+p").
    """
    total = train.weight_bytes
    return _ceil_div(total, plan.shard_ranks) if plan.zero == 3 else total


def gradient_dtype(train: TrainingLayout) -> dict[str, int]:
    """Trainable parameters by the dtype their gradients take (the parameter's own dtype)."""
    return train.trainable_bytes_by_dtype()


def gradient_bytes(train: TrainingLayout, plan: Plan) -> int:
    """Σ trainable params × bytes of their dtype; ZeRO-2/3 shard them over the GPUs."""
    total = sum(n * DTYPE_BYTES[dt] for dt, n in gradient_dtype(train).items())
    return _ceil_div(total, plan.shard_ranks) if plan.zero >= 2 else total


def optimizer_state_bytes(train: TrainingLayout, plan: Plan, spec: ModelSpec) -> int:
    """Optimizer state per GPU (planner.optimizers says what each optimizer keeps); ZeRO-1+ shards it over the
    GPUs; `--offload-optimizer` moves it to host RAM."""
    total = optimizer_state(spec, train, plan)
    return _ceil_div(total, plan.shard_ranks) if plan.zero >= 1 else total


def master_weight_bytes(train: TrainingLayout, plan: Plan) -> int:
    """fp32 copy of 16-bit trainable weights, kept by DeepSpeed/ZeRO mixed precision (ZeRO paper's K=12 includes it)."""
    if not keeps_master_copy(plan):
        return 0
    return _ceil_div(4 * train.trainable_params, plan.shard_ranks)


def activation_bytes(spec: ModelSpec, plan: Plan, train: TrainingLayout, device: str = "cuda", *,
                     input_grad: bool | None = None, run: StageRun | None = None) -> ActivationBytes:
    """Bytes autograd saves for backward in one micro-batch (see planner.activations).

    Replayed op by op rather than a closed formula; matches `saved_tensors_hooks` on real
    transformers models. Logits: the loss up-casts them and log_softmax keeps an fp32 copy.
    `input_grad` (default: with gradient checkpointing) is `enable_input_require_grads()`.
    The stage (`run`) decides the rows (2B for chosen + rejected) and what the head saves.
    """
    run = run or stage_run(plan, device)
    return _replay(spec, block_training(spec, plan), tuple(dict(
        batch=run.rows, seq=plan.seq_len,
        prefix=plan.num_virtual_tokens if plan.method == "prefix" else 0,
        prompt_tokens=plan.num_virtual_tokens if plan.method in ("prompt", "ptuning") else 0,
        prompt_encoder=peft_methods.encoder_saved_bytes(spec, plan, run.rows),
        oft=(plan.oft_block_size, plan.oft_blocks),
        adapter_width=peft_methods.adapter_width(spec, plan) if plan.method == "adapter" else 0,
        compute=plan.compute_dtype, weight_dtypes=(param_dtype(plan, trainable=True), plan.base_dtype),
        kernel=plan.attention, autocast=plan.compute_dtype if plan.mixed else None,
        embeddings_trainable=train.embeddings_trainable, head_trainable=train.head_trainable,
        input_grad=plan.gradient_checkpointing if input_grad is None else input_grad,
        lora_rank=plan.lora_rank, lora_dropout=plan.lora_dropout,
        adapter_dtype=adapter_dtype(plan), device=device, head=run.head, head_width=spec.head_width,
        scored=run.rows * run.scored_per_row,
        head_linear_trainable=_head_linear_trainable(spec, train),
        logit_tokens=run.rows * run.logits_per_row if run.logits_per_row != plan.seq_len else None,
        nll_term=plan.nll_term, liger=liger.applied(spec.model_type, plan.liger_kernels),
        quantized=train.method == "qlora" and not train.checkpoint_quantized,
        lora_kernels=lora_kernels.applied(plan.lora_kernels),
    ).items()))


@by_identity(objects=2)  # what-fits asks every GPU about the same micro-batches, the TUI re-asks on each edit
def _replay(spec: ModelSpec, trainings: tuple[BlockTraining, ...], options: tuple) -> ActivationBytes:
    """`saved_bytes` once per spec, block trainings (one tuple per shape-free plan) and replay options."""
    return saved_bytes(spec, trainings, **dict(options))


@by_identity(objects=3)  # a batch or length search, and the service's estimate, reuse them
def _model_states(spec: ModelSpec, counts: ParamCounts, train: TrainingLayout, plan: Plan) -> tuple:
    """What the micro-batch's shape does not change, per GPU before any offload: (weights, gradients, optimizer
    state, master weights) scaled to the rank's model-parallel share, ZeRO-3's gathered pair (`_zero3_gather`)
    and the optimizer step's temporaries (`_optimizer_temporaries`). `plan` is shape-free (`Plan.shape_free`):
    nothing here may read the batch or sequence sizes."""
    share = parallel.model_share(counts, plan)
    grads = gradient_bytes(train, plan)
    if plan.optimizer == "badam":
        # BAdam sets requires_grad_(False) on every layer but the active block: only its gradients exist
        grads = _ceil_div(grads * badam_block(spec, train, plan), max(1, train.trainable_params))
    states = (weight_bytes(train, plan), grads, optimizer_state_bytes(train, plan, spec),
              master_weight_bytes(train, plan))
    return (*(parallel.scaled(x, share) for x in states), _zero3_gather(spec, plan, train, counts),
            _optimizer_temporaries(spec, train, plan))


def _head_linear_trainable(spec: ModelSpec, train: TrainingLayout) -> bool:
    """Whether the output head's linear saves its input: it trains, or it is a classification `score` that
    peft's modules_to_save trains beside LoRA."""
    return train.head_trainable or bool(spec.num_labels and train.method in ("lora", "qlora"))


def _freeze_checkpointing(spec: ModelSpec, plan: Plan, train: TrainingLayout, device: str,
                          acts: ActivationBytes) -> tuple[int, int, int, int]:
    """Gradient checkpointing as LLaMA-Factory sets it up for freeze tuning: (the checkpointed layers' inputs,
    what the frozen layers above them save, what is saved outside the blocks, the largest recomputed block).

    LLaMA-Factory (src/llamafactory/model/model_utils/checkpointing.py, `get_custom_gradient_checkpointing_
    func`) checkpoints only decoder layers that hold a trainable parameter, making their hidden-states input
    require grad, and does not call `enable_input_require_grads()`: frozen layers below the first trainable
    one run on an input that needs no gradient and keep nothing; the trainable (checkpointed) layers keep
    their input; frozen layers above them (`freeze_trainable_layers` < 0) are not checkpointed and keep what
    their ops save. Trainable layers are contiguous (`trainable_layer_indices`).
    """
    chosen = train.trainable_layers
    first, end = chosen[0], chosen[-1] + 1
    plain = activation_bytes(spec, plan, train, device, input_grad=False)  # nothing asks for input grads
    inputs = sum(acts.input_per_layer[first:end])  # the checkpointed layers' inputs, from the same replay
    above = sum(plain.per_layer[end:])
    return inputs, above, plain.outside, max(acts.per_layer[first:end])


def _offloaded(spec: ModelSpec, plan: Plan, train: TrainingLayout, run: StageRun, acts: ActivationBytes, *,
               checkpointed: int, blocks: int, outside: int, copies: int) -> tuple[int, int, int, int]:
    """Activation offloading: (saved in the blocks, outside them, and the autocast weight copies, that stay on
    the GPU through forward; the bytes in host memory). `checkpointed` is the checkpointed layers' inputs
    within `blocks`; `copies` the blocks' autocast weight copies saved without checkpointing.

    * "checkpoint" moves the inputs checkpointing keeps: Unsloth's offloaded checkpointing (LLaMA-Factory
      src/llamafactory/model/model_utils/checkpointing.py `UnslothGradientCheckpointing`: the hidden states
      `.to("cpu")` and saved, the layer run under no_grad) and transformers' `offload` (modeling_utils.py
      `_activation_checkpointing_enable` wraps `checkpoint` in `torch.autograd.graph.save_on_cpu`, under which
      only the layer's positional inputs, the hidden states, are saved; the layer's own saves go to
      checkpoint's inner hooks). The rest (embedding, final norm, head, frozen layers not checkpointed) stays.
    * "saved" moves every tensor autograd saves in forward, except what the LM head's module saves: trl
      trl/models/activation_offloading.py `OffloadActivations.pack_tensor` (torchtune's, which axolotl uses
      too) keeps parameters and buffers and tensors under `min_offload_size` (1 KiB: per-token scalars
      pass it from 256 tokens on), and `get_act_offloading_ctx_manager` wraps `lm_head` in a `NoOpManager`.
      Under checkpointing the layers' inputs go with the rest (the recompute runs after the hooks' context).
      The autocast weight copies stay cached on the GPU until the forward's autocast region ends.

    Not offloaded either way: the loss's tensors (`logits`): the streamed offloader keeps the last tensors it
    packed (`max_fwd_stash_size` 5) on the GPU for backward, and the synchronous one brings them back at
    once when backward starts, where the peak counts them anyway. Host memory counts each storage once."""
    if plan.activation_offload == "checkpoint":
        return blocks - checkpointed, outside, copies, checkpointed
    head = run.head in ("logits", "value", "logps") and _head_linear_trainable(spec, train)
    kept = min(outside, run.rows * plan.seq_len * spec.hidden_size * DTYPE_BYTES[plan.compute_dtype]) if head else 0
    return 0, kept, 0, blocks + outside - kept + copies


def attention_run(spec: ModelSpec, plan: Plan) -> Plan:
    """The plan with the attention transformers really runs: a model without SDPA (Gemma-2) asked for the
    default sdpa gets eager (PreTrainedModel falls back to it; the frameworks' `auto` does the same)."""
    return plan.model_copy(update={"attention": "eager"}) if plan.attention == "sdpa" and not spec.sdpa else plan


def _flattened(plan: Plan) -> Plan:
    """A padding-free micro-batch as the model runs it: one row of every real token (`Plan.rows`).

    TRL's DataCollatorForLanguageModeling(padding_free=True) concatenates the micro-batch's sequences into one
    row with position_ids restarting at each sequence (trl/trainer/sft_trainer.py; SFTTrainer turns it on for
    `packing_strategy` bfd and bfd_split too), and axolotl's sample packing with a flash kernel makes one row of
    micro_batch_size x sequence_len tokens (core/trainers/base.py `_create_multipack_sampler`, batch_size 1).
    Flash attention runs each sequence on its own (varlen, from position_ids); sdpa and eager get the
    block-diagonal causal mask transformers builds from those position_ids (masking_utils.py
    `find_packed_sequence_indices`) and compute the whole row's T x T scores, as the replay of one row does."""
    if not plan.padding_free:
        return plan
    rows, tokens = plan.rows
    return plan.model_copy(update={"batch_size": rows, "seq_len": tokens, "token_fill": 1.0})


# bitsandbytes' blocks of 4-bit weights that share one absmax (Params4bit's blocksize, 64 on CUDA)
BNB_BLOCKSIZE = 64


def _quantize_on_load(spec: ModelSpec, plan: Plan, train: TrainingLayout) -> int:
    """What loading a base that bitsandbytes quantizes on the fly holds beyond the quantized weights, at its
    largest: one linear weight at a time, in 16 bits, beside its quantized copy (0 when nothing is quantized on
    load: no QLoRA, or a pre-quantized checkpoint).

    transformers 5 (core_model_loading.py `convert_and_load_state_dict_in_model`) loads without its thread pool
    when it quantizes on the fly, materializing each checkpoint tensor only when its conversion runs, on the
    target device in the load dtype; `Bnb4bitQuantize` (integrations/bitsandbytes.py) wraps it in a Params4bit,
    whose `_quantize` (bitsandbytes/nn/modules.py) replaces the data with the packed 4-bit tensor while the
    16-bit one stays referenced until the conversion returns. Inside `quantize_4bit` (bitsandbytes/functional.py)
    double quantization holds the fp32 absmax (one per BNB_BLOCKSIZE weights) and its offset copy while it
    quantizes them. 8-bit Int8Params casts the weight to fp16 first (a second copy unless loaded in fp16)."""
    if train.method != "qlora" or train.checkpoint_quantized:
        return 0
    n = max((lin.in_features * lin.out_features for g in spec.blocks for lin in g.block.linears), default=0)
    loaded = n * DTYPE_BYTES[param_dtype(plan, trainable=False)]
    if plan.base_bits == 8:
        return loaded + (2 * n if param_dtype(plan, trainable=False) != "fp16" else 0)
    return loaded + (2 * 4 * _ceil_div(n, BNB_BLOCKSIZE) if plan.double_quant else 0)


def _mask_4d_bytes(plan: Plan) -> int:
    """LLaMA-Factory's neat_packing without fa2: SFTDataCollatorWith4DAttentionMask (data/collator.py) replaces the
    attention mask with `prepare_4d_attention_mask`, batch x 1 x cutoff_len x cutoff_len in the compute dtype, which
    the Trainer moves to the GPU with the batch and holds until the step is done (the training loop keeps
    `inputs`)."""
    return plan.batch_size * plan.seq_len * plan.seq_len * DTYPE_BYTES[plan.compute_dtype] if plan.mask_4d else 0


def tokens_assumption(plan: Plan) -> str:
    """What the estimate assumes one micro-batch holds (`{field}` placeholders name settings)."""
    if not plan.padding_free:
        how = "several sequences packed into each row" if plan.packing else "sequences padded to full length"
        return f"micro-batch {plan.batch_size} x {plan.seq_len} tokens, {how}"
    count = f"{plan.token_fill:.0%} of {{batch_size}} x {{seq_len}} ({{token_fill}})" if plan.token_fill < 1 else \
        "{batch_size} x {seq_len}, the most it holds; set {token_fill} to the share of real tokens"
    kernel = "flash attention runs each sequence on its own (varlen)" if plan.attention == "flash" else \
        (f"{plan.attention} attends over the whole row through transformers' block-diagonal mask (no cross-"
         "sequence attention, but T x T scores and mask: the mask is not counted; TRL supports flash only)")
    return f"padding-free: each micro-batch is one row of {plan.tokens} tokens, {count}; {kernel}"


def autocast_weight_copies(train: TrainingLayout, plan: Plan, counts: ParamCounts,
                           spec: ModelSpec | None = None) -> tuple[int, int]:
    """Under torch.autocast, fp32 trainable weights are cast to 16 bits once per forward and the
    copies are kept (the autocast weight cache, and the matmuls save them for backward), 2 bytes per
    matmul weight. Returns (copies made inside the decoder blocks, the LM head's copy).

    Fused MoE experts are not cast: transformers runs them through `torch._grouped_mm`, which has no autocast
    kernel (neither AutocastCUDA nor AutocastCPU: `torch._C._dispatch_has_kernel_for_dispatch_key`), so fp32
    experts compute in fp32 and leave no 16-bit copy (`spec` gives the trainable layers' experts)."""
    if not plan.mixed or plan.zero > 0:
        return 0, 0
    head = counts.head or counts.embeddings - counts.position_embeddings  # a tied head casts the embedding
    if train.method == "full":
        return 2 * (counts.total - counts.norms - counts.embeddings - counts.head - counts.experts), 2 * head
    if train.method == "freeze":
        outside = 2 * head if train.head_trainable else 0
        chosen = set(train.trainable_layers)
        experts = sum(block.other_params.get("experts", 0) for i, block in spec.iter_blocks() if i in chosen) \
            if spec is not None and counts.experts else 0
        return 2 * (train.trainable_params - experts) - outside, outside
    return 2 * train.adapter_params, 0


def estimate_memory(spec: ModelSpec, plan: Plan, counts: ParamCounts | None = None,
                    train: TrainingLayout | None = None, machine: Machine | None = None) -> Breakdown:
    machine = machine or Machine()
    spec = stage_spec(spec, plan)
    plan = _flattened(attention_run(spec, plan))
    # prompt and P-tuning run the model on their virtual tokens too: every per-token size grows with them
    plan = plan.model_copy(update={"seq_len": peft_methods.model_seq_len(plan)})
    if plan.context_parallel * plan.tensor_parallel > 1:
        # context parallel splits each sequence; tensor parallel with sequence parallel splits every saved
        # activation and (vocabulary-parallel) the logits: a replay of the rank's share of the tokens
        plan = plan.model_copy(update={"seq_len": parallel.rank_seq_len(plan, plan.seq_len)})
    counts = counts or count_params(spec)
    train = train or layout(spec, counts, plan)
    share = parallel.model_share(counts, plan)
    run = stage_run(plan, machine.device)
    acts = activation_bytes(spec, plan, train, machine.device, run=run)
    weights, grads, opt_state, master, zero3, optimizer_temps = _model_states(spec, counts, train,
                                                                              plan.shape_free())
    cpu_offload = host_params = 0
    if plan.offload_optimizer:
        cpu_offload = opt_state + master
        opt_state = master = 0
    if plan.offload_params:
        # ZeRO-3 offload_param (partition_parameters.py keeps each partition on the offload device) and FSDP2's
        # CPUOffloadPolicy (_fsdp_param.py: the sharded parameter, and the sharded gradient after
        # reduce-scatter, on the CPU): only the gathered units (`zero3_gather`) come to the GPU; the gradient
        # shards follow when the optimizer runs on the host
        host_params, weights = weights, 0
        if plan.offload_optimizer:
            host_params, grads = host_params + grads, 0

    block_copies, head_copy = autocast_weight_copies(train, plan, counts, spec)
    if plan.gradient_checkpointing:
        # Each block keeps only its input, and one block is recomputed at a time during backward
        # (Chen et al. 2016). The checkpointed forward saves nothing, but autocast still caches its
        # weight casts until the autocast region ends (before backward); the recomputed block casts
        # its own again.
        block_acts, outside, autocast_cache, saved_copies = acts.block_inputs, acts.outside, block_copies, 0
        checkpointed, recompute_block = block_acts, acts.per_block_max
        if train.method == "freeze":
            checkpointed, above, outside, recompute_block = _freeze_checkpointing(spec, plan, train, machine.device,
                                                                                  acts)
            block_acts = checkpointed + above
        recompute = recompute_block + _ceil_div(block_copies, len(train.trainable_layers) or spec.num_layers)
    else:
        block_acts, outside, autocast_cache, saved_copies, recompute = acts.blocks, acts.outside, 0, block_copies, 0
        checkpointed = 0
    # freeze tuning checkpoints only its trainable layers: frozen ones above them keep their saved tensors instead
    last_recomputed = train.method != "freeze" or spec.num_layers - 1 in train.trainable_layers
    host_activations, brought_back = 0, 0
    if plan.activation_offload != "off":
        block_acts, outside, saved_copies, host_activations = _offloaded(
            spec, plan, train, run, acts, checkpointed=checkpointed, blocks=block_acts, outside=outside,
            copies=saved_copies)
        if plan.activation_offload == "saved":
            autocast_cache = block_copies  # cached on the GPU until forward ends, saved on the host
            if not (plan.gradient_checkpointing and last_recomputed):
                # the last block's backward brings its saved tensors back (one autograd node's at a time: this
                # is their upper bound); a recomputed block's input is already inside `recompute`
                brought_back = acts.per_layer[-1] + _ceil_div(block_copies, spec.num_layers)
    mask = _mask_4d_bytes(plan)
    activations = block_acts + outside + saved_copies + head_copy + mask
    logits = acts.logits
    # Plain DDP (several GPUs, no ZeRO) allocates its all-reduce buckets when it wraps the model and
    # keeps them for the whole run: a second copy of every gradient unless gradient_as_bucket_view=True
    # (PyTorch's default is False).
    # Megatron's DDP (the model-parallel path) reduces from its contiguous gradient buffer: no second copy
    buckets = grads if plan.shard_ranks > 1 and plan.zero == 0 and plan.model_parallel == 1 else 0

    compute_bytes = DTYPE_BYTES[plan.compute_dtype]
    loss_forward, loss_backward = _loss_transients(spec, plan, train, run, run.rows)
    largest_linear = max((lin.in_features * lin.out_features for g in spec.blocks for lin in g.block.linears),
                         default=0)
    # a quantized base (QLoRA's, or a pre-quantized checkpoint's) dequantizes one weight at a time
    # (in bnb_4bit_compute_dtype: the base's dtype)
    dequant = largest_linear * DTYPE_BYTES[plan.base_dtype] if train.method == "qlora" or train.checkpoint_quantized else 0
    # DoRA rebuilds each target's whole adapted weight to take its norm, one target at a time (forward and
    # recompute alike)
    if plan.use_dora:
        targets = [lin for g in spec.blocks for lin in lora_targets(spec, g.block, plan)[0]]
        dequant += peft_methods.dora_transient(targets, plan.lora_rank, DTYPE_BYTES[adapter_dtype(plan)])
    gather_forward, zero3_gather, grad_partition, optimizer_temp = (parallel.scaled(x, share) for x in (
        *zero3, *optimizer_temps))

    in_backward = steps_in_backward(plan)
    if in_backward:
        # each gradient is stepped and freed in its own hook: only the largest one exists at a time (the
        # per-parameter optimizers' temporaries are already one parameter's; foreach AdamW's shrink with it)
        all_grads, grads = grads, _largest_gradient(spec, train, plan, grads)
        if plan.optimizer == "adamw":
            optimizer_temp = _ceil_div(optimizer_temp * grads, max(1, all_grads))
    reference = parallel.scaled(reference_bytes(spec, plan, train), share) * (int(run.reference)
                                                                             + int(run.reward_model))
    no_grad = _no_grad_forward(spec, plan, train, run, acts)
    kv_cache = kv_cache_bytes(spec, run.generated, plan.seq_len, compute_bytes) if run.generated else 0
    vllm = int(plan.vllm_gpu_memory_utilization * machine.capacity_bytes) \
        if plan.vllm == "colocate" and machine.capacity_bytes else 0
    persistent = {"weights": weights, "reference": reference, "master_weights": master, "optimizer": opt_state,
                  "generation": vllm}
    accum_grads = (grads if plan.grad_accum > 1 else 0) + buckets
    grads += buckets
    forward = {**persistent, "gradients": accum_grads, "activations": activations, "logits": logits,
               "temporaries": max(loss_forward, dequant, no_grad) + gather_forward + autocast_cache}
    # Backward runs the loss and the head first: their fp32 logit gradients are freed (the head's backward
    # consumes them) before autograd reaches the last decoder block, so under checkpointing the first block is
    # recomputed only after they are gone (torch.utils.checkpoint recomputes inside the block's own backward
    # node). Three points bound the phase: its start (the loss), the last block's backward (every layer's saved
    # tensors, or block inputs, still alive, with that block's own gradients in flight) and its end.
    backward_start = {**persistent, "gradients": accum_grads, "activations": activations, "logits": logits,
                      "temporaries": loss_backward + zero3_gather + dequant}
    in_flight = _last_block_backward(spec, plan, train, run.rows, acts)
    backward_layer = {**persistent, "gradients": accum_grads, "activations": block_acts + saved_copies + brought_back + mask,
                      "logits": 0,
                      "temporaries": (recompute if last_recomputed else 0) + in_flight + zero3_gather + dequant}
    embedding_end = _embedding_backward(spec, plan, train, run)
    # under checkpointing the first block is recomputed last, before its own gradients and the embedding's exist
    not_yet = 0
    if plan.zero < 2 and recompute:
        pb = DTYPE_BYTES[param_dtype(plan, trainable=True)]
        first_trains = train.method == "full" or (train.method == "freeze" and 0 in train.trainable_layers)
        not_yet = pb * ((counts.per_layer[0] if first_trains else 0)
                        + (spec.vocab_size * spec.hidden_size if train.embeddings_trainable
                           and not spec.tie_word_embeddings else 0))
    backward_end = {**persistent, "gradients": grads, "activations": mask, "logits": 0,
                    "temporaries": max(recompute - not_yet, embedding_end, 0) + zero3_gather + dequant}
    backward = max(backward_start, backward_layer, backward_end, key=lambda p: sum(p.values()))
    optimizer = {**persistent, "gradients": grads, "activations": mask, "logits": 0, "temporaries": optimizer_temp}
    if in_backward:  # the step happens inside backward, one parameter at a time
        backward = max(backward_start, backward_layer, backward_end, optimizer, key=lambda p: sum(p.values()))
        optimizer = {**persistent, "gradients": buckets, "activations": mask, "logits": 0, "temporaries": 0}
    phases = []
    quantizing = _quantize_on_load(spec, plan, train)
    if quantizing:
        loaded = _ceil_div(sum(g.nbytes for g in train.groups if not g.trainable), plan.gpus if plan.zero == 3 else 1)
        load = {"weights": loaded, "reference": reference, "temporaries": quantizing}
        phases.append(Phase(name="load", parts=_ordered(load), allocated=sum(load.values()),
                            what="quantizing the largest weight: its 16-bit copy"))
    if run.generated:
        # generation runs at the start of a step: gradients were freed by the last zero_grad, the cache grows
        # to every position of every sequence generated at once, and the prompt's prefill is the largest forward
        prefill = _no_grad_forward(spec, plan, train, run, acts, rows=run.generated,
                                   seq=plan.seq_len - run.completion)
        generation = {**persistent, "gradients": buckets, "activations": 0, "logits": 0,
                      "generation": vllm + kv_cache, "temporaries": prefill}
        phases.append(Phase(name="generation", parts=_ordered(generation), allocated=sum(generation.values()),
                            what=f"KV cache of {run.generated} sequences x {plan.seq_len} tokens"))
    what_forward = "reference forward without gradients" if no_grad > max(loss_forward, dequant) else \
        "loss: logits and their fp32 up-cast" if run.head == "logits" else "loss"
    phases += [
        Phase(name="forward", parts=_ordered(forward), allocated=sum(forward.values()), what=what_forward),
        Phase(name="backward", parts=_ordered(backward), allocated=sum(backward.values()),
              what=("start: fp32 logit gradients" if run.head == "logits" else "start: the loss's gradients")
              if backward is backward_start else
              ("the last block's backward" + (", recomputed" if recompute and last_recomputed else "")
               + ": its gradients in flight")
              if backward is backward_layer else
              "end: all gradients" + (", the first block recomputed" if recompute - not_yet > embedding_end else
                                      ", the embedding's dense gradient" if embedding_end else "")),
        Phase(name="optimizer", parts=_ordered(optimizer), allocated=sum(optimizer.values()),
              what="step: " + ("ZeRO's gradient partition" if grad_partition else
                               ("foreach temporaries" if plan.optimizer == "adamw" else "its temporaries")
                               if optimizer_temp else "in-place update")),
    ]
    peak = max(phases, key=lambda p: p.allocated)
    fragmentation = int(peak.allocated * machine.fragmentation)
    context = machine.context_bytes
    overhead = fragmentation + context
    return Breakdown(
        total=peak.allocated + overhead, peak_phase=peak.name, peak_allocated=peak.allocated, peak=peak.parts,
        overhead=overhead, phases=phases, largest={k: max(p.parts[k] for p in phases) for k in COMPONENTS},
        cpu_offload=cpu_offload, host_activations=host_activations, host_params=host_params,
        host_per_node=(cpu_offload + host_activations + host_params) * plan.per_node_gpus,
        details=Details(
            activations_saved_in_blocks=block_acts, activations_outside_blocks=outside,
            autocast_weight_copies=block_copies + head_copy, autocast_cache_forward=autocast_cache,
            ddp_buckets=buckets, recompute_one_block=recompute,
            loss_forward_transient=loss_forward, loss_backward_transient=loss_backward,
            last_block_backward=in_flight, embedding_backward=embedding_end,
            optimizer_temporaries=optimizer_temp, zero_gradient_partition=grad_partition,
            zero3_gather=zero3_gather, qlora_dequant=dequant, mask_4d=mask, reference_weights=reference,
            no_grad_forward=no_grad, kv_cache=kv_cache, vllm_reserved=vllm,
            fragmentation=fragmentation, cuda_context=context,
        ),
    )


def _largest_gradient(spec: ModelSpec, train: TrainingLayout, plan: Plan, all_grads: int) -> int:
    """The biggest single trainable tensor's gradient: with the optimizer stepping inside backward,
    only one gradient is alive at a time (torchtune's optimizer_in_bwd)."""
    if train.trainable_params == 0:
        return 0
    bytes_per_param = all_grads / train.trainable_params
    widths = [max(lin.in_features, lin.out_features) for g in spec.blocks for lin in g.block.linears]
    if train.method in ("lora", "qlora"):  # the largest adapter matrix: rank x width
        largest = plan.lora_rank * max(widths, default=spec.hidden_size)
    elif plan.peft:
        largest = max(n for n, _ in peft_tensor_sizes(spec, plan))
    else:
        largest = max((lin.in_features * lin.out_features for g in spec.blocks for lin in g.block.linears),
                      default=0)
        for group in spec.blocks:
            if group.block.mlp.kind == "moe":
                largest = max(largest, group.block.other_params.get("experts", 0) * 2 // 3)
        if train.embeddings_trainable:
            largest = max(largest, spec.vocab_size * spec.hidden_size)
    return min(all_grads, int(largest * bytes_per_param))


# DeepSpeed's `sub_group_size` (deepspeed/runtime/zero/config.py default, also in LLaMA-Factory's ds_z3 configs)
ZERO3_SUB_GROUP = 10**9


def _optimizer_temporaries(spec: ModelSpec, train: TrainingLayout, plan: Plan) -> tuple[int, int]:
    """What the optimizer step allocates and frees again, per GPU: (ZeRO's gradient partition, all of it).

    Without ZeRO, what the optimizer's own step allocates (planner.optimizers.step_temporaries: foreach
    AdamW's sqrt(exp_avg_sq) for the whole group, one parameter's for the per-parameter loops).

    DeepSpeed ZeRO (not offloaded) steps one parameter group at a time: `DeepSpeedZeroOptimizer.step`
    (deepspeed/runtime/zero/stage_1_and_2.py, ZeRO-1 and 2 alike) flattens the group's reduced gradient
    partition (`self.flatten(self.averaged_gradients[i])`, a copy in the gradient dtype) and converts it to
    the master weights' dtype (`single_grad_partition = flat_grad_partition.to(...)`): the fp32 gradient
    partition, 4 bytes per parameter / GPUs, which DeepSpeed's estimator counts as "4_grads_32bit". The
    16-bit copy is freed before the optimizer runs on the group (`del flat_grad_partition`), and the fp32 one
    after it (`single_partition_of_fp32_groups[i].grad = None`). ZeRO-3 does the same one sub-group at a time
    (stage3.py `step` -> `_prepare_fp32_grad_for_sub_group`, `_optimizer_step`, `_release_sub_group`): a
    sub-group holds `sub_group_size` partitioned elements plus the parameter that crosses it
    (`_create_fp16_sub_groups`). The Trainer's no-decay group (norms, biases) is counted with the rest.
    """
    if plan.offload_optimizer:
        return 0, 0  # DeepSpeed keeps the fp32 gradients on the host with the optimizer
    per_dtype = gradient_dtype(train)
    grad_bytes = sum(n * DTYPE_BYTES[dt] for dt, n in per_dtype.items())
    state_bytes = sum(n * (4 if keeps_master_copy(plan) else DTYPE_BYTES[dt]) for dt, n in per_dtype.items())
    foreach = plan.optimizer == "adamw"
    if plan.zero == 0:
        return 0, step_temporaries(spec, train, plan)
    params = max(1, train.trainable_params)
    ranks = plan.shard_ranks
    state_part, grad_part = _ceil_div(state_bytes, ranks), _ceil_div(grad_bytes, ranks)
    if plan.zero == 3:
        largest = max((t.numel for t in trainable_tensors(spec, train, plan)), default=0)
        elements = ZERO3_SUB_GROUP + _ceil_div(largest, ranks)
        if elements < _ceil_div(params, ranks):
            state_part = _ceil_div(state_bytes * elements, params)
            grad_part = _ceil_div(grad_bytes * elements, params)
    # without a master copy `.to` of the same dtype returns the flat copy itself: it is the partition
    flat = grad_part if keeps_master_copy(plan) else 0
    return state_part, state_part + max(flat, state_part if foreach else 0)


def _zero3_gather(spec: ModelSpec, plan: Plan, train: TrainingLayout, counts: ParamCounts) -> tuple[int, int]:
    """Bytes ZeRO-3 holds gathered beyond each GPU's shard: (during forward, during backward).

    The current decoder layer and the prefetched next one, gathered whole (QLoRA: its 4-bit storage, which
    FSDP/ZeRO-3 shard through bnb_4bit_quant_storage); or, when it is bigger, the largest single module
    (most direct parameters: the embedding or LM head at real size, or a fused MoE experts module).
    DeepSpeed gathers a module's parameters whole before it runs (partitioned_param_coordinator.py,
    `fetch_sub_module`), in backward too, and a module's full gradient exists until it is reduce-scattered
    into the partition: 16-bit parameter + gradient, the "4 x largest_layer" that
    `estimate_zero3_model_states_mem_needs` (stage3.py) reserves. The LM head is used last in forward and
    first in backward, so `stage3_max_reuse_distance` (1e9, DeepSpeed's default and LLaMA-Factory's) keeps it
    gathered from its forward through the loss (`__params_to_release`); taken as the phase's transient
    throughout, with the gradient in backward only.
    """
    # offloaded parameters are gathered onto the GPU even on one rank
    if plan.zero != 3 or (plan.shard_ranks == 1 and not plan.offload_params):
        return 0, 0
    window = 2 * (train.weight_bytes * max(counts.per_layer) // max(1, counts.total))
    weight, with_grad = _largest_module(spec, plan, train)
    return max(window, weight), max(window, with_grad)


def _largest_module(spec: ModelSpec, plan: Plan, train: TrainingLayout) -> tuple[int, int]:
    """Bytes of the module with the most direct parameters: (its weights, its weights + gradient)."""
    trained, frozen = param_dtype(plan, trainable=True), param_dtype(plan, trainable=False)
    modules: list[tuple[int, int]] = []

    def add(numel: int, trainable: bool, nbytes: int | None = None) -> None:
        weight = numel * DTYPE_BYTES[trained if trainable else frozen] if nbytes is None else nbytes
        modules.append((weight, weight + (numel * DTYPE_BYTES[trained] if trainable else 0)))

    add(spec.vocab_size * spec.hidden_size, train.embeddings_trainable)
    if spec.head_params:
        add(spec.head_params, train.head_trainable)
    chosen = set(train.trainable_layers)
    for group in spec.blocks:
        trainable = train.method == "full" or any(group.start <= i < group.start + group.count for i in chosen)
        for lin in group.block.linears:
            nbytes = None
            q = spec.quantization
            if train.checkpoint_quantized and q is not None and q.converts(f"model.layers.{group.start}.{lin.path}"):
                nbytes = checkpoint_weight_bytes(q, lin.in_features, lin.out_features) + \
                    (lin.out_features if lin.bias else 0) * DTYPE_BYTES[frozen]
            elif train.method == "qlora" and not train.checkpoint_quantized:
                nbytes = quantized_bytes(lin.in_features * lin.out_features, lin.out_features, plan.base_bits,
                                         plan.double_quant) + (lin.out_features if lin.bias else 0) * \
                    DTYPE_BYTES[frozen]
            add(lin.params, trainable, nbytes)
        for key in ("experts", "router"):  # a fused experts module holds gate_up and down itself
            if group.block.other_params.get(key):
                add(group.block.other_params[key], trainable)
    return max(w for w, _ in modules), max(wg for _, wg in modules)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _loss_transients(spec: ModelSpec, plan: Plan, train: TrainingLayout, run: StageRun, rows: int) -> tuple[int, int]:
    """What the output head and the loss allocate and free again over `rows` sequences: (at the loss in
    forward, at the start of backward)."""
    tokens, d, cb = rows * plan.seq_len, spec.hidden_size, DTYPE_BYTES[plan.compute_dtype]
    if run.head == "value":
        # one score per position, up-cast; LLaMA-Factory's value-head model computes (and up-casts) the LM
        # head's logits too, unused
        return tokens * spec.head_width * (cb + 4), 0
    if run.head == "chunked":
        # ChunkedLogProbFunction: one reused (4096 tokens x 32768 vocabulary) tile in the compute dtype and seven
        # fp32 running statistics per token in forward; in backward the tile again, an fp32 gradient of the
        # hidden states (and of the head's weight, when it trains) accumulated across tiles, then cast back
        n = rows * run.scored_per_row
        tile = min(n, CHUNK_TOKENS) * min(spec.head_width, CHUNK_VOCAB) * cb
        weight_grad = spec.head_width * d * 4 if train.head_trainable else 0  # accumulated in fp32
        return tile + 7 * 4 * n, tile + n * d * (4 + cb) + weight_grad
    if run.head == "fused":
        # Liger's chunking keeps one chunk of about (tokens x hidden) logits, in fp32, at a time; it
        # computes the gradients during forward, so a trainable head's fp32 gradient exists from then on
        head_grad = spec.head_width * d * DTYPE_BYTES[param_dtype(plan, trainable=True)] \
            if train.head_trainable else 0
        return 4 * tokens * d * 2 + head_grad, head_grad
    tv = rows * run.logits_per_row * spec.head_width
    if "cross_entropy" in liger.applied(spec.model_type, plan.liger_kernels):
        # LigerCrossEntropyFunction (liger_kernel/ops/cross_entropy.py) computes the gradient in forward, into the
        # loss's fp32 up-cast, which it keeps (counted as saved); backward only scales it in place. Besides it: the
        # model's 16-bit logits in forward, the gradient's cast back to them in backward (fp32 logits: neither)
        low = tv * cb if plan.compute_dtype != "fp32" else 0
        return low, low
    # forward: the model's logits and the loss's fp32 up-cast coexist with log_softmax's output;
    # backward start: nll_loss's fp32 grad and log_softmax's fp32 grad input, both T x V
    return tv * cb + (4 * tv if plan.compute_dtype != "fp32" else 0), 8 * tv


def _last_block_backward(spec: ModelSpec, plan: Plan, train: TrainingLayout, rows: int,
                         acts: ActivationBytes) -> int:
    """Bytes the last decoder block's backward (the first block autograd reaches, while every layer's saved
    tensors are still alive) holds beyond what the block saved: the gradient of the block's output, which the
    residual add hands to both branches and which lives until the block is done, plus the largest of the MLP's
    moments (its projections hold the largest tensors of a block):

    * its down projection's backward: the gradient of the projection's input, and of a weight that trains or
      that peft's ParamWrapper materialises whole for MoE experts (W + BA, whose gradient is as big as W:
      transformers' grouped_mm experts take it through `_grouped_mm`'s backward), and, for LoRA on the
      projection, the fp32 gradient of the adapter's up-cast input;
    * the activation x up product's backward: the product's gradient and one for each factor (two for an
      ungated MLP);
    * with a trainable (or ParamWrapper-merged) gate_up: that weight's gradient and the gradient of its output,
      once the down projection's saved tensors, the product's factors and the gate_up output are freed;
    * under checkpointing, the end of the recomputed forward, at its down projection: its input, its output
      and, with LoRA, the adapter's fp32 input (peft keeps the up-cast until the module returns), its output
      and the scaled output.

    MoE experts run on `top_k` rows per token; their outputs, kept for the routing-weight multiply, are freed
    before the experts' backward. With eager attention, its softmax's backward is one more moment (below).
    Checked against traced steps (tests/diagnostics/test_trace.py): the moments hold what the trace holds within
    a few tokens x hidden buffers (the remaining gap is mostly the replay's own, 0.1-0.6% of a 2-layer step)."""
    block = spec.blocks[-1].block
    last = spec.num_layers - 1
    mlp = block.mlp
    tokens, d, cb = rows * plan.seq_len, spec.hidden_size, DTYPE_BYTES[plan.compute_dtype]
    base_trains = train.method == "full" or (train.method == "freeze" and last in train.trainable_layers)
    wb = DTYPE_BYTES[param_dtype(plan, trainable=base_trains)]
    lora_paths: set[str] = set()
    wrapped: frozenset[str] = frozenset()
    if train.method in ("lora", "qlora"):
        linears, wrapped = lora_targets(spec, block, plan)
        lora_paths = {lin.path for lin in linears}
    up_cast = DTYPE_BYTES[adapter_dtype(plan)] if adapter_dtype(plan) != plan.compute_dtype else 0
    inter = mlp.intermediate_size
    if mlp.kind == "moe":
        # grouped_mm has no autocast kernel: the experts compute in their weights' dtype (fp32 when they train
        # under *-mixed), and so do their gradients
        n, e, xb = tokens * mlp.top_k, mlp.num_experts, wb if base_trains else cb
        kept = n * d * xb
        weight_down = e * d * inter * wb if (base_trains or "down" in wrapped) else 0
        down = n * d * xb + n * inter * xb + weight_down - kept
        product = 3 * n * inter * xb - kept
        gate_up = 0
        if base_trains or "gate_up" in wrapped:
            # by then the product's saved factors, the gate_up output they view and the down projection's saved
            # input are freed, and so is a ParamWrapper's merged down weight (saved) with its gradient; a trained
            # down weight's gradient stays, as .grad (summed into it in place when accumulating)
            freed = 3 * n * inter * xb + (n * inter * xb if weight_down else 0)
            if "down" in wrapped and not base_trains:
                freed += weight_down
            stays = weight_down if base_trains and plan.grad_accum == 1 else 0
            gate_up = e * 2 * inter * d * wb + n * 2 * inter * xb + n * d * xb + stays - freed - kept
        tail = n * inter * xb + n * d * xb
    else:
        mlp_linears = [lin for lin in block.linears if lin.component == "mlp"]
        if not mlp_linears:
            return acts.input_per_layer[-1]
        proj = mlp_linears[-1]
        adapter = proj.path in lora_paths
        weight = proj.in_features * proj.out_features * wb if base_trains else 0
        down = tokens * inter * cb + (tokens * inter * up_cast if adapter else 0) + weight
        product = (3 if mlp.kind == "gated" else 2) * tokens * inter * cb
        gate_up = 0
        tail = tokens * inter * cb + (tokens * inter * up_cast + 3 * tokens * d * cb if adapter else tokens * d * cb)
    moments = [down, product, gate_up] + ([tail] if plan.gradient_checkpointing else [])
    att = block.attention
    if plan.attention == "eager" and att.kind != "mla":
        # eager attention's backward, after the MLP's (whose saved tensors are gone by then): the probabilities'
        # gradient, its fp32 up-cast and softmax's gradient coexist, b x heads x s x s each (the probabilities'
        # 16-bit copy, saved by the matmul with v, is freed first)
        scores = rows * att.num_heads * plan.seq_len * plan.seq_len
        moments.append(scores * ((4 if att.softmax_fp32 else cb) + cb) - _mlp_saved(spec, plan, block, base_trains,
                                                                                       lora_paths, wrapped, tokens))
    return acts.input_per_layer[-1] + max(moments)


def _mlp_saved(spec: ModelSpec, plan: Plan, block: Block, base_trains: bool, lora_paths: set[str],
               wrapped: frozenset[str], tokens: int) -> int:
    """What one block's MLP saves for backward (the replay's own rules, on an input that requires grad)."""
    weight_dtype = param_dtype(plan, trainable=base_trains)
    tape = Tape(autocast=plan.compute_dtype if plan.mixed else None,
                liger=liger.applied(spec.model_type, plan.liger_kernels),
                lora_kernels=lora_kernels.applied(plan.lora_kernels))
    ctx = Ctx(batch=1, seq=tokens, hidden=spec.hidden_size, compute=plan.compute_dtype, weight_dtype=weight_dtype,
              kernel=plan.attention, lora_rank=plan.lora_rank, lora_dropout=plan.lora_dropout,
              adapter_dtype=adapter_dtype(plan))
    # the residual stream keeps the embeddings' dtype: the base's unless they train under autocast
    x = T(tokens * spec.hidden_size, weight_dtype if plan.mixed and base_trains else plan.base_dtype, True)
    replay_mlp(tape, x, block, BlockTraining(base_trains, frozenset(lora_paths), wrapped), ctx)
    return tape.bytes()


def _embedding_backward(spec: ModelSpec, plan: Plan, train: TrainingLayout, run: StageRun) -> int:
    """What the end of backward holds beyond every gradient when the embedding trains: its backward makes a
    dense (vocab x hidden) gradient while the gradient of its output (tokens x hidden) is alive.

    A tied LM head gave the same parameter a gradient at the start of backward, which autograd holds in the
    parameter's input buffer until the embedding's arrives, and then sums (torch/csrc/autograd/input_buffer.cpp,
    `accumulate`): in place (`old_var.add_(var)`) when it holds the only reference to a plain dense tensor,
    which it does under autocast (the head's gradient is the fresh fp32 up-cast of the 16-bit copy's), else
    out of place (`old_var + var`): without autocast the head's gradient is a transposed view of the matmul's
    output, and a third vocab x hidden buffer exists while the two are summed. ZeRO-2/3 reduce the gradients
    out of autograd's hands (not modelled here)."""
    if not train.embeddings_trainable or plan.zero >= 2:
        return 0
    gb = DTYPE_BYTES[param_dtype(plan, trainable=True)]
    arriving = run.rows * plan.seq_len * spec.hidden_size * gb
    tied_head = spec.tie_word_embeddings and not spec.num_labels and run.head in ("logits", "logps")
    if not tied_head:
        return arriving
    dense = spec.vocab_size * spec.hidden_size * gb
    if plan.mixed and param_dtype(plan, trainable=True) == "fp32":
        return dense + arriving
    return max(dense + arriving, 2 * dense)


def reference_bytes(spec: ModelSpec, plan: Plan, train: TrainingLayout) -> int:
    """A frozen copy of the model in the frozen weights' dtype (the policy's frozen part as it is stored, the
    trainable part in the compute dtype); ZeRO-3 shards it like the policy (trl `prepare_deepspeed`)."""
    frozen = sum(g.nbytes for g in train.groups if not g.trainable)
    own = (train.trainable_params - train.adapter_params) * DTYPE_BYTES[param_dtype(plan, trainable=False)]
    return _ceil_div(frozen + own, plan.shard_ranks) if plan.zero == 3 else frozen + own


def _ordered(parts: dict[str, int]) -> dict[str, int]:
    return {k: parts.get(k, 0) for k in COMPONENTS}


def _no_grad_forward(spec: ModelSpec, plan: Plan, train: TrainingLayout, run: StageRun, acts: ActivationBytes,
                     rows: int | None = None, seq: int | None = None) -> int:
    """The peak of a forward without gradients over `rows` x `seq` tokens (default: the stage's reference or
    KL forward): one decoder layer's intermediates at a time, bounded by what that layer saves when it trains,
    then the head and loss over the same rows (a prefill scores only the last position)."""
    rows = run.no_grad_rows if rows is None else rows
    if not rows:
        return 0
    seq = plan.seq_len if seq is None else seq
    layer = _ceil_div(acts.per_block_max * rows * seq, run.rows * plan.seq_len)
    if seq != plan.seq_len:  # a prefill: the last position's logits, in fp32 for sampling
        return layer + rows * spec.head_width * (DTYPE_BYTES[plan.compute_dtype] + 4)
    return layer + _loss_transients(spec, plan, train, run, rows)[0]
