"""`ModelSpec` and its parts: the architecture facts the planner needs, one decoder block at a time.

`planner.architectures` builds them from a config.json dict; `planner.spec` says where that dict comes
from (and re-exports these types, which is where the rest of the code imports them from).
"""

from __future__ import annotations

import re
from functools import lru_cache
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


class Quantization(FrozenModel):
    """A pre-quantized checkpoint's `quantization_config`: how its frozen linear weights are stored.

    Read by `planner.architectures.read_quantization`; `planner.methods.checkpoint_weight_bytes` turns it into
    bytes. Modules matching `excluded` (transformers' `should_convert_module` rules: a prefix up to a module
    boundary, a regex, or a suffix of the full module name) stay in the compute dtype, as do the embeddings,
    the LM head, norms and routers.
    """

    method: Literal["gptq", "awq", "bitsandbytes", "fp8", "mxfp4"]
    bits: int  # stored bits per quantized weight
    group_size: int | None = None  # GPTQ/AWQ: input features per scale/zero group; None: one group per row
    block_size: tuple[int, int] | None = None  # FP8: (out, in) weights per fp32 scale; None: one per tensor
    double_quant: bool = False  # bitsandbytes 4-bit nested quantization of the absmax constants
    static_activation_scale: bool = False  # FP8 activation_scheme "static": one fp32 input scale per linear
    zero_point: bool = True  # GPTQ/AWQ store packed zero points (AWQ `zero_point: false` does not)
    excluded: tuple[str, ...] = ()  # modules_to_not_convert / ignored_layers / llm_int8_skip_modules
    dequantize: bool = False  # the config asks transformers to dequantize at load (FP8 / MXFP4 `dequantize`)

    @property
    def label(self) -> str:
        name = {"gptq": "GPTQ", "awq": "AWQ", "bitsandbytes": "bitsandbytes", "fp8": "FP8", "mxfp4": "MXFP4"}
        text = f"{name[self.method]} {self.bits}-bit"
        if self.group_size:
            text += f", group {self.group_size}"
        if self.block_size:
            text += f", {self.block_size[0]}x{self.block_size[1]} blocks"
        return text

    def converts(self, module: str) -> bool:
        """Whether transformers quantizes the module with this full name (e.g. "model.layers.3.mlp.up_proj");
        transformers/quantizers/quantizers_utils.py `should_convert_module`."""
        return not _exclusions(self.excluded)(module)

    def converted_layers(self, path: str, start: int, count: int) -> int:
        """How many of layers `start`.. `start + count - 1` have the module `path` (relative to the block)
        quantized: a group's answer at once, for exclusions that name single layers."""
        return _exclusions(self.excluded).converted(path, start, count)


_BOUNDARY = r"(?:(?<=\.)|(?=\.|$))"  # the key ends a module name or a dotted part of one
# a module name with no regex but `.`: compiles alone and inside an alternation, and backtracks at most linearly
PLAIN_MODULE = re.compile(r"[\w.-]*")


class _Exclusions:
    """Whether a module name matches one of `excluded` as transformers matches it: the key as a regex from the
    start of the name up to a module boundary (a key that is no valid regex is skipped), or as a literal suffix.

    Plans ask for every linear of every layer, again for each plan tried, and a checkpoint may list hundreds of
    modules: the regexes are compiled once, joined into one alternation (the same answer as trying each in turn,
    since the engine backtracks into the next branch), suffixes are looked up in a set and answers are kept."""

    def __init__(self, excluded: tuple[str, ...]):
        self.suffixes = frozenset(excluded)
        self.lengths = sorted({len(key) for key in self.suffixes} - {0})
        joined, alone = [], []
        for key in excluded:
            if PLAIN_MODULE.fullmatch(key):
                joined.append(key)
                continue
            try:  # a key valid only inside its own group ("a)|(b") or with a backreference is tried alone
                re.compile(f"(?:{key}){_BOUNDARY}")
            except re.error:
                continue
            alone.append(key)
        self.patterns = [re.compile(f"(?:{key}){_BOUNDARY}") for key in alone]
        if joined:
            self.patterns.append(re.compile("(?:" + "|".join(joined) + f"){_BOUNDARY}"))
        self.known: dict[str, bool] = {}
        self.counts: dict[tuple[str, int, int], int] = {}

    def __call__(self, module: str) -> bool:
        if module not in self.known:
            self.known[module] = ("" in self.suffixes
                                  or any(module[-n:] in self.suffixes for n in self.lengths if n <= len(module))
                                  or any(p.match(module) for p in self.patterns))
        return self.known[module]

    def converted(self, path: str, start: int, count: int) -> int:
        key = (path, start, count)
        if key not in self.counts:
            self.counts[key] = (count if not self.suffixes else
                                sum(not self(f"model.layers.{i}.{path}") for i in range(start, start + count)))
        return self.counts[key]


@lru_cache(maxsize=32)
def _exclusions(excluded: tuple[str, ...]) -> _Exclusions:
    return _Exclusions(excluded)


class ModelSpec(FrozenModel):
    name: str
    source: str  # where the config came from: a path, "preset: NAME", "HF cache: ID (PATH)" or "hub: ID"
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
    # transformers' `_supports_sdpa`: without it the default attention is eager (and an explicit sdpa is refused)
    sdpa: bool = True
    embedding_dropout: float = 0.0
    blocks: tuple[BlockGroup, ...]
    stands_for: str | None = None  # for a size alias: the real model it stands for
    warnings: tuple[str, ...] = ()
    checkpoint_dtype: str | None = None
    quantization: Quantization | None = None  # a pre-quantized checkpoint (config.json quantization_config)
    # a sequence-classification head of this width instead of the LM head: a reward model's `score`
    # (AutoModelForSequenceClassification, num_labels=1, no bias), which is never tied to the embeddings
    num_labels: int = 0

    @property
    def head_width(self) -> int:
        """The output head's width: the vocabulary, or a classification head's labels."""
        return self.num_labels or self.vocab_size

    @property
    def head_params(self) -> int:
        """Parameters of the output head itself; 0 when it is the embedding matrix (tied)."""
        if self.num_labels:
            return self.num_labels * self.hidden_size
        return 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size

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
