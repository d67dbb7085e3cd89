"""What to change when a plan does not fit: single changes ranked by memory saved."""

from __future__ import annotations

from typing import Any

from planner import liger
from planner.errors import FtplanError
from planner.fields import Vocabulary
from planner.findings import Change
from planner.fit import accum_step, max_batch_size, max_seq_len, shortest_seq
from planner.memory import Breakdown, estimate_memory
from planner.methods import block_training
from planner.params import ALL, ALL_LINEAR, CONV1D_MODEL_TYPES
from planner.plan import Plan
from planner.spec import ModelSpec
from planner.stages import has_reference, uses_fused_head
from planner.target import Machine
from planner.units import fmt_gib


def how(changes: dict[str, Any], vocabulary: Vocabulary) -> str:
    """planner.configs.fix.how, imported on first use: the config package costs ~100 ms of every start-up
    that plans (the TUI's first plan) and is needed only once a suggestion is worded."""
    from planner.configs.fix import how as worded

    return worded(changes, vocabulary)


# An 8-bit state rounds Adam's moments and offloading slows every step: worth suggesting only when the change
# takes at least this share off the per-GPU total (a QLoRA adapter's Adam state is ~1-3% of its run).
WORTH = 0.05


def _rerun(spec: ModelSpec, plan: Plan, changes: dict[str, Any], machine: Machine,
           base: int) -> tuple[int, Breakdown] | None:
    """(bytes saved per GPU against `base`, the changed estimate): the planner re-run with the changed Plan; None
    when the change is refused or saves nothing."""
    try:
        new = estimate_memory(spec, plan.with_(**changes), machine=machine)
    except FtplanError:
        return None
    return (base - new.total, new) if new.total < base else None


def single_changes(spec: ModelSpec, plan: Plan, capacity: int, machine: Machine) -> list[tuple[str, str, dict[str, Any]]]:
    """Every change worth trying on its own, as (title, why, settings); planner.path_to_fit combines them."""
    out: list[tuple[str, str, dict[str, Any]]] = []
    base = estimate_memory(spec, plan, machine=machine).total
    if not plan.gradient_checkpointing:
        out.append(("Enable gradient checkpointing",
                    "keeps one hidden state per layer and recomputes the rest in backward (~1/3 more compute)",
                    {"gradient_checkpointing": True}))
    if plan.attention == "eager":
        out.append(("Use flash attention",
                    "eager attention stores the full seq x seq score and probability matrices per head",
                    {"attention": "flash"}))
    # LLaMA-Factory's `all` finds no nn.Linear in Conv1D models (GPT-2): peft's all-linear does
    targets = {"lora_target": ALL_LINEAR} if spec.model_type in CONV1D_MODEL_TYPES and plan.lora_target == ALL else {}
    reference = has_reference(plan)
    if reference and plan.stage in ("dpo", "kto") and plan.reference_model is None:
        out.append(("Precompute the reference log-probs",
                    "the reference model scores the data once before training, so its weights leave the GPU",
                    {"precompute_ref_log_probs": True}))
    if plan.method in ("full", "freeze"):
        out.append(("Train LoRA adapters instead",
                    "frozen base weights need no gradients or optimizer state"
                    + ("; the reference becomes the policy with its adapter disabled, so its copy goes too"
                       if reference and plan.reference_model is None else ""), {"method": "lora", **targets}))
    if plan.method != "qlora":
        out.append(("Use QLoRA (4-bit base weights)",
                    "NF4 stores the frozen base in about 0.5 byte per parameter", {"method": "qlora", **targets}))
    fused = uses_fused_head(plan)
    if not fused and plan.stage in ("dpo", "kto", "grpo"):
        out.append(("Use TRL's fused LM head (TRL >= 1.0 installs it for DPO, KTO and GRPO)",
                    f"per-token log-probs are computed tile by tile: no {spec.vocab_size:,}-wide logits",
                    {"fused_loss": True}))
    elif not fused and plan.stage != "rm" and spec.model_type in liger.PATCHED:
        # Liger patches only the model types in its MODEL_TYPE_TO_APPLY_LIGER_FN (planner.liger.PATCHED)
        found = _rerun(spec, plan, {"fused_loss": True}, machine, base)
        if found:
            out.append((f"Liger's fused cross-entropy saves {fmt_gib(found[0])}",
                        f"the loss never materialises the {spec.vocab_size:,}-wide logits in fp32",
                        {"fused_loss": True}))
    if plan.stage in ("grpo", "ppo") and plan.vllm != "server":
        out.append(("Generate on a vLLM server (other GPUs)",
                    "`trl vllm-serve` on separate GPUs holds the generation; the training GPUs keep no KV cache",
                    {"vllm": "server"}))
    if plan.optimizer in ("adamw", "adamw-fused"):
        found = _rerun(spec, plan, {"optimizer": "adamw-8bit"}, machine, base)
        if found and found[0] >= WORTH * base:
            out.append((f"8-bit AdamW saves {fmt_gib(found[0])}",
                        "bitsandbytes AdamW8bit keeps Adam's two moments in 1 byte each (plus a scale per 256 "
                        "values) instead of the trainable weights' dtype (4 bytes each in fp32)", {"optimizer": "adamw-8bit"}))
    # the recipes that offload (torchtune, axolotl, TRL) pair it with checkpointing, which keeps far less to move and
    # costs no host RAM: without checkpointing, that is the suggestion to try first
    if plan.activation_offload == "off" and plan.gradient_checkpointing:
        found = _rerun(spec, plan, {"activation_offload": "saved"}, machine, base)
        if found and found[0] >= WORTH * base:
            moved = found[1].host_activations
            out.append((f"Activation offloading moves {fmt_gib(moved)} to host memory",
                        f"saved activations wait in pinned host memory until backward; needs {fmt_gib(moved)} "
                        f"of host RAM per GPU ({fmt_gib(moved * plan.per_node_gpus)} per node) and PCIe "
                        "bandwidth in every step", {"activation_offload": "saved"}))
    if plan.optimizer == "adamw":
        out.append(("Use fused AdamW",
                    "the foreach AdamW materialises sqrt(v) for every parameter during the step",
                    {"optimizer": "adamw-fused"}))
    if plan.precision == "bf16-mixed" and plan.method in ("full", "freeze"):
        out.append(("Train in pure bf16",
                    "no fp32 weights/gradients; but small updates can round away (watch for it in diagnose)",
                    {"precision": "bf16"}))
    if plan.method in ("lora", "qlora") and any(t.lora_params for t in block_training(spec, plan)):
        attention = sorted({lin.name for g in spec.blocks for lin in g.block.linears if lin.component == "attention"})
        out.append(("Target attention only with LoRA",
                    "peft wraps this model's fused MoE experts with ParamWrapper, which materialises W + BA "
                    "for every expert in every forward", {"lora_target": ",".join(attention)}))
    if plan.method != "qlora" and not plan.optimizer_in_backward:  # a fused step cannot shard gradients
        for gpus in (2, 4, 8, 16):
            if gpus > plan.gpus and estimate_memory(spec, plan.with_(gpus=gpus, zero=3), machine=machine).total <= capacity:
                out.append((f"Shard with ZeRO-3 / FSDP over {gpus} GPUs",
                            "weights, gradients and optimizer state are divided across the GPUs",
                            {"gpus": gpus, "zero": 3}))
                break
    if plan.zero >= 1 and not plan.offload_optimizer:
        out.append(("Offload the optimizer to CPU (ZeRO-Offload)",
                    "optimizer state and master weights live in host RAM; steps get slower",
                    {"offload_optimizer": True}))
    if plan.batch_size > 1:
        # any micro-batch will do here: the accumulation below restores whole GRPO prompt groups
        best = max(1, max_batch_size(spec, plan, capacity, limit=plan.batch_size, machine=machine,
                                     accepted_only=False))
        if best < plan.batch_size:
            accum = -(-plan.batch_size * plan.grad_accum // best)
            group = accum_step(plan.with_(batch_size=best))
            accum = -(-accum // group) * group
            out.append((f"Micro-batch {best} with {accum} accumulation steps",
                        f"keeps the global batch ({plan.global_batch} -> {best * accum * plan.gpus})",
                        {"batch_size": best, "grad_accum": accum}))
    longest = max_seq_len(spec, plan, capacity, limit=plan.seq_len, machine=machine)
    if 0 < longest < plan.seq_len:
        rounded = longest // 64 * 64
        rounded = rounded if rounded >= shortest_seq(plan) else longest
        out.append((f"Shorten sequences to {rounded} tokens",
                    "the sequence length bounds activation memory; longer examples are truncated",
                    {"seq_len": rounded}))
    return out


def suggest(spec: ModelSpec, plan: Plan, capacity: int, current_total: int, limit: int = 8,
            machine: Machine | None = None, vocabulary: Vocabulary = "cli") -> list[Change]:
    """Single changes that lower the per-GPU total, largest saving first, plus a combination that fits
    when no single change does."""
    machine = machine or Machine()
    found: list[Change] = []
    for title, why, changes in single_changes(spec, plan, capacity, machine):
        try:
            new_plan = plan.with_(**changes)
            total = estimate_memory(spec, new_plan, machine=machine).total
        except FtplanError:
            continue
        if total < current_total:
            found.append(Change(title=title, reason=why, changes=changes, how=how(changes, vocabulary),
                                current={k: getattr(plan, k) for k in changes}, new_total=total,
                                saved=current_total - total, fits=total <= capacity))
    found.sort(key=lambda s: s.saved, reverse=True)
    # Shorter sequences change what is trained on; when nothing else fits alone, stack the rest.
    keeps_data = [s for s in found if "seq_len" not in s.changes]
    if keeps_data and not any(s.fits for s in keeps_data):
        combo = _combine(spec, plan, capacity, keeps_data, machine, vocabulary)
        if combo:
            found.insert(0, combo)
    return found[:limit]


def _combine(spec: ModelSpec, plan: Plan, capacity: int, ranked: list[Change], machine: Machine,
             vocabulary: Vocabulary) -> Change | None:
    """Greedily stack the biggest savings until the plan fits."""
    changes: dict[str, Any] = {}
    titles: list[str] = []
    current = plan
    for suggestion in ranked:
        if any(k in changes for k in suggestion.changes):
            continue
        try:
            trial = current.with_(**suggestion.changes)
            total = estimate_memory(spec, trial, machine=machine).total
        except FtplanError:
            continue
        if total < estimate_memory(spec, current, machine=machine).total:
            current, changes = trial, {**changes, **suggestion.changes}
            titles.append(suggestion.title[:1].lower() + suggestion.title[1:])  # keeps QLoRA, GiB
            if total <= capacity:
                base = estimate_memory(spec, plan, machine=machine).total
                return Change(title="Combine: " + "; ".join(titles),
                              reason=f"no single change fits; together they need {fmt_gib(total)}",
                              changes=changes, how=how(changes, vocabulary),
                              current={k: getattr(plan, k) for k in changes}, new_total=total, saved=base - total,
                              fits=True)
    return None
