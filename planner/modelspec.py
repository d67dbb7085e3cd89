"""`ModelSpec` and its parts: the architecture facts the planner needs, one decoder block at a time.

`planner.architectures` builds them from a config.json dict; `planner.spec` says where that dict comes
from (and re-exports these types, which is where the rest of the code imports them from).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class FrozenModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Linear(FrozenModel):
    """One `nn.Linear`-like module inside a block (also GPT-2's `Conv1D`): what LoRA can target."""

    path: str  # relative to the block, e.g. "self_attn.q_proj"
    in_features: int
    out_features: int
    bias: bool = False
    component: Literal["attention", "mlp", "shared_expert"] = "attention"

    @property
    def name(self) -> str:
        return self.path.rsplit(".", 1)[-1]

    @property
    def params(self) -> int:
        return self.in_features * self.out_features + (self.out_features if self.bias else 0)


NormKind = Literal["rms", "rms_gemma", "rms_olmo", "layer"]


class Norm(FrozenModel):
    """How a block normalises: the kind decides which fp32 copies autograd keeps."""

    kind: NormKind = "rms"
    bias: bool = False  # LayerNorm with a bias vector


class Attention(FrozenModel):
    kind: Literal["standard", "fused_qkv", "mla"] = "standard"
    num_heads: int
    num_kv_heads: int
    head_dim: int  # query/key head size (MLA: nope + rope)
    v_head_dim: int
    rope_dim: int  # rotary dims per head; 0 for learned absolute positions
    qk_norm: Literal["none", "per_head", "full"] = "none"
    logit_softcap: float | None = None
    sliding_window: int | None = None
    explicit_mask: bool = False  # the model always hands sdpa a mask tensor (no is_causal fast path)
    softmax_fp32: bool = True  # eager softmax up-casts to fp32 (Falcon and GPT-2 stay in the compute dtype)
    dropout: float = 0.0
    q_lora_rank: int | None = None  # MLA only
    kv_lora_rank: int | None = None  # MLA only


class MLP(FrozenModel):
    kind: Literal["gated", "plain", "moe"] = "gated"
    activation: Literal["silu", "gelu", "gelu_tanh", "gelu_new", "relu"] = "silu"
    intermediate_size: int  # dense MLP width, or each routed expert's width for MoE
    num_experts: int = 0
    top_k: int = 0
    router: Literal["softmax", "sigmoid"] = "softmax"
    shared_intermediate_size: int = 0
    shared_expert_gate: bool = False


class Block(FrozenModel):
    """One decoder block; identical consecutive blocks share one `BlockGroup`."""

    layout: Literal["pre", "sandwich", "post", "parallel"] = "pre"
    norm: Norm = Norm()
    num_norms: int = 2  # LayerNorm/RMSNorm modules of hidden size in the block
    attention: Attention
    mlp: MLP
    linears: tuple[Linear, ...]
    # Parameters that are not in `linears`, by component (router, experts, norms, qk_norm).
    other_params: dict[str, int] = Field(default_factory=dict)
    residual_dropout: float = 0.0

    @property
    def params(self) -> int:
        return sum(lin.params for lin in self.linears) + sum(self.other_params.values())


class BlockGroup(FrozenModel):
    start: int  # index of the first block in the group
    count: int
    block: Block


class ModelSpec(FrozenModel):
    name: str
    source: str  # where the config came from: a path, "preset:NAME" or "hub:ID"
    model_type: str
    architecture: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    max_position_embeddings: int | None = None
    learned_positions: int = 0  # GPT-2's wpe rows
    tie_word_embeddings: bool = False
    final_norm: Norm = Norm()
    final_logit_softcap: float | None = None
    embedding_dropout: float = 0.0
    blocks: tuple[BlockGroup, ...]
    stands_for: str | None = None  # for a size alias: the real model it stands for
    warnings: tuple[str, ...] = ()
    checkpoint_dtype: str | None = None

    def iter_blocks(self):
        """Yield (layer index, Block) for every decoder layer, in order."""
        for group in self.blocks:
            for i in range(group.count):
                yield group.start + i, group.block

    @property
    def first_block(self) -> Block:
        return self.blocks[0].block

    @property
    def is_moe(self) -> bool:
        return any(g.block.mlp.kind == "moe" for g in self.blocks)
