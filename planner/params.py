"""Exact parameter counts per component, from a `ModelSpec`.

Counts follow what `model.parameters()` yields in transformers: a tied LM head
shares the embedding matrix and is not counted twice.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from planner.memo import by_identity
from planner.spec import Block, Linear, ModelSpec


class ParamCounts(BaseModel):
    model_config = ConfigDict(frozen=True)  # one object per spec is shared (`count_params` is memoized)

    total: int
    embeddings: int  # token embeddings (+ learned positions)
    position_embeddings: int = 0
    attention: int
    mlp: int  # dense MLPs and shared experts
    experts: int  # routed experts (MoE)
    router: int
    norms: int  # all norm weights/biases, q/k norms included
    head: int  # 0 when tied to the embeddings
    per_layer: list[int]
    active_per_token: int  # parameters one token passes through (MoE: top-k experts only)


def _block_components(block: Block) -> dict[str, int]:
    out = {"attention": 0, "mlp": 0, "experts": 0, "router": 0, "norms": 0}
    for lin in block.linears:
        out["attention" if lin.component == "attention" else "mlp"] += lin.params
    other = block.other_params
    out["experts"] += other.get("experts", 0)
    out["router"] += other.get("router", 0)
    out["norms"] += other.get("norms", 0) + other.get("qk_norm", 0)
    return out


def _active(block: Block) -> int:
    mlp = block.mlp
    if mlp.kind != "moe" or not mlp.num_experts:
        return block.params
    per_expert = block.other_params.get("experts", 0) // mlp.num_experts
    return block.params - block.other_params.get("experts", 0) + mlp.top_k * per_expert


@by_identity(objects=1)  # the service, each estimate of a batch search and the time estimate count the same spec
def count_params(spec: ModelSpec) -> ParamCounts:
    d = spec.hidden_size
    embeddings = spec.vocab_size * d + spec.learned_positions * d
    head = spec.head_params
    final_norm = d * (2 if spec.final_norm.bias else 1)
    totals = {"attention": 0, "mlp": 0, "experts": 0, "router": 0, "norms": final_norm}
    per_layer: list[int] = []
    active = 0
    for group in spec.blocks:
        parts = _block_components(group.block)
        for key, value in parts.items():
            totals[key] += value * group.count
        per_layer += [group.block.params] * group.count
        active += _active(group.block) * group.count
    total = embeddings + head + sum(totals.values())
    return ParamCounts(
        total=total, embeddings=embeddings, head=head, position_embeddings=spec.learned_positions * d, per_layer=per_layer,
        active_per_token=active + final_norm + spec.head_width * d,  # the head always runs
        **totals,
    )


# ----------------------------------------------------------------- LoRA targets

ATTENTION_ALIASES = {"attention", "attn", "attention_only"}
# Two "every linear layer" targets, which differ on some models:
# - `all` is LLaMA-Factory's `lora_target: all`, its find_all_linear_modules
#   (src/llamafactory/model/model_utils/misc.py, read at hiyouga/LLaMA-Factory ff6d4d1): the last name of
#   every module whose *class name* contains "Linear" (not "Embedding"), lm_head excepted, handed to peft as a
#   list of names. transformers 5's fused MoE experts are 3-D parameters and its routers are not Linear
#   modules, so the list names neither (peft may still re-point a listed name to the experts:
#   methods.lora_targets); GPT-2's projections are `Conv1D` (transformers/models/gpt2/modeling_gpt2.py),
#   so for GPT-2 the list is empty and peft refuses it (NoMatchingPeftModuleError).
# - `all-linear` is peft's own shorthand (TRL's and the HF scripts' `lora_target_modules: all-linear`):
#   every nn.Linear and Conv1D but the output layer, plus, on transformers 5 MoE models, every name peft
#   re-points to the fused experts and the router (methods._PEFT_MOE_TARGETS).
ALL = "all"
ALL_LINEAR = "all-linear"
CONV1D_MODEL_TYPES = frozenset({"gpt2"})  # model types whose block projections are transformers' Conv1D


def target_names(target: str | list[str] | tuple[str, ...]) -> list[str]:
    """The module names of a `lora_target`: a comma list ("q_proj, v_proj") or a list of them."""
    parts = [target] if isinstance(target, str) else list(target)
    return [n.strip() for part in parts for n in part.split(",") if n.strip()]


def select_linears(block: Block, target: str | list[str] | tuple[str, ...]) -> list[Linear]:
    """The block's linears that LoRA wraps for a target given by names.

    `all-linear` = every linear layer in the block (the LM head is never inside a block);
    `attention` = the attention projections. Otherwise a comma list of module names, matched
    like peft matches `target_modules`: the full relative path, or its last components
    ("q_proj", "shared_expert.up_proj"). LLaMA-Factory's `all` depends on the model, not the
    block: expand it with `llamafactory_all` first.
    """
    names = target_names(target)
    if any(n.lower() == ALL_LINEAR for n in names):
        return list(block.linears)
    if any(n.lower() in ATTENTION_ALIASES for n in names):
        return [lin for lin in block.linears if lin.component == "attention"]
    return [lin for lin in block.linears
            if any(lin.path == n or lin.path.endswith("." + n) for n in names)]


def known_module_names(spec: ModelSpec) -> set[str]:
    return {lin.name for group in spec.blocks for lin in group.block.linears}


def llamafactory_all(spec: ModelSpec) -> list[str]:
    """The module names LLaMA-Factory's `lora_target: all` hands to peft (find_all_linear_modules).

    Every linear ftplan lists is an nn.Linear (or a subclass such as FalconLinear) in transformers,
    except GPT-2's Conv1D; routers and fused experts are not listed, as they are not Linear modules.
    """
    if spec.model_type in CONV1D_MODEL_TYPES:
        return []
    return sorted(known_module_names(spec))
