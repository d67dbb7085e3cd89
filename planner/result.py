"""The result of planning one run: one pydantic schema for every front end.

`Estimate.model_dump(mode="json")` is `ftplan estimate --json`; the TUI and preflight read
the same object.
"""

from __future__ import annotations

from pydantic import BaseModel

from planner.findings import Change, Finding
from planner.fit import FitReport
from planner.flops import TimeEstimate
from planner.memory import Breakdown
from planner.methods import TrainingLayout
from planner.params import ParamCounts
from planner.plan import Plan
from planner.spec import ModelSpec
from planner.target import Machine


class ModelSummary(BaseModel):
    name: str
    source: str
    stands_for: str | None
    model_type: str
    architecture: str
    layers: int
    hidden_size: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    context: int | None
    tied_embeddings: bool
    experts: str | None  # "8 experts, top-2" for MoE

    @classmethod
    def of(cls, spec: ModelSpec) -> ModelSummary:
        att = spec.first_block.attention
        moe = next((g.block.mlp for g in spec.blocks if g.block.mlp.kind == "moe"), None)
        dense = next((g.block.mlp for g in spec.blocks if g.block.mlp.kind != "moe"), None)
        return cls(
            name=spec.name, source=spec.source, stands_for=spec.stands_for, model_type=spec.model_type,
            architecture=spec.architecture, layers=spec.num_layers, hidden_size=spec.hidden_size,
            heads=att.num_heads, kv_heads=att.num_kv_heads, head_dim=att.head_dim,
            intermediate_size=(dense or spec.first_block.mlp).intermediate_size, vocab_size=spec.vocab_size,
            context=spec.max_position_embeddings, tied_embeddings=spec.tie_word_embeddings,
            experts=(f"{moe.num_experts} experts, top-{moe.top_k}, width {moe.intermediate_size}"
                     + (f", shared {moe.shared_intermediate_size}" if moe.shared_intermediate_size else ""))
            if moe else None,
        )


class ParamSummary(BaseModel):
    total: int
    trainable: int
    trainable_fraction: float
    adapter: int
    lora_modules: int
    embeddings: int
    attention: int
    mlp: int
    experts: int
    router: int
    norms: int
    head: int
    active_per_token: int

    @classmethod
    def of(cls, counts: ParamCounts, train: TrainingLayout) -> ParamSummary:
        return cls(
            total=counts.total, trainable=train.trainable_params,
            trainable_fraction=train.trainable_params / counts.total if counts.total else 0.0,
            adapter=train.adapter_params, lora_modules=train.lora_modules, embeddings=counts.embeddings,
            attention=counts.attention, mlp=counts.mlp, experts=counts.experts, router=counts.router,
            norms=counts.norms, head=counts.head, active_per_token=counts.active_per_token,
        )


class Estimate(BaseModel):
    model: ModelSummary
    plan: Plan
    machine: Machine  # the facts the overhead used (CUDA context, fragmentation, device)
    params: ParamSummary
    memory: Breakdown
    fit: FitReport | None = None
    suggestions: list[Change] = []
    time: TimeEstimate | None = None
    assumptions: list[str]
    warnings: list[Finding]
