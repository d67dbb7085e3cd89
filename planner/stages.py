"""What a training stage holds in memory beyond supervised fine-tuning of one model.

Each stage is read from the trainers that run it (TRL 1.16, trl/trainer/*_trainer.py and
trl/experimental/{orpo,cpo}; LLaMA-Factory, src/llamafactory/train/{dpo,kto,rm,ppo}/trainer.py):

* **dpo, orpo, simpo, rm**: chosen and rejected go through the model together, as 2B rows (TRL
  `DataCollatorForPreference` / LLaMA-Factory `PairwiseDataCollatorWithPadding`): the per-device batch counts
  pairs. DPO keeps a reference model; ORPO and SimPO are reference-free (LLaMA-Factory
  `FinetuningArguments.use_ref_model`: `stage == "dpo" and pref_loss not in ("orpo", "simpo")`, or KTO).
* **kto**: unpaired examples; the policy runs the main batch with gradients and the mismatched "KL" batch
  without, the reference both without (trl/trainer/kto_trainer.py, `_compute_loss` and `_compute_kl_logps`).
* **rm**: TRL's RewardTrainer trains `AutoModelForSequenceClassification(num_labels=1)`: a `score` head of width
  1 replaces the LM head, so no vocabulary logits exist.
* **grpo**: completions are generated (`generate`'s KV cache, or vLLM), then trained on; the per-device batch
  counts completions; TRL keeps a reference model only when `beta` != 0 (0.0 is its default) and scores only
  completion positions (`logits_to_keep`).
* **ppo**: a policy with a value head, a reference and a reward model, and rollouts generated like GRPO's.
  LLaMA-Factory's reward for a LoRA policy is by default an adapter on the policy itself (`reward_model_type:
  lora`); full and freeze tuning need a separate full reward model (hparams/finetuning_args.py), counted here as
  a frozen copy of the policy's size. TRL 1.x has no PPO trainer.

The reference model is the frozen policy: a separate copy in the frozen weights' dtype for full and freeze
tuning (TRL `create_model_from_path(..., dtype=model.dtype)`; LLaMA-Factory `create_ref_model`), none for
LoRA/QLoRA, whose reference is the policy with its adapter disabled (`use_adapter(..., None)` /
`disable_adapter()`), and none when the reference log-probs are precomputed before training.

`fused_loss` on a DPO, KTO or GRPO plan is TRL 1.16's fused LM head (`add_fused_lm_head`, trl/trainer/utils.py,
and `ChunkedLogProbFunction`, trl/kernels/chunked_logprob.py), which these trainers always install: per-token
log-probs are computed tile by tile and backward recomputes the tiles, so no logits tensor exists; on CUDA only
the positions with a label are scored. Left unset, it is on for GRPO (only TRL's trainer runs it here) and for
DPO/KTO under `framework: trl`; a reader sets it off for the TRL versions without the head (axolotl pins 1.8).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from planner.modelspec import ModelSpec
from planner.plan import Plan
from planner.units import fmt_gib

Head = Literal["logits", "fused", "chunked", "value", "logps"]

PAIRED = frozenset({"dpo", "orpo", "simpo", "rm"})
GENERATES = frozenset({"grpo", "ppo"})
# stages whose reference model exists by default (for full and freeze tuning)
REFERENCED = frozenset({"dpo", "kto", "ppo"})
PREFERENCE = frozenset({"dpo", "orpo", "simpo", "kto"})
GRPO_COMPLETION_DEFAULT = 512  # trl GRPOConfig.max_completion_length

# trl/kernels/chunked_logprob.py: the head projects TOKEN_CHUNK_SIZE tokens x chunk_size vocabulary entries at a
# time (trl/trainer/utils.py _CHUNKED_LOGPROB_CHUNK_SIZE), into one reused buffer in the compute dtype
CHUNK_TOKENS = 4096
CHUNK_VOCAB = 32768


@dataclass(frozen=True)
class StageRun:
    """How a stage's step differs from one SFT step, per micro-batch."""

    stage: str
    rows: int  # sequences in the forward with gradients (2B for pairs)
    head: Head  # what the output head saves: full logits, fused CE, TRL's chunked log-probs, a value
    reference: bool  # a frozen reference copy of the model on the GPU
    reward_model: bool  # PPO: a separate frozen reward model the size of the policy
    no_grad_rows: int  # rows of the largest forward without gradients (reference, KTO's KL batch)
    scored_per_row: int  # positions per row the chunked head scores
    # positions per row the LM head makes logits for: GRPO asks for the completion's only (`logits_to_keep`,
    # TRL before its fused head, and axolotl's pinned TRL); every position otherwise
    logits_per_row: int
    generated: int  # sequences `generate` runs at once (0: no generation on this GPU)
    completion: int  # tokens generated per sequence


def batch_unit(stage: str) -> str:
    """What one unit of a stage's per-device batch is."""
    return {"grpo": "completions", "ppo": "rollouts", "kto": "examples"}.get(
        stage, "pairs" if stage in PAIRED else "sequences")


def completion_len(plan: Plan) -> int:
    if plan.max_completion_len is not None:
        return plan.max_completion_len
    return min(GRPO_COMPLETION_DEFAULT, plan.seq_len) if plan.stage in GENERATES else plan.seq_len


def uses_fused_head(plan: Plan) -> bool:
    """Whether the output head never builds a logits tensor: Liger/Cut Cross-Entropy when asked for, TRL's
    fused LM head where its trainer installs it."""
    if plan.fused_loss is not None:
        return plan.fused_loss
    return plan.stage == "grpo" or (plan.framework == "trl" and plan.stage in ("dpo", "kto"))


def has_reference(plan: Plan) -> bool:
    """Whether a separate frozen reference model is on the GPU."""
    if plan.reference_model is not None:
        return plan.reference_model
    if plan.precompute_ref_log_probs or plan.stage not in REFERENCED:
        return False
    # peft models disable their adapters for the reference pass (TRL's null_ref_context, LLaMA-Factory's
    # disable_adapter); Houlsby adapters are not peft's and cannot be switched off, so they need a frozen copy
    return plan.method in ("full", "freeze", "adapter")


def stage_run(plan: Plan, device: str = "cuda") -> StageRun:
    stage = plan.stage
    b = plan.batch_size
    rows = 2 * b if stage in PAIRED else b
    if stage == "rm":
        head: Head = "value"
    elif uses_fused_head(plan):
        head = "chunked" if stage in ("dpo", "kto", "grpo") else "fused"
    elif stage in ("orpo", "simpo") and plan.framework == "trl":
        head = "logps"
    else:
        head = "logits"
    reference = has_reference(plan)
    # forwards without gradients that run while the policy's activations are alive: the reference forward
    # (DPO: after the policy's, in `_compute_loss`), KTO's KL batch (the policy's and the reference's). With
    # LoRA the reference is the policy itself with the adapter off, which runs all the same.
    uses_reference = stage in REFERENCED and not plan.precompute_ref_log_probs
    if stage == "grpo":
        uses_reference = has_reference(plan)
    no_grad = rows if uses_reference or stage == "kto" else 0
    completion = completion_len(plan)
    # CUDA scores only labelled positions (trl/trainer/utils.py `_use_triton`); elsewhere every position
    scored = min(completion, plan.seq_len - 1) if device == "cuda" and stage in PREFERENCE | GENERATES \
        else plan.seq_len - 1
    generated = 0
    if stage in GENERATES and plan.vllm == "off":
        # trl GRPOConfig: generation_batch_size = per_device_train_batch_size x processes x steps_per_generation
        # (steps_per_generation defaults to gradient_accumulation_steps); each process generates its share
        generated = b * plan.grad_accum
    return StageRun(stage=stage, rows=rows, head=head, reference=reference,
                    reward_model=stage == "ppo" and plan.method in ("full", "freeze"), no_grad_rows=no_grad,
                    scored_per_row=max(1, scored), generated=generated, completion=completion,
                    logits_per_row=completion if stage == "grpo" else plan.seq_len)


def stage_spec(spec: ModelSpec, plan: Plan) -> ModelSpec:
    """The model the stage trains: TRL's reward model has a one-wide `score` head instead of the LM head.
    LLaMA-Factory's (trl's old AutoModelForCausalLMWithValueHead) keeps the LM head and adds a value head of
    hidden + 1 parameters, left out here."""
    if plan.stage == "rm" and plan.framework == "trl" and not spec.num_labels:
        return spec.model_copy(update={"num_labels": 1})
    return spec


def kv_cache_bytes(spec: ModelSpec, sequences: int, length: int, dtype_bytes: int) -> int:
    """`generate`'s KV cache (transformers DynamicCache) for sequences that end at `length` tokens: keys and
    values of every layer for every position but the last generated one, which is never fed back; a
    sliding-window layer keeps at most its window."""
    length -= 1
    total = 0
    for _, block in spec.iter_blocks():
        att = block.attention
        kept = min(length, att.sliding_window) if att.sliding_window else length
        total += att.num_kv_heads * (att.head_dim + att.v_head_dim) * kept
    return sequences * total * dtype_bytes


def stage_assumptions(plan: Plan, run: StageRun, reference: int) -> list[str]:
    """What the plan of a stage rests on, in words (`{field}` placeholders name settings)."""
    head = {
        "logits": "the loss up-casts logits to fp32 (transformers' ForCausalLMLoss); log_softmax keeps them for "
                  "backward",
        "fused": "fused linear cross-entropy: the logits are made chunk by chunk and never kept",
        "chunked": "TRL's fused LM head: per-token log-probs in 4096 x 32768 tiles, recomputed in backward; it keeps "
                   "the scored hidden states and two fp32 values per token",
        "value": "a reward model: a one-wide `score` head replaces the LM head (AutoModelForSequenceClassification), "
                 "so no vocabulary logits exist",
        "logps": "TRL's ORPO/CPO: logits kept in the compute dtype for per-token log-probs"
                 + ("; the NLL term on the chosen half keeps its log-softmax" if plan.nll_term else
                    "; no NLL term ({nll_term} off: cpo_alpha 0)"),
    }[run.head]
    out = [head]
    stage = plan.stage
    if stage in PAIRED:
        out.append(f"stage {stage}: chosen and rejected run through the model together: {run.rows} rows of "
                   f"{plan.seq_len} tokens per micro-batch of {plan.batch_size} {batch_unit(stage)}")
    if stage == "kto":
        out.append("stage kto: the main batch with gradients, the KL batch (mismatched completions) without")
    if stage in REFERENCED or (stage == "grpo" and run.reference):
        if run.reference:
            each = reference // (1 + int(run.reward_model))
            out.append(f"reference model: a frozen copy of the model, {fmt_gib(each)} per GPU"
                       + (" (and as much again for PPO's reward model)" if run.reward_model else ""))
        elif plan.precompute_ref_log_probs:
            out.append("reference log-probs precomputed before training: no reference model on the GPU")
        elif stage == "grpo":
            out.append("no reference model: TRL's GRPO default beta 0.0 needs none (set {reference_model} for a "
                       "KL term)")
        else:
            out.append("reference: the policy with its LoRA adapter disabled (no separate copy); its forward runs "
                       "without gradients")
    if stage in GENERATES:
        out.append(f"stage {stage}: the micro-batch counts {batch_unit(stage)}; {{seq_len}} {plan.seq_len} = prompt + "
                   f"{run.completion} completion tokens")
        if run.generated:
            out.append(f"generation with transformers' generate: {run.generated} sequences at once ({{batch_size}} "
                       "x {grad_accum}: TRL's generation_batch_size per GPU), KV cache for every position")
        elif plan.vllm == "colocate":
            out.append(f"vLLM colocate reserves {plan.vllm_gpu_memory_utilization:.0%} of each GPU for its "
                       "weights and KV cache, for the whole run")
        else:
            out.append("vLLM server: generation runs on other GPUs, not counted here")
    return out


def stage_warnings(plan: Plan, capacity: int | None) -> list[tuple[str, str, str]]:
    """What about a stage this plan does not model: (code, message, which way the estimate is off)."""
    out = []
    if plan.stage == "ppo":
        out.append(("ppo_value_head", "stage ppo: planned as the policy, its reference, the reward model (a frozen copy for full and "
                   "freeze tuning, an adapter on the policy for LoRA) and the rollouts' KV cache; the value head and "
                   "the rollout buffers are not modelled, so this understates memory", "understates"))
    if plan.vllm == "colocate" and capacity is None:
        out.append(("vllm_unsized", "vLLM colocate reserves a share of each GPU, which needs a GPU to size: give "
                    "{gpu} or {gpu_memory}; this total leaves it out", "understates"))
    return out
