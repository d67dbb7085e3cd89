"""Compute per step and an estimated step time.

Training FLOPs per token follow the accounting used for MFU (Kaplan et al. 2020; Chowdhery et al. 2022,
PaLM, App. B): 2 FLOPs per multiply-accumulate; forward = 2N plus attention's QKᵀ and AV, 2·s·h·d_head each
per token (counted dense, as PaLM does); backward = 2x forward. The method changes the backward, layer by
layer (each rule checked against FlopCounterMode on real models: tests/planner/test_flops_truth.py):

* a frozen weight needs no weight gradient: its backward is its input gradient only (2N, not 4N);
* a layer below the first one holding a trainable parameter runs no backward at all (freeze's lower layers);
* attention's backward is twice its forward wherever its inputs need gradients, whether or not a weight
  around it trains: dP = dO·Vᵀ and dV = Pᵀ·dO for AV, dQ = dS·K and dK = dSᵀ·Q for QKᵀ;
* in the first layer that runs backward, the block's input carries no gradient (embedding and lower layers
  frozen). LoRA's norms are frozen too, so the projections reading that input skip their input gradient,
  and attention keeps only the gradients the trained projections need; freeze trains the layer's norm,
  which then needs them, except in a post-norm block (OLMo-2), whose attention reads the input unnormed;
* LoRA adds 2 FLOPs per adapter parameter forward and 4 backward (A and B: input and weight gradients).
  On transformers 5's fused MoE experts peft's ParamWrapper instead folds W + s·B·A into the weight on
  every forward (peft 0.21 tuners/lora/layer.py, `_LoraFactorsProxy`: one `baddbmm` over all E experts,
  whatever the tokens): no per-token adapter FLOPs, but the experts' weight gradient for the tokens that
  visit them, and per micro-batch E·out·in·2r FLOPs forward and twice that backward (grads of B and A).
  peft registers that fold as a parametrization on every forward, and torch evaluates a parametrization
  once more when it is registered, to check its shape and dtype (torch/nn/utils/parametrize.py,
  `ParametrizationList.__init__`, unless `unsafe`): the experts' fold runs twice per forward. The router's
  2-D weight gets a plain B·A delta, computed once (`_LoraParameterProxy`: the check only adds it);
* gradient checkpointing recomputes the forward of the checkpointed layers once more (Chen et al. 2016).
  LLaMA-Factory checkpoints only the decoder layers holding a trainable parameter, never the LM head, and
  makes a checkpointed layer's input require grad (model_utils/checkpointing.py,
  `get_custom_gradient_checkpointing_func`), so LoRA's first layer computes its input gradients after all.

MoE models count only the parameters a token passes through (top-k experts). Norm weights count as
matmul weights (Kaplan's 2N): under 0.1% of N in real models.
"""

from __future__ import annotations

from pydantic import BaseModel

from planner.hardware import GpuSpec
from planner.methods import BlockTraining, TrainingLayout, block_training, wrapped_tensors
from planner.params import ParamCounts
from planner.peft_methods import adapter_width, model_seq_len, oft_block
from planner.plan import Plan
from planner.spec import Block, Linear, ModelSpec
from planner.stages import GENERATES, stage_run

DEFAULT_MFU = {"full": 0.40, "freeze": 0.40, "lora": 0.35, "qlora": 0.25}
# the other PEFT methods also train small additions to a frozen, unquantised base: LoRA's utilisation
DEFAULT_MFU |= {m: DEFAULT_MFU["lora"] for m in ("prefix", "prompt", "ptuning", "ia3", "adapter", "oft")}


class TimeEstimate(BaseModel):
    flops_per_token: float
    flops_per_step: float  # one optimizer step, all GPUs
    mfu: float
    peak_tflops_per_gpu: float
    step_seconds: float
    tokens_per_second: float
    steps: int | None = None
    total_seconds: float | None = None
    note: str


def _active(block: Block) -> int:
    """Parameters one token multiplies through in `block` (MoE: its top-k experts), as
    `ParamCounts.active_per_token` counts them."""
    mlp, experts = block.mlp, block.other_params.get("experts", 0)
    if mlp.kind != "moe" or not mlp.num_experts:
        return block.params
    return block.params - experts + mlp.top_k * (experts // mlp.num_experts)


def _attention(block: Block, seq: int) -> tuple[int, int]:
    """FLOPs per token of QKᵀ and of AV in one layer (every query head, dense)."""
    att = block.attention
    return 2 * seq * att.num_heads * att.head_dim, 2 * seq * att.num_heads * att.v_head_dim


# Which of q, k, v a projection feeds; a fused one (qkv_proj, c_attn, query_key_value) feeds all three.
_FEEDS = {"q_proj": "q", "q_a_proj": "q", "q_b_proj": "q", "k_proj": "k", "v_proj": "v",
          "kv_a_proj_with_mqa": "kv", "kv_b_proj": "kv"}
_MLP_OUTPUT = {"down_proj", "c_proj", "dense_4h_to_h", "fc2"}  # an MLP's second stage; the others read its input


def _first_layer_saving(block: Block, t: BlockTraining, hidden: int, rank: int, seq: int) -> int:
    """Backward FLOPs per token the first layer to run backward skips when its input carries no gradient.

    The projections reading that input skip their input gradient (and a LoRA A its own); attention's backward
    keeps dQ if q trains, dK if k does, dP if either, dV if v does. With none of them, the output projection's
    input carries no gradient either; and when the attention output carries none (nothing in attention
    trains), or the block is parallel, neither does the MLP's input: its first stage (gate/up, router, the
    experts' gate_up) skips its input gradient. (The second stage is taken to need its own: it over-counts
    one layer's down projection when LoRA targets that alone.)
    """
    attention = [lin for lin in block.linears if lin.component == "attention"]
    out_proj, inner = attention[-1], attention[:-1]  # every family lists the output projection last

    def trains(lin: Linear) -> bool:
        return t.base_trainable or lin.path in t.lora_paths

    def skipped(lin: Linear) -> int:  # the base weight's input gradient, and LoRA A's
        return 2 * lin.in_features * lin.out_features + (2 * rank * lin.in_features if lin.path in t.lora_paths else 0)

    # DeepSeek's q_b / kv_b read q_a / kv_a, not the block input
    saved = sum(skipped(lin) for lin in inner if not lin.name.endswith("_b_proj"))
    feeds = set("".join(_FEEDS.get(lin.name, "qkv") for lin in inner if trains(lin)))
    f_qk, f_av = _attention(block, seq)
    kept = f_qk * (("q" in feeds) + ("k" in feeds)) + f_av * (bool(feeds & {"q", "k"}) + ("v" in feeds))
    saved += 2 * (f_qk + f_av) - kept
    if not feeds:
        saved += skipped(out_proj)
    if block.layout == "parallel" or not (feeds or trains(out_proj)):
        saved += sum(skipped(lin) for lin in block.linears if lin.component != "attention" and lin.name not in _MLP_OUTPUT)
        if block.mlp.kind == "moe":  # the router and the experts' gate_up, whether ParamWrapper wraps them or not
            stage = wrapped_tensors(block, hidden, frozenset({"router", "gate_up"}), rank)
            saved += sum(2 * w.active * w.out_features * w.in_features for w in stage)
    return saved


def training_flops_per_token(spec: ModelSpec, counts: ParamCounts, train: TrainingLayout, plan: Plan) -> float:
    lora = train.method in ("lora", "qlora")
    # prompt and P-tuning run their virtual tokens through the model with the text; prefix tuning adds its
    # virtual keys and values to every layer's attention (the sequence itself stays)
    rank, seq = plan.lora_rank, model_seq_len(plan)
    keys = seq + (plan.num_virtual_tokens if plan.method == "prefix" else 0)
    tokens = plan.batch_size * seq  # one micro-batch: ParamWrapper folds its weights once per forward
    blocks = [block for _, block in spec.iter_blocks()]
    training = block_training(spec, plan)
    trains = [t.trains for t in training]
    # virtual tokens sit before the first layer (prefix: in every layer), so every layer runs backward
    first = 0 if plan.prompt_learning else trains.index(True) if any(trains) else len(blocks)
    # the LM head (and final norm): every token, in every method; the embedding is a lookup
    head = counts.active_per_token - sum(_active(b) for b in blocks)
    forward = 2 * head
    backward = (4 if train.method == "full" else 2) * head if first < len(blocks) else 0
    recompute = 0.0
    # the first trained layer's input carries no gradient unless the embedding trains (full) or
    # LLaMA-Factory's checkpointing makes it require grad
    input_grad = train.method in ("full", "prompt", "ptuning") or plan.gradient_checkpointing
    for i, (block, t) in enumerate(zip(blocks, training, strict=True)):
        active = _active(block)
        f_qk, f_av = _attention(block, keys)
        # multiply-accumulates per token of what trains beside the frozen weights (2 FLOPs forward, 4 backward):
        # LoRA's A and B; Houlsby's two bottlenecks (down and up); OFT's block-diagonal rotation of each input
        adapters = sum(rank * (lin.in_features + lin.out_features) for lin in block.linears if lin.path in t.lora_paths)
        adapters += 2 * 2 * spec.hidden_size * adapter_width(spec, plan) if t.adapter else 0
        rotations = [(lin.in_features, *oft_block(lin.in_features, plan.oft_block_size, plan.oft_blocks))
                     for lin in block.linears if lin.path in t.oft_paths]
        adapters += sum(width * size for width, _, size in rotations)
        wrapped = wrapped_tensors(block, spec.hidden_size, t.lora_params, rank)
        fold = sum(2 * w.rank * w.numel for w in wrapped) / tokens  # the fold whose gradient flows
        # OFT builds each rotation once per forward: a 5-term Cayley-Neumann series, 3 batched b x b products
        # (peft tuners/oft/layer.py, `_cayley_batch`)
        fold += sum(2 * 3 * blocks * size ** 3 for _, blocks, size in rotations) / tokens
        # DoRA computes B·A once per forward for the adapted weight's norm, detached: no backward (peft
        # tuners/lora/dora.py; with lora_dropout it also reruns the base matmul, not counted here)
        norms = sum(2 * rank * lin.in_features * lin.out_features for lin in block.linears
                    if t.dora and lin.path in t.lora_paths) / tokens
        check = sum(2 * w.rank * w.numel for w in wrapped if w.experts > 1) / tokens  # registration check
        layer = 2 * active + f_qk + f_av + 2 * adapters + fold + check + norms
        forward += layer
        if plan.gradient_checkpointing and trains[i]:
            recompute += layer
        if i < first:
            continue
        grads = 2 * active + 2 * (f_qk + f_av) + 4 * adapters + 2 * fold
        if t.base_trainable:
            grads += 2 * active
        grads += sum(2 * w.active * w.out_features * w.in_features for w in wrapped)  # the merged weight's
        if i == first and not input_grad and (lora or block.layout == "post"):
            grads -= _first_layer_saving(block, t, spec.hidden_size, rank, keys)
        backward += grads
    # per token of text: prompt and P-tuning's virtual tokens cost as much as text tokens (their encoders, run
    # on the virtual tokens alone, are left out: under 0.1% of a step for 7B models)
    return (forward + backward + recompute) * seq / plan.seq_len


def step_flops(spec: ModelSpec, counts: ParamCounts, train: TrainingLayout, plan: Plan) -> tuple[float, int]:
    """FLOPs per token (the no-grad forwards included) and the tokens of one optimizer step, all GPUs."""
    run = stage_run(plan)
    per_token = training_flops_per_token(spec, counts, train, plan)
    # forwards without gradients (the reference's, KTO's KL batch) cost about 2 FLOPs per active parameter
    per_token += run.no_grad_rows / run.rows * 2 * counts.active_per_token
    return per_token, plan.global_batch * plan.seq_len * run.rows // plan.batch_size


def estimate_time(spec: ModelSpec, counts: ParamCounts, train: TrainingLayout, plan: Plan, gpu: GpuSpec,
                  mfu: float | None = None, samples: int | None = None, epochs: float = 1.0) -> TimeEstimate:
    mfu = mfu if mfu is not None else DEFAULT_MFU[plan.method]
    run = stage_run(plan)
    per_token, tokens_per_step = step_flops(spec, counts, train, plan)
    flops_step = per_token * tokens_per_step
    peak = gpu.peak_tflops(plan.compute_dtype) * 1e12
    seconds = flops_step / (peak * mfu * plan.gpus)
    steps = total = None
    if samples:
        steps = max(1, int(-(-samples * epochs // plan.global_batch)))
        total = steps * seconds
    note = (f"at {mfu:.0%} MFU of {gpu.name}'s {peak / 1e12:.0f} TFLOP/s "
            f"({plan.compute_dtype}{', TF32' if plan.compute_dtype == 'fp32' else ''}) per GPU; "
            "sequences assumed full length"
            + ("; generation time not included" if run.stage in GENERATES else ""))
    return TimeEstimate(flops_per_token=per_token, flops_per_step=flops_step, mfu=mfu,
                        peak_tflops_per_gpu=peak / 1e12, step_seconds=seconds,
                        tokens_per_second=tokens_per_step / seconds, steps=steps, total_seconds=total, note=note)
