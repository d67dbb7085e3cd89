"""Full / freeze / LoRA / QLoRA: which parameters train, and in which dtype each is stored.

What the real stack does, as measured (see tests/planner/test_memory_truth.py):
- peft keeps LoRA A/B in fp32 even on a bf16 base (`autocast_adapter_dtype=True`);
- LLaMA-Factory loads the base in the compute dtype and, for mixed precision,
  up-casts only the trainable parameters to fp32 (they are then the optimizer's
  master copy, there is no second one);
- bitsandbytes quantizes `nn.Linear` modules only: embeddings, LM head, norms,
  routers and transformers 5's fused 3-D MoE expert tensors stay in the compute dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from planner import param_targets, peft_methods
from planner.errors import FtplanError
from planner.memo import by_identity
from planner.moe_quant import expert_tensors
from planner.params import (
    ALL,
    ALL_LINEAR,
    ATTENTION_ALIASES,
    CONV1D_MODEL_TYPES,
    ParamCounts,
    known_module_names,
    llamafactory_all,
    select_linears,
    target_names,
)
from planner.plan import Plan
from planner.spec import Block, BlockGroup, Linear, ModelSpec, Quantization

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "int64": 8, "int32": 4, "int8": 1, "uint8": 1, "bool": 1}

# bitsandbytes 4-bit (NF4/FP4): two weights per byte, one absmax per block of 64.
# Double quantization stores the absmax as uint8 with one fp32 absmax per 256 blocks
# (Dettmers et al. 2023, QLoRA, Sec. 3: 0.127 bits/param of constants instead of 0.5).
NF4_BLOCK = 64
NF4_DQ_BLOCK = 256


def quantized_bytes(numel: int, out_features: int, bits: int, double_quant: bool) -> int:
    """Bytes of one quantized linear weight, constants included."""
    if bits == 8:
        # LLM.int8(): int8 weights plus one fp32 scale per output row (SCB).
        return numel + 4 * out_features
    blocks = -(-numel // NF4_BLOCK)
    packed = -(-numel // 2)
    codebook = 16 * 4  # the NF4/FP4 code, fp32, stored with every weight's quant_state
    if not double_quant:
        return packed + 4 * blocks + codebook
    # uint8 absmax, its fp32 offset, and the nested state: fp32 absmax per 256 blocks + 256-entry code
    return packed + blocks + codebook + 4 + 4 * (-(-blocks // NF4_DQ_BLOCK)) + 256 * 4


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def checkpoint_weight_bytes(q: Quantization, in_features: int, out_features: int) -> int:
    """Bytes of one linear weight (out x in) as a pre-quantized checkpoint stores it, constants included.

    * GPTQ (gptqmodel/auto-gptq QuantLinear): qweight int32 (in*bits/32, out), qzeros int32
      (groups, out*bits/32), scales fp16 (groups, out), g_idx int32 (in,); groups = in / group_size (1 for
      group_size -1).
    * AWQ (GEMM layout): qweight int32 (in, out*bits/32), qzeros int32 (groups, out*bits/32) unless
      zero_point is false, scales fp16 (groups, out).
    * bitsandbytes: as `quantized_bytes` (NF4/FP4 with its absmax constants; LLM.int8 with an fp32 SCB row).
    * FP8 (transformers' FP8Linear, integrations/finegrained_fp8.py): weight float8_e4m3 (out, in), 1 byte each,
      weight_scale_inv fp32 (ceil(out/b0), ceil(in/b1)) for a weight_block_size (b0, b1), else one fp32 scalar;
      a static activation scheme adds one fp32 activation_scale.
    """
    numel = in_features * out_features
    if q.method in ("gptq", "awq"):
        groups = _cdiv(in_features, q.group_size) if q.group_size else 1
        packed_out = _cdiv(out_features * q.bits, 32) * 4  # one packed int32 row of out values
        if q.method == "gptq":
            qweight = _cdiv(in_features * q.bits, 32) * 4 * out_features
            return qweight + groups * packed_out + groups * out_features * 2 + 4 * in_features
        return in_features * packed_out + (groups * packed_out if q.zero_point else 0) + groups * out_features * 2
    if q.method == "bitsandbytes":
        return quantized_bytes(numel, out_features, q.bits, q.double_quant)
    if q.method == "fp8":
        scales = _cdiv(out_features, q.block_size[0]) * _cdiv(in_features, q.block_size[1]) if q.block_size else 1
        return numel + 4 * scales + (4 if q.static_activation_scale else 0)
    raise ValueError(f"no stored layout for {q.method}")  # mxfp4 is planned dequantized (base_quantization)


def fp8_experts_bytes(q: Quantization, block: Block, hidden: int) -> int:
    """transformers' FP8Experts: fused gate_up (E, 2i, d) and down (E, d, i) in float8, each with fp32 block scales
    (E, ceil(out/b0), ceil(in/b1)) (integrations/finegrained_fp8.py, `_make_expert_params`)."""
    e, i = block.mlp.num_experts, block.mlp.intermediate_size
    total = 0
    for out_f, in_f in ((2 * i, hidden), (hidden, i)):
        scales = _cdiv(out_f, q.block_size[0]) * _cdiv(in_f, q.block_size[1]) if q.block_size else 1
        total += e * (out_f * in_f + 4 * scales)
    return total


def base_quantization(spec: ModelSpec, plan: Plan) -> Quantization | None:
    """The checkpoint's own quantization the frozen base keeps in this plan; None: it loads in the compute dtype.

    transformers refuses to train a purely quantized model (trainer_utils.validate_quantization_for_training:
    "You cannot perform fine-tuning on purely quantized models"), so full/freeze need a format that dequantizes
    at load (FP8); MXFP4 is not trainable at all and is planned dequantized (Mxfp4Config(dequantize=True)).
    """
    q = spec.quantization
    if q is None or q.dequantize or q.method == "mxfp4":
        return None
    if plan.method in ("full", "freeze"):
        if q.method == "fp8":
            return None
        raise FtplanError(
            f"{plan.method} fine-tuning of a pre-quantized {q.label} checkpoint: transformers refuses to train "
            "quantized weights without adapters (\"You cannot perform fine-tuning on purely quantized models\"); "
            "use lora (adapters on the quantized base) or the unquantized model", field="method")
    return q


@dataclass(frozen=True)
class BlockTraining:
    """How one decoder block trains: all its weights, none, or LoRA on some linears / MoE parameters."""

    base_trainable: bool
    lora_paths: frozenset[str] = frozenset()
    lora_params: frozenset[str] = frozenset()  # "router", "gate_up", "down": peft ParamWrapper targets
    dora: bool = False  # the LoRA targets are DoRA's (a magnitude vector and the adapted weight's norm)
    ia3_paths: frozenset[str] = frozenset()  # linears IA3 scales at their output ...
    ia3_inputs: frozenset[str] = frozenset()  # ... or, the feed-forward ones, at their input
    oft_paths: frozenset[str] = frozenset()  # linears whose input OFT rotates
    adapter: bool = False  # Houlsby bottleneck adapters after the attention and the MLP

    @property
    def trains(self) -> bool:
        """Something in the block requires grad."""
        return self.base_trainable or self.adapter or bool(
            self.lora_paths or self.lora_params or self.ia3_paths or self.ia3_inputs or self.oft_paths)


# peft >= 0.18 on transformers 5 keeps old (v4) LoRA targets working on MoE models whose experts became
# fused 3-D parameters: the v4 names are re-pointed to those parameters (peft/utils/
# transformers_weight_conversion.py, `_MOE_TARGET_MODULE_MAPPING`, used through transformers'
# `_MODEL_TO_CONVERSION_PATTERN`). A name mapped this way stops targeting the nn.Linear modules of the
# same name (dense and shared-expert MLPs); peft's `all-linear` includes every mapped name, LLaMA-Factory's
# `all` only the mapped names some Linear module also has (DeepSeek-V3's shared-expert gate/up/down_proj).
_PEFT_MOE_TARGETS: dict[str, dict[str, str]] = {
    "mixtral": {"gate": "router", "w1": "gate_up", "w3": "gate_up", "w2": "down"},
    "qwen3_moe": {"gate": "router", "gate_proj": "gate_up", "up_proj": "gate_up", "down_proj": "down"},
    "deepseek_v3": {"gate": "router", "gate_proj": "gate_up", "up_proj": "gate_up", "down_proj": "down"},
}


def peft_all_linear(spec: ModelSpec) -> list[str]:
    """The module names peft's `all-linear` wraps in this model, as an explicit list (for configs such as
    LLaMA-Factory's, which hand peft a list and so never trigger peft's own expansion)."""
    return sorted(known_module_names(spec) | set(_PEFT_MOE_TARGETS.get(spec.model_type, {})))


def lora_targets(spec: ModelSpec, block: Block, plan: Plan) -> tuple[tuple[Linear, ...], frozenset[str]]:
    """The linears peft wraps in `block`, and the MoE parameters it wraps with ParamWrapper (with
    `GATE_UP_RANK_R` when the fused gate_up tensor gets rank r rather than peft's doubled rank)."""
    return _lora_targets(spec, block, plan.lora_target, plan.lora_target_parameters)


@by_identity(objects=2)  # the layout, the replay, the optimizer and the memory model all ask, block by block
def _lora_targets(spec: ModelSpec, block: Block, lora_target: str,
                  target_parameters: str) -> tuple[tuple[Linear, ...], frozenset[str]]:
    linears, params = _resolve_lora_targets(spec, block, lora_target)
    direct = param_targets.wrapped(target_parameters)
    if block.mlp.kind != "moe" or not direct:  # peft wraps what matches (check_lora_target: something must)
        return tuple(linears), params
    # a tensor both lists reach is wrapped once, with peft's rank_pattern for the re-pointed v4 names
    single = {GATE_UP_RANK_R} if "gate_up" in direct - params else set()
    return tuple(linears), params | direct | single


def _resolve_lora_targets(spec: ModelSpec, block: Block, lora_target: str) -> tuple[list[Linear], frozenset[str]]:
    mapping = _PEFT_MOE_TARGETS.get(spec.model_type)
    names = target_names(lora_target)
    lowered = {n.lower() for n in names}
    if lowered & ATTENTION_ALIASES:
        return select_linears(block, names), frozenset()
    if ALL_LINEAR in lowered:
        if not mapping:
            return select_linears(block, names), frozenset()
        names = sorted(known_module_names(spec) | set(mapping))
    elif ALL in lowered:
        names = llamafactory_all(spec)
    if not mapping:
        return select_linears(block, names), frozenset()
    mapped = [n for n in names if n.rsplit(".", 1)[-1] in mapping]
    params = {mapping[n.rsplit(".", 1)[-1]] for n in mapped}
    if "gate_up" in params:
        parts = {k for k, v in mapping.items() if v == "gate_up"}
        given = {n.rsplit(".", 1)[-1] for n in mapped} & parts
        if given != parts:
            raise FtplanError(
                f"{', '.join(sorted(given))} is fused with {', '.join(sorted(parts - given))} "
                f"in transformers 5's {spec.model_type} experts; target both or neither (peft requires it)",
                field="lora_target",
            )
    modules = [n for n in names if n not in mapped]
    linears = select_linears(block, modules) if modules else []
    return linears, frozenset(params) if block.mlp.kind == "moe" else frozenset()


@dataclass(frozen=True)
class WrappedTensor:
    """One MoE tensor peft wraps with ParamWrapper, as (experts, out, in) with the LoRA rank it gets."""

    experts: int  # 1 for the router's 2-D (E, d) weight
    out_features: int
    in_features: int
    rank: int
    active: int  # experts one token multiplies through (top-k; the router's one weight)

    @property
    def numel(self) -> int:
        return self.experts * self.out_features * self.in_features

    @property
    def adapter_params(self) -> int:
        return self.experts * self.rank * (self.in_features + self.out_features)


# marks, among a block's ParamWrapper targets, a fused gate_up tensor named in target_parameters only: no
# rank_pattern reaches it, so it keeps rank r (planner.param_targets)
GATE_UP_RANK_R = "gate_up:r"


def wrapped_tensors(block: Block, hidden: int, params: frozenset[str], rank: int) -> list[WrappedTensor]:
    """The MoE tensors peft wraps in `block` (ParamWrapper).

    A 3-D expert tensor (E, out, in) gets A: (E*r, in) and B: (out, E*r) (`update_layer`); the fused gate_up
    tensor gets twice the rank when peft re-points v4's w1+w3 to it (the rank_pattern it writes), r when
    target_parameters names it (`GATE_UP_RANK_R`); the router (E, d) gets A: (r, d), B: (E, r).
    """
    mlp = block.mlp
    e, i, k = mlp.num_experts, mlp.intermediate_size, mlp.top_k
    gate_up_rank = rank if GATE_UP_RANK_R in params else 2 * rank
    table = {"router": WrappedTensor(1, e, hidden, rank, 1),
             "gate_up": WrappedTensor(e, 2 * i, hidden, gate_up_rank, k),
             "down": WrappedTensor(e, hidden, i, rank, k)}
    return [table[p] for p in sorted(params) if p in table]


class ParamGroup(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: str
    params: int
    dtype: str  # fp32 | bf16 | fp16 | nf4 | int8
    nbytes: int
    trainable: bool


class TrainingLayout(BaseModel):
    model_config = ConfigDict(frozen=True)  # shared: `layout` returns one object per spec and plan shape
    method: str
    trainable_params: int
    adapter_params: int = 0
    lora_modules: int = 0
    trainable_layers: list[int] = []
    embeddings_trainable: bool = False
    head_trainable: bool = False
    groups: list[ParamGroup]
    notes: list[str] = []
    checkpoint_quantized: bool = False  # the frozen base keeps a pre-quantized checkpoint's format

    @property
    def weight_bytes(self) -> int:
        return sum(g.nbytes for g in self.groups)

    def trainable_bytes_by_dtype(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for g in self.groups:
            if g.trainable:
                out[g.dtype] = out.get(g.dtype, 0) + g.params
        return out


def trainable_layer_indices(spec: ModelSpec, plan: Plan) -> list[int]:
    n = plan.freeze_trainable_layers
    if abs(n) > spec.num_layers:
        raise FtplanError(f"{n} asks for more layers than the model has ({spec.num_layers})",
                          field="freeze_trainable_layers")
    return list(range(spec.num_layers - n, spec.num_layers)) if n > 0 else list(range(-n))


def block_training(spec: ModelSpec, plan: Plan) -> tuple[BlockTraining, ...]:
    """One `BlockTraining` per decoder layer: one tuple per spec and shape-free plan, which the activation replay's
    memo (planner.memory) keys on."""
    return _block_training(spec, plan.shape_free())


@by_identity(objects=1)
def _block_training(spec: ModelSpec, plan: Plan) -> tuple[BlockTraining, ...]:
    if plan.method == "full":
        return (BlockTraining(True),) * spec.num_layers
    if plan.method == "freeze":
        chosen = set(trainable_layer_indices(spec, plan))
        trained, frozen = BlockTraining(True), BlockTraining(False)  # shared: the replay compares them per layer
        return tuple(trained if i in chosen else frozen for i in range(spec.num_layers))
    out: list[BlockTraining] = []
    for group in spec.blocks:  # identical blocks train identically: resolve targets once per group
        out += [_peft_block_training(spec, group.block, plan)] * group.count
    return tuple(out)


def _lora_group_targets(spec: ModelSpec, block: Block, plan: Plan) -> tuple[tuple[Linear, ...], frozenset[str]]:
    """`lora_targets`, refusing DoRA where peft does: on transformers 5's fused MoE expert parameters."""
    linears, params = lora_targets(spec, block, plan)
    if params and plan.use_dora:
        raise FtplanError("DoRA cannot adapt transformers 5's fused MoE expert parameters (peft: \"lora."
                          "ParamWrapper does not work with use_dora=True\"); target the attention projections, "
                          "or drop DoRA", field="use_dora")
    return linears, params


def _peft_block_training(spec: ModelSpec, block: Block, plan: Plan) -> BlockTraining:
    if plan.lora_family:
        linears, params = _lora_group_targets(spec, block, plan)
        return BlockTraining(False, frozenset(lin.path for lin in linears), params, dora=plan.use_dora)
    if plan.method == "ia3":
        targets = peft_methods.ia3_targets(spec, block, plan)
        return BlockTraining(False, ia3_paths=frozenset(lin.path for lin, ff in targets if not ff),
                             ia3_inputs=frozenset(lin.path for lin, ff in targets if ff))
    if plan.method == "oft":
        return BlockTraining(False, oft_paths=frozenset(lin.path for lin in _oft_targets(spec, block, plan)))
    return BlockTraining(False, adapter=plan.method == "adapter")  # prompt learning adds nothing to a block


def _oft_targets(spec: ModelSpec, block: Block, plan: Plan) -> list[Linear]:
    """OFT's targets (LLaMA-Factory's oft_target, `all` by default): nn.Linear modules only. peft's OFT wraps no
    3-D MoE expert parameter (it has no ParamWrapper) and refuses GPT-2's Conv1D projections."""
    if spec.model_type in CONV1D_MODEL_TYPES:
        raise FtplanError(f"peft's OFT supports only torch.nn.Linear and Conv2d; {spec.model_type}'s projections "
                          "are Conv1D: use lora or ia3", field="method")
    names = target_names(plan.lora_target)
    if ALL in {n.lower() for n in names}:
        names = llamafactory_all(spec)
    return select_linears(block, names)


def check_lora_target(spec: ModelSpec, plan: Plan) -> None:
    if plan.lora_family:
        found = any(any(lora_targets(spec, g.block, plan)) for g in spec.blocks)
    elif plan.method == "oft":
        found = any(_oft_targets(spec, g.block, plan) for g in spec.blocks)
    else:
        return
    if not found:
        names = sorted({lin.name for g in spec.blocks for lin in g.block.linears})
        if plan.lora_target_parameters:  # peft refuses an adapter that wraps nothing
            raise FtplanError(f"{plan.lora_target_parameters} names MoE parameters, but {spec.model_type} has no "
                              "MoE layer and {lora_target} matches no linear layer; name linears there "
                              f"({', '.join(names)})", field="lora_target_parameters")
        if ALL in {n.lower() for n in target_names(plan.lora_target)} and spec.model_type in CONV1D_MODEL_TYPES:
            # LLaMA-Factory's find_all_linear_modules returns [] and peft refuses the empty target list
            raise FtplanError(
                f"all finds no module in {spec.model_type}: LLaMA-Factory's `all` takes only modules whose class "
                f"is a Linear, and {spec.model_type}'s are Conv1D (peft refuses the empty list); name them "
                f"({', '.join(names)}) or use all-linear (peft's, which includes Conv1D)", field="lora_target",
            )
        raise FtplanError(
            f"{plan.lora_target} matches no linear layer of {spec.model_type}; "
            f"use all, all-linear, attention, or names from: {', '.join(names)}", field="lora_target",
        )


def param_dtype(plan: Plan, trainable: bool) -> str:
    """Storage dtype of a (non-quantized) parameter."""
    if not trainable:
        return plan.base_dtype
    if plan.precision in ("bf16", "fp16"):  # pure 16-bit: trained as loaded
        return plan.compute_dtype
    if plan.mixed and plan.zero > 0:
        # DeepSpeed mixed precision: compute-dtype weights, fp32 master in the optimizer.
        return plan.compute_dtype
    return "fp32"


def keeps_master_copy(plan: Plan) -> bool:
    """A separate fp32 master copy exists only where weights train in 16 bits under ZeRO."""
    return plan.mixed and plan.zero > 0


def adapter_dtype(plan: Plan) -> str:
    return plan.compute_dtype if keeps_master_copy(plan) else "fp32"


def layout(spec: ModelSpec, counts: ParamCounts, plan: Plan) -> TrainingLayout:
    """Which parameters train and how each is stored. It does not depend on the micro-batch's shape, so a batch or
    length search (and the service, then the memory model) gets one object per spec and shape-free plan."""
    return _layout(spec, counts, plan.shape_free())


@by_identity(objects=2)
def _layout(spec: ModelSpec, counts: ParamCounts, plan: Plan) -> TrainingLayout:
    check_lora_target(spec, plan)
    groups: list[ParamGroup] = []
    notes: list[str] = []

    def add(name: str, params: int, trainable: bool, dtype: str | None = None, nbytes: int | None = None):
        if params <= 0:
            return
        dtype = dtype or param_dtype(plan, trainable)
        nbytes = params * DTYPE_BYTES[dtype] if nbytes is None else nbytes
        groups.append(ParamGroup(name=name, params=params, dtype=dtype, nbytes=nbytes, trainable=trainable))

    quant = spec.quantization
    # base_quantization refuses full/freeze on formats that cannot train without adapters
    if quant is not None and base_quantization(spec, plan) is None and plan.method != "qlora":
        notes.append(f"pre-quantized checkpoint ({quant.label}): planned dequantized to the compute dtype at load")

    if plan.method == "full":
        add("all parameters", counts.total, True)
        return TrainingLayout(method="full", trainable_params=counts.total, groups=groups,
                              embeddings_trainable=True, head_trainable=True, notes=notes)

    if plan.method == "freeze":
        chosen = trainable_layer_indices(spec, plan)
        trainable = sum(counts.per_layer[i] for i in chosen)
        add("trainable layers", trainable, True)
        add("frozen layers, embeddings, head", counts.total - trainable, False)
        notes.append(f"freeze: layers {chosen[0]}..{chosen[-1]} train (LLaMA-Factory freeze_trainable_layers="
                     f"{plan.freeze_trainable_layers}); embeddings and LM head are frozen")
        return TrainingLayout(method="freeze", trainable_params=trainable, trainable_layers=chosen,
                              groups=groups, notes=notes)

    if not plan.lora_family:
        return _peft_layout(spec, counts, plan, add, groups, notes)

    # LoRA / QLoRA
    ckpt = base_quantization(spec, plan)
    adapters = modules = quant_params = quant_bytes = 0
    for group in spec.blocks:
        block, n = group.block, group.count
        linears, params = _lora_group_targets(spec, block, plan)
        adapters += n * sum(plan.lora_rank * (lin.in_features + lin.out_features) for lin in linears)
        if plan.use_dora:
            adapters += n * peft_methods.dora_magnitudes(linears)
        wrapped = wrapped_tensors(block, spec.hidden_size, params, plan.lora_rank)
        adapters += n * sum(t.adapter_params for t in wrapped)
        modules += n * (len(linears) + len(wrapped))
        if ckpt is not None:  # the checkpoint's own format, module by module (its exclusions name layers)
            qp, qb = _checkpoint_group(spec, ckpt, group)
            quant_params += qp
            quant_bytes += qb
        elif plan.method == "qlora":  # every linear's weight is quantized; biases stay in the compute dtype
            for lin in block.linears:
                w = lin.in_features * lin.out_features
                quant_params += n * w
                quant_bytes += n * quantized_bytes(w, lin.out_features, plan.base_bits, plan.double_quant)
            for numel, rows in expert_tensors(block, spec.hidden_size) if plan.quantize_experts else ():
                quant_params += n * numel
                quant_bytes += n * quantized_bytes(numel, rows, plan.base_bits, plan.double_quant)
    if ckpt is not None:
        add(f"quantized linears (checkpoint's {ckpt.label})", quant_params, False,
            dtype=f"{ckpt.method}-{ckpt.bits}bit", nbytes=quant_bytes)
        add("embeddings, head, norms, biases, unquantized modules", counts.total - quant_params, False)
        notes.append(f"pre-quantized checkpoint: the frozen base keeps the checkpoint's {ckpt.label} weights "
                     "(constants included); LoRA adapters train on top of it (QLoRA-like)"
                     + (", and the plan's own quantization is not applied (the checkpoint's wins)"
                        if plan.method == "qlora" else ""))
    elif plan.method == "qlora":
        qname = f"{plan.base_bits}-bit" + (" NF4" if plan.base_bits == 4 else " LLM.int8")
        if plan.base_bits == 4 and plan.double_quant:
            qname += " + double quant"
        add(f"quantized linears ({qname})", quant_params, False,
            dtype="nf4" if plan.base_bits == 4 else "int8", nbytes=quant_bytes)
        add("embeddings, head, norms, biases (not quantized)", counts.total - quant_params, False)
        if counts.experts and plan.quantize_experts:
            notes.append("qlora: the fused 3-D MoE expert tensors are quantized as they load (axolotl's "
                         "quantize_moe_experts), one bitsandbytes quantization state per tensor")
        elif counts.experts:
            notes.append("qlora: transformers 5 stores MoE experts as fused 3-D tensors that bitsandbytes "
                         "does not quantize; they stay in the compute dtype")
    else:
        add("frozen base model", counts.total, False)
    if plan.lora_target_parameters:
        moe = any(g.block.mlp.kind == "moe" for g in spec.blocks)
        notes.append(f"lora_target_parameters {plan.lora_target_parameters}: " + (
            "peft's ParamWrapper gives each wrapped tensor rank-r adapters per expert and materialises W + BA "
            "every forward, saved for backward" if moe else
            f"{spec.model_type} has no MoE parameter; peft warns and wraps none"))
    dtype = adapter_dtype(plan)
    if plan.use_dora:
        notes.append("DoRA: a magnitude vector per target, and every step computes each adapted weight W + BA "
                     "and its norm (a weight-sized tensor per target in forward; peft's tuners/lora/dora.py)")
    add("DoRA adapters" if plan.use_dora else "LoRA adapters", adapters, True, dtype=dtype)
    if dtype == "fp32" and plan.compute_dtype != "fp32":
        notes.append("lora: peft keeps adapter weights in fp32 (autocast_adapter_dtype=True) and casts "
                     "each adapter's input to fp32")
    head = 0
    if spec.num_labels:
        # peft's SEQ_CLS task puts the classification head in modules_to_save: a trainable copy in the model's
        # dtype beside the frozen original (peft/utils/constants.py, `ModulesToSaveWrapper`)
        head = spec.head_params
        add("classification head copy (peft modules_to_save)", head, True, dtype=plan.base_dtype)
    return TrainingLayout(method=plan.method, trainable_params=adapters + head, adapter_params=adapters,
                          lora_modules=modules, groups=groups, notes=notes, checkpoint_quantized=ckpt is not None)


PEFT_NAMES = {"prefix": "prefix (virtual keys and values)", "prompt": "soft prompt", "ptuning": "prompt encoder",
              "ia3": "IA3 vectors", "oft": "OFT rotations", "adapter": "bottleneck adapters"}


def _peft_layout(spec: ModelSpec, counts: ParamCounts, plan: Plan, add, groups: list[ParamGroup],
                 notes: list[str]) -> TrainingLayout:
    """Every method but LoRA on a frozen base: the base in the compute dtype, the additions trainable."""
    peft_methods.check_supported(spec, plan)
    if spec.quantization is not None and base_quantization(spec, plan) is not None:
        raise FtplanError(f"{plan.method} on a pre-quantized {spec.quantization.label} checkpoint is not planned; "
                          "use lora on it, or the unquantized model", field="method")
    add("frozen base model", counts.total, False)
    trainable = sum(n * c for n, c in peft_tensor_sizes(spec, plan))
    modules = 1 if plan.prompt_learning else sum(
        g.count * (2 if plan.method == "adapter" else len(_peft_block_sizes(spec, g.block, plan))) for g in spec.blocks)
    add(PEFT_NAMES[plan.method], trainable, True, dtype=adapter_dtype(plan))
    notes.append(peft_methods.describe(spec, plan))
    return TrainingLayout(method=plan.method, trainable_params=trainable, adapter_params=trainable,
                          lora_modules=modules, groups=groups, notes=notes)


def _peft_block_sizes(spec: ModelSpec, block: Block, plan: Plan) -> list[tuple[int, int]]:
    oft = _oft_targets(spec, block, plan) if plan.method == "oft" else []
    return peft_methods.block_tensors(spec, block, plan, oft)


def peft_tensor_sizes(spec: ModelSpec, plan: Plan) -> list[tuple[int, int]]:
    """(numel, count) of every trainable tensor a non-LoRA PEFT method adds; the prompt encoders' embedding first."""
    if plan.prompt_learning:
        return list(peft_methods.prompt_tensors(spec, plan).sizes)
    return [(n, c * g.count) for g in spec.blocks for n, c in _peft_block_sizes(spec, g.block, plan)]


def _checkpoint_group(spec: ModelSpec, q: Quantization, group: BlockGroup) -> tuple[int, int]:
    """(params, bytes) of a group's weights the checkpoint stores quantized: nn.Linear weights (biases stay in the
    compute dtype), and for FP8 the fused MoE experts (transformers' FP8Experts); each module counted in the
    layers whose name the checkpoint's exclusions do not match."""
    block, params, nbytes = group.block, 0, 0
    for lin in block.linears:
        n = q.converted_layers(lin.path, group.start, group.count)
        params += n * lin.in_features * lin.out_features
        nbytes += n * checkpoint_weight_bytes(q, lin.in_features, lin.out_features)
    experts = block.other_params.get("experts", 0)
    if q.method == "fp8" and experts:
        n = q.converted_layers("mlp.experts", group.start, group.count)
        params += n * experts
        nbytes += n * fp8_experts_bytes(q, block, spec.hidden_size)
    return params, nbytes
