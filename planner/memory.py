"""The memory model: per-GPU bytes of each component, and the peak over a training step.

A training step is three phases, and the components alive in each differ:

* **forward** (measured at the loss, its largest point): weights, optimizer state,
  saved activations, the logits and their fp32 up-cast;
* **backward**: at its start every activation is still alive while the loss's
  fp32 logit gradients are created; at its end the activations are gone and every
  gradient exists (the peak is at one of the two ends: in between, activations
  are freed layer by layer as gradients of the same layers are allocated);
* **optimizer step**: weights, gradients, optimizer state and the optimizer's
  temporaries.

The equations, per GPU (each phase's parts are listed in `Phase.parts`):

    forward   = W + M + O + G_accum + A + L + T_fwd
    backward  = max(W + M + O + G_accum + A + L + T_bwd_start,  W + M + O + G + T_bwd_end)
    optimizer = W + M + O + G + T_step
    peak_allocated = max(forward, backward, optimizer)
    overhead  = fragmentation x peak_allocated + CUDA context (on a GPU)
    total     = peak_allocated + overhead

with W weights (sharded by ZeRO-3), M fp32 master weights and O optimizer state (sharded by
ZeRO-1+, zero when offloaded), G gradients (sharded by ZeRO-2+, plus DDP's buckets), G_accum
the gradients alive during forward (only with accumulation, plus DDP's buckets), A saved
activations (planner.activations), L the logits, T the phase's transients (the loss's fp32
copies and gradients, the recomputed block, ZeRO-3's gathered layers, QLoRA's dequantized
weight, the foreach optimizer's temporaries). `Breakdown.peak` holds the peak phase's parts,
which add up to `peak_allocated`; `total` is what `nvidia-smi` shows at the peak.
"""

from __future__ import annotations

from pydantic import BaseModel

from planner.activations import ActivationBytes, saved_bytes
from planner.methods import (
    DTYPE_BYTES,
    TrainingLayout,
    adapter_dtype,
    block_training,
    keeps_master_copy,
    layout,
    lora_targets,
    param_dtype,
)
from planner.params import ParamCounts, count_params
from planner.plan import Plan
from planner.spec import ModelSpec
from planner.target import Machine

COMPONENTS = ("weights", "master_weights", "optimizer", "gradients", "activations", "logits", "temporaries")
PHASES = ("forward", "backward", "optimizer")


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
    optimizer_temporaries: int
    zero3_gather: int
    qlora_dequant: int
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
    return _ceil_div(total, plan.gpus) if plan.zero == 3 else total


def gradient_dtype(train: TrainingLayout) -> dict[str, int]:
    """Trainable parameters by the dtype their gradients take (the parameter's own dtype)."""
    return train.trainable_bytes_by_dtype()


def gradient_bytes(train: TrainingLayout, plan: Plan) -> int:
    """Σ trainable params × bytes of their dtype; ZeRO-2/3 shard them over the GPUs."""
    total = sum(n * DTYPE_BYTES[dt] for dt, n in gradient_dtype(train).items())
    return _ceil_div(total, plan.gpus) if plan.zero >= 2 else total


def optimizer_state_bytes(train: TrainingLayout, plan: Plan, spec: ModelSpec) -> int:
    """Optimizer state per trainable parameter (Loshchilov & Hutter 2019; Dettmers et al. 2022).

    * AdamW: exp_avg + exp_avg_sq in the parameter's dtype (PyTorch allocates them `zeros_like(p)`),
      so 8 bytes for fp32 parameters, 4 for pure bf16, 8 (fp32) under a ZeRO master copy.
    * 8-bit AdamW (bitsandbytes): 2 bytes, plus an fp32 absmax per block of 2048, for tensors of at least
      4096 elements; smaller ones keep 32-bit state.
    * Adafactor (Shazeer & Stern 2018): factored second moment, one row and one column vector per matrix.
    * SGD: nothing; with momentum: one buffer.
    ZeRO-1+ shards the state over the GPUs; `--offload-optimizer` moves it to host RAM.
    """
    per_dtype = gradient_dtype(train)
    state_dtype_bytes = {dt: (4 if keeps_master_copy(plan) else DTYPE_BYTES[dt]) for dt in per_dtype}
    params = sum(per_dtype.values())
    opt = plan.optimizer
    if opt in ("adamw", "adamw-fused"):
        total = sum(2 * n * state_dtype_bytes[dt] for dt, n in per_dtype.items())
    elif opt in ("adamw-8bit", "paged-adamw-8bit"):
        small = _small_tensor_params(train, spec)
        big = params - small
        total = 2 * big + 2 * 4 * _ceil_div(big, 2048) + 8 * small
    elif opt == "adafactor":
        total = _adafactor_state(train, spec, plan, max(state_dtype_bytes.values(), default=4))
    elif opt == "sgd-momentum":
        total = sum(n * state_dtype_bytes[dt] for dt, n in per_dtype.items())
    else:
        total = 0
    return _ceil_div(total, plan.gpus) if plan.zero >= 1 else total


def master_weight_bytes(train: TrainingLayout, plan: Plan) -> int:
    """fp32 copy of 16-bit trainable weights, kept by DeepSpeed/ZeRO mixed precision (ZeRO paper's K=12 includes it)."""
    if not keeps_master_copy(plan):
        return 0
    return _ceil_div(4 * train.trainable_params, plan.gpus)


def activation_bytes(spec: ModelSpec, plan: Plan, train: TrainingLayout, device: str = "cuda") -> ActivationBytes:
    """Bytes autograd saves for backward in one micro-batch (see planner.activations).

    Replayed op by op rather than a closed formula; matches `saved_tensors_hooks` on real
    transformers models. Logits: the loss up-casts them and log_softmax keeps an fp32 copy.
    """
    return saved_bytes(
        spec, block_training(spec, plan), batch=plan.batch_size, seq=plan.seq_len,
        compute=plan.compute_dtype, weight_dtypes=(param_dtype(plan, trainable=True), plan.compute_dtype),
        kernel=plan.attention, autocast=plan.compute_dtype if plan.mixed else None,
        embeddings_trainable=train.embeddings_trainable, head_trainable=train.head_trainable,
        input_grad=plan.gradient_checkpointing, lora_rank=plan.lora_rank, lora_dropout=plan.lora_dropout,
        adapter_dtype=adapter_dtype(plan), device=device, fused_loss=plan.fused_loss,
    )


def autocast_weight_copies(train: TrainingLayout, plan: Plan, counts: ParamCounts) -> tuple[int, int]:
    """Under torch.autocast, fp32 trainable weights are cast to 16 bits once per forward and the
    copies are kept (the autocast weight cache, and the matmuls save them for backward), 2 bytes per
    matmul weight. Returns (copies made inside the decoder blocks, the LM head's copy)."""
    if not plan.mixed or plan.zero > 0:
        return 0, 0
    head = counts.head or counts.embeddings - counts.position_embeddings  # a tied head casts the embedding
    if train.method == "full":
        return 2 * (counts.total - counts.norms - counts.embeddings - counts.head), 2 * head
    if train.method == "freeze":
        outside = 2 * head if train.head_trainable else 0
        return 2 * train.trainable_params - outside, outside
    return 2 * train.adapter_params, 0


def estimate_memory(spec: ModelSpec, plan: Plan, counts: ParamCounts | None = None,
                    train: TrainingLayout | None = None, machine: Machine | None = None) -> Breakdown:
    machine = machine or Machine()
    counts = counts or count_params(spec)
    train = train or layout(spec, counts, plan)
    acts = activation_bytes(spec, plan, train, machine.device)
    weights = weight_bytes(train, plan)
    grads = gradient_bytes(train, plan)
    opt_state = optimizer_state_bytes(train, plan, spec)
    master = master_weight_bytes(train, plan)
    cpu_offload = 0
    if plan.offload_optimizer:
        cpu_offload = opt_state + master
        opt_state = master = 0

    block_copies, head_copy = autocast_weight_copies(train, plan, counts)
    if plan.gradient_checkpointing:
        # Each block keeps only its input, and one block is recomputed at a time during backward
        # (Chen et al. 2016). The checkpointed forward saves nothing, but autocast still caches its
        # weight casts until the autocast region ends (before backward); the recomputed block casts
        # its own again.
        block_acts, autocast_cache, saved_copies = acts.block_inputs, block_copies, 0
        recompute = acts.per_block_max + _ceil_div(block_copies, len(train.trainable_layers) or spec.num_layers)
    else:
        block_acts, autocast_cache, saved_copies, recompute = acts.blocks, 0, block_copies, 0
    activations = block_acts + acts.outside + saved_copies + head_copy
    logits = acts.logits
    # Plain DDP (several GPUs, no ZeRO) allocates its all-reduce buckets when it wraps the model and
    # keeps them for the whole run: a second copy of every gradient unless gradient_as_bucket_view=True
    # (PyTorch's default is False).
    buckets = grads if plan.gpus > 1 and plan.zero == 0 else 0

    tv = plan.tokens * spec.vocab_size
    compute_bytes = DTYPE_BYTES[plan.compute_dtype]
    # forward: the model's logits and the loss's fp32 up-cast coexist with log_softmax's output
    loss_forward = tv * compute_bytes + (4 * tv if plan.compute_dtype != "fp32" else 0)
    # backward start: nll_loss's fp32 grad and log_softmax's fp32 grad input, both T x V
    loss_backward = 8 * tv
    if plan.fused_loss:
        # Liger's chunking keeps one chunk of about (tokens x hidden) logits, in fp32, at a time; it
        # computes the gradients during forward, so a trainable head's fp32 gradient exists from then on
        head_grad = spec.vocab_size * spec.hidden_size * DTYPE_BYTES[param_dtype(plan, trainable=True)] \
            if train.head_trainable else 0
        loss_forward, loss_backward = 4 * plan.tokens * spec.hidden_size * 2 + head_grad, head_grad
    largest_linear = max((lin.in_features * lin.out_features for g in spec.blocks for lin in g.block.linears),
                         default=0)
    dequant = largest_linear * compute_bytes if train.method == "qlora" else 0
    zero3_gather = 0
    if plan.zero == 3 and plan.gpus > 1:
        # the current layer and the prefetched next one, gathered whole (QLoRA: its 4-bit storage,
        # which FSDP/ZeRO-3 shard through bnb_4bit_quant_storage)
        layer_bytes = train.weight_bytes * max(counts.per_layer) // max(1, counts.total)
        zero3_gather = 2 * layer_bytes
    optimizer_temp = _optimizer_temporaries(train, plan)

    if plan.optimizer_in_backward:
        # each gradient is stepped and freed in its own hook: only the largest one exists at a time
        all_grads, grads = grads, _largest_gradient(spec, train, plan, grads)
        optimizer_temp = _ceil_div(optimizer_temp * grads, max(1, all_grads))
    persistent = {"weights": weights, "master_weights": master, "optimizer": opt_state}
    accum_grads = (grads if plan.grad_accum > 1 else 0) + buckets
    grads += buckets
    forward = {**persistent, "gradients": accum_grads, "activations": activations, "logits": logits,
               "temporaries": max(loss_forward, dequant) + zero3_gather + autocast_cache}
    backward_start = {**persistent, "gradients": accum_grads, "activations": activations, "logits": logits,
                      "temporaries": loss_backward + recompute + zero3_gather + dequant}
    backward_end = {**persistent, "gradients": grads, "activations": 0, "logits": 0,
                    "temporaries": recompute + zero3_gather + dequant}
    backward = max(backward_start, backward_end, key=lambda p: sum(p.values()))
    optimizer = {**persistent, "gradients": grads, "activations": 0, "logits": 0, "temporaries": optimizer_temp}
    if plan.optimizer_in_backward:  # the step happens inside backward, one parameter at a time
        backward = max(backward_start, backward_end, optimizer, key=lambda p: sum(p.values()))
        optimizer = {**persistent, "gradients": buckets, "activations": 0, "logits": 0, "temporaries": 0}
    phases = [
        Phase(name="forward", parts=forward, allocated=sum(forward.values()),
              what="loss: logits and their fp32 up-cast"),
        Phase(name="backward", parts=backward, allocated=sum(backward.values()),
              what=("start: fp32 logit gradients" if backward is backward_start else "end: all gradients")
              + (", one block recomputed" if recompute else "")),
        Phase(name="optimizer", parts=optimizer, allocated=sum(optimizer.values()),
              what="step: " + ("foreach temporaries" if optimizer_temp else "in-place update")),
    ]
    peak = max(phases, key=lambda p: p.allocated)
    fragmentation = int(peak.allocated * machine.fragmentation)
    context = machine.context_bytes
    overhead = fragmentation + context
    return Breakdown(
        total=peak.allocated + overhead, peak_phase=peak.name, peak_allocated=peak.allocated, peak=peak.parts,
        overhead=overhead, phases=phases, largest={k: max(p.parts[k] for p in phases) for k in COMPONENTS},
        cpu_offload=cpu_offload,
        details=Details(
            activations_saved_in_blocks=block_acts, activations_outside_blocks=acts.outside,
            autocast_weight_copies=block_copies + head_copy, autocast_cache_forward=autocast_cache,
            ddp_buckets=buckets, recompute_one_block=recompute,
            loss_forward_transient=loss_forward, loss_backward_transient=loss_backward,
            optimizer_temporaries=optimizer_temp, zero3_gather=zero3_gather, qlora_dequant=dequant,
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
    else:
        largest = max((lin.in_features * lin.out_features for g in spec.blocks for lin in g.block.linears),
                      default=0)
        for group in spec.blocks:
            if group.block.mlp.kind == "moe":
                largest = max(largest, group.block.other_params.get("experts", 0) * 2 // 3)
        if train.embeddings_trainable:
            largest = max(largest, spec.vocab_size * spec.hidden_size)
    return min(all_grads, int(largest * bytes_per_param))


def _optimizer_temporaries(train: TrainingLayout, plan: Plan) -> int:
    """PyTorch's foreach AdamW materialises sqrt(exp_avg_sq) for the whole parameter group
    (`torch._foreach_sqrt` in `_multi_tensor_adam`); the fused kernel and bitsandbytes update in place."""
    if plan.optimizer != "adamw" or plan.offload_optimizer:
        return 0
    per_dtype = gradient_dtype(train)
    bytes_ = sum(n * (4 if keeps_master_copy(plan) else DTYPE_BYTES[dt]) for dt, n in per_dtype.items())
    return _ceil_div(bytes_, plan.gpus) if plan.zero >= 1 else bytes_


def _small_tensor_params(train: TrainingLayout, spec: ModelSpec) -> int:
    """Trainable params in tensors below bitsandbytes' min_8bit_size (4096): norms, biases, tiny LoRA A/B."""
    if train.method in ("lora", "qlora"):
        return 0  # LoRA matrices are rank x width: above 4096 elements for any real model
    d = spec.hidden_size
    small = 0
    for group in spec.blocks:
        if train.method == "freeze":
            continue
        block = group.block
        small += group.count * (block.other_params.get("norms", 0) + block.other_params.get("qk_norm", 0))
        small += group.count * sum(lin.out_features for lin in block.linears if lin.bias)
    return small + (d if train.method == "full" else 0)


def _adafactor_state(train: TrainingLayout, spec: ModelSpec, plan: Plan, nbytes: int) -> int:
    """Adafactor keeps rows + cols second-moment entries per trainable matrix, a full one per vector."""
    d = spec.hidden_size
    entries = 0
    chosen = set(train.trainable_layers)
    for index, block in spec.iter_blocks():
        if train.method in ("lora", "qlora"):
            entries += sum(2 * plan.lora_rank + lin.in_features + lin.out_features
                           for lin in lora_targets(spec, block, plan)[0])
            continue
        if train.method == "freeze" and index not in chosen:
            continue
        entries += sum(lin.in_features + lin.out_features + (lin.out_features if lin.bias else 0)
                       for lin in block.linears)
        entries += block.other_params.get("norms", 0) + block.other_params.get("qk_norm", 0)
        if block.mlp.kind == "moe":
            e, i = block.mlp.num_experts, block.mlp.intermediate_size
            entries += e * (2 * i + d) + e * (d + i) + e + d
    if train.method == "full":
        entries += (spec.vocab_size + d) * (1 if spec.tie_word_embeddings else 2) + d
    return nbytes * entries


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)
