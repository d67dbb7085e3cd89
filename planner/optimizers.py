"""What each optimizer keeps per trainable parameter (its state) and allocates in its step (its temporaries).

Each formula is the implementation's own allocation, cited where it is made; those that run on a CPU
(torch's AdamW/SGD/Muon, transformers' Adafactor, bitsandbytes' AdamW/Lion in 8 and 32 bits, paged or not,
torchao 0.18's AdamW8bit/4bit, galore-torch 1.0, apollo-torch 1.0.3, adam-mini 1.1.1, lomo-optim 0.1.1) are
checked against the storages the optimizer keeps after real steps (tests/planner/test_optimizer_truth.py,
tests/planner/test_optimizers_more_truth.py, tests/planner/test_optimizer_packages_truth.py); BAdam's is read
from its source. `planner.memory` places the bytes in the phases.
"""

from __future__ import annotations

from typing import NamedTuple

from planner.memo import by_identity
from planner.methods import (
    DTYPE_BYTES,
    TrainingLayout,
    keeps_master_copy,
    lora_targets,
    param_dtype,
    peft_tensor_sizes,
    wrapped_tensors,
)
from planner.plan import Plan
from planner.spec import Block, ModelSpec

BNB_8BIT = ("adamw-8bit", "paged-adamw-8bit", "lion-8bit", "paged-lion-8bit")
LOW_RANK = ("galore-adamw", "galore-adamw-8bit", "galore-adafactor", "apollo-adamw")
# the update runs inside backward, one parameter at a time (LOMO's hooks), whatever optimizer_in_backward says
FUSED_IN_BACKWARD = ("lomo", "adalomo")


def steps_in_backward(plan: Plan) -> bool:
    """Whether each gradient is stepped and freed as backward produces it (only one exists at a time)."""
    return plan.optimizer_in_backward or plan.optimizer in FUSED_IN_BACKWARD


class Tensor(NamedTuple):
    """`count` trainable parameter tensors of `numel` elements each.

    `rows`: the first dimension of a 2-D tensor (0 for a vector or a 3-D tensor); `linear`: an `nn.Linear`
    weight (LoRA's A and B are); `embedding`: an `nn.Embedding` weight; `head`: the LM head; `path`: a block
    linear's module path (Adam-mini picks its rule by name); `bias`: a bias vector."""

    numel: int
    count: int = 1
    embedding: bool = False
    rows: int = 0
    linear: bool = False
    head: bool = False
    path: str = ""
    bias: bool = False

    @property
    def cols(self) -> int:
        return self.numel // self.rows if self.rows else 0

    @property
    def matrix(self) -> bool:
        return self.rows > 0


def _split(total: int, sizes: list[int]) -> list[int]:
    """`sizes` when they add up to `total` (the spec keeps only the sum), else one tensor of `total`."""
    return sizes if sum(sizes) == total else [total]


def _block_tensors(spec: ModelSpec, block: Block, layers: int) -> list[Tensor]:
    """Every parameter tensor of `layers` identical decoder blocks, as transformers creates them."""
    d, att, other = spec.hidden_size, block.attention, block.other_params
    out: list[Tensor] = []
    for lin in block.linears:
        out.append(Tensor(lin.in_features * lin.out_features, layers, rows=lin.out_features, linear=True,
                          path=lin.path))
        if lin.bias:
            out.append(Tensor(lin.out_features, layers, bias=True))
    vectors: list[int] = []
    norms = other.get("norms", 0)
    if norms % d == 0:  # every block norm's weight and bias is d wide; with biases, half the vectors are biases
        biases = norms // d // 2 if block.norm.bias else 0
        out += [Tensor(d, layers * biases, bias=True)] if biases else []
        vectors += [d] * (norms // d - biases)
    else:
        vectors.append(norms)
    if other.get("qk_norm"):
        if att.kind == "mla":  # q_a_layernorm (q_lora_rank), kv_a_layernorm (kv_lora_rank)
            parts = [r for r in (att.q_lora_rank, att.kv_lora_rank) if r]
        elif att.qk_norm == "per_head":
            parts = [att.head_dim, att.head_dim]
        else:
            parts = [att.num_heads * att.head_dim, att.num_kv_heads * att.head_dim]
        vectors += _split(other["qk_norm"], parts)
    out += [Tensor(n, layers) for n in vectors if n]
    if other.get("router"):  # one (experts, hidden) gate weight
        out.append(Tensor(other["router"], layers, rows=block.mlp.num_experts or 0))
    if other.get("experts"):  # transformers 5's fused 3-D experts: gate_up (E, 2i, d) and down (E, d, i)
        e, i = block.mlp.num_experts, block.mlp.intermediate_size
        out += [Tensor(n, layers) for n in _split(other["experts"], [e * 2 * i * d, e * d * i])]
    out += [Tensor(n, layers) for key, n in other.items() if key not in ("norms", "qk_norm", "router", "experts")
            and n]
    return out


def trainable_tensors(spec: ModelSpec, train: TrainingLayout, plan: Plan) -> tuple[Tensor, ...]:
    """Every trainable parameter tensor, by size: what a per-tensor optimizer (bitsandbytes) allocates for."""
    # the optimizer's state, its step and ZeRO-3's sub-group all ask for the same tensors
    return _trainable_tensors(spec, train, plan.shape_free())


@by_identity(objects=2)
def _trainable_tensors(spec: ModelSpec, train: TrainingLayout, plan: Plan) -> tuple[Tensor, ...]:
    if plan.peft and not plan.lora_family:  # the prompt encoders' first tensor is an nn.Embedding
        sizes = peft_tensor_sizes(spec, plan)
        return tuple(Tensor(n, c, embedding=plan.prompt_learning and k == 0) for k, (n, c) in enumerate(sizes))
    d, out = spec.hidden_size, []
    if train.method in ("lora", "qlora"):
        r = plan.lora_rank
        for group in spec.blocks:
            linears, wrapped = lora_targets(spec, group.block, plan)
            for lin in linears:  # lora_A (r, in), lora_B (out, r): nn.Linear weights
                out += [Tensor(r * lin.in_features, group.count, rows=r, linear=True),
                        Tensor(lin.out_features * r, group.count, rows=lin.out_features, linear=True)]
                if plan.use_dora:  # DoRA's magnitude vector
                    out.append(Tensor(lin.out_features, group.count))
            for w in wrapped_tensors(group.block, d, wrapped, r):  # ParamWrapper's lora_A (E*r, in), lora_B (out, E*r)
                out += [Tensor(w.experts * w.rank * w.in_features, group.count),
                        Tensor(w.out_features * w.experts * w.rank, group.count)]
        return tuple(out)
    return tuple(_model_tensors(spec, None if train.method == "full" else set(train.trainable_layers)))


def _model_tensors(spec: ModelSpec, chosen: set[int] | None = None) -> list[Tensor]:
    """Every parameter tensor of the model as transformers creates it, or only those of the decoder layers in
    `chosen` (freeze tuning)."""
    d, out = spec.hidden_size, []
    for group in spec.blocks:
        layers = group.count if chosen is None else \
            sum(1 for i in range(group.start, group.start + group.count) if i in chosen)
        if layers:
            out += _block_tensors(spec, group.block, layers)
    if chosen is None:
        # a tied LM head is this same tensor
        out.append(Tensor(spec.vocab_size * d, embedding=True, rows=spec.vocab_size))
        if spec.learned_positions:
            out.append(Tensor(spec.learned_positions * d, embedding=True, rows=spec.learned_positions))
        if spec.head_params:
            out.append(Tensor(spec.head_params, rows=spec.head_width, linear=True, head=True))
        out += [Tensor(d)] + ([Tensor(d, bias=True)] if spec.final_norm.bias else [])
    return out


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _state_bytes(train: TrainingLayout, plan: Plan) -> int:
    """Bytes of a state element made `zeros_like(param)`: the trainable parameters' dtype (ZeRO's fp32 master
    under mixed precision); with several dtypes, the one most parameters have."""
    if keeps_master_copy(plan):
        return 4
    per_dtype = train.trainable_bytes_by_dtype()
    if not per_dtype:
        return DTYPE_BYTES[param_dtype(plan, trainable=True)]
    return DTYPE_BYTES[max(per_dtype, key=per_dtype.get)]


def _moments(train: TrainingLayout, plan: Plan, k: int) -> int:
    """`k` buffers `zeros_like(param)` per trainable parameter, each in its own parameter's dtype."""
    master = keeps_master_copy(plan)
    return sum(k * n * (4 if master else DTYPE_BYTES[dt]) for dt, n in train.trainable_bytes_by_dtype().items())


# ------------------------------------------------------------------ bitsandbytes

# bitsandbytes/optim/optimizer.py (bitsandbytes 0.50), Optimizer2State / Optimizer1State.init_state: with
# `optim_bits` 32, or for a tensor with fewer than `min_8bit_size` elements (4096, the `__init__` default the
# Trainer keeps), each state is fp32 (`get_state_buffer(p, dtype=torch.float32)`, whatever the parameter's
# dtype); else uint8 plus one fp32 absmax per block of 256 elements. Paged buffers (`F.get_paged`, CUDA unified
# memory, tensors of 1e5 elements and more) are allocated on the device and move to the host only when the
# driver evicts them under memory pressure.
BNB_MIN_8BIT_SIZE = 4096
BNB_BLOCK = 256
# Optimizer.fill_qmap: the signed ("dynamic") and unsigned ("udynamic") quantile maps, 256 fp32 values each,
# created once per optimizer (`name2qmap`) and shared by every 8-bit tensor's state; a one-state optimizer
# (Lion) moves and references only the signed one.
BNB_QMAP = 256 * 4


def _bnb_state(tensors: list[Tensor], states: int, *, embeddings_32bit: bool = True) -> int:
    """bitsandbytes 8-bit state (AdamW8bit / PagedAdamW8bit: 2 states; Lion8bit / PagedLion8bit: 1) as
    `transformers.Trainer.create_optimizer` sets it up.

    The Trainer registers every `nn.Embedding` weight with `GlobalOptimManager.register_module_override(
    module, "weight", {"optim_bits": 32})` (transformers/trainer.py, `Trainer.create_optimizer`, for a
    bitsandbytes class with optim_bits 8), so the embeddings (and a head tied to them) keep fp32 states, as do
    tensors under `min_8bit_size`; every other tensor keeps 1 byte plus 4 bytes per 256-element block per state.
    """
    total = eight_bit = 0
    for t in tensors:
        if (embeddings_32bit and t.embedding) or t.numel < BNB_MIN_8BIT_SIZE:
            total += t.count * states * 4 * t.numel
        else:
            eight_bit += t.count
            total += t.count * states * (t.numel + 4 * _ceil_div(t.numel, BNB_BLOCK))
    return total + (states * BNB_QMAP if eight_bit else 0)


# ------------------------------------------------------------------ torchao

# torchao/optim/adam.py (pytorch/ao 36027d8), `_AdamBase._new_buffer`: "follow bitsandbytes, only quantize
# tensors >= 4096 values", and only those whose size divides by the block; others get `torch.zeros_like(p)`.
# `OptimState8bit.zeros` (subclass_8bit.py): uint8 codes of the tensor's size, one fp32 scale per block and its
# own fp32 copy of the 256-entry quantile map; `OptimState4bit.zeros` (subclass_4bit.py): codes packed two per
# byte, one fp32 scale per block, a 16-entry map. transformers' `_get_torchao_optimizer` passes
# `block_size=optim_args.get("block_size", 256)` to both (torchao's own AdamW4bit default is 128).
TORCHAO_BLOCK = 256
TORCHAO_QMAP = {8: 256 * 4, 4: 16 * 4}


def _torchao_state(tensors: list[Tensor], bits: int, state_bytes: int) -> int:
    total = 0
    for t in tensors:
        if t.numel >= BNB_MIN_8BIT_SIZE and t.numel % TORCHAO_BLOCK == 0:
            one = t.numel * bits // 8 + 4 * (t.numel // TORCHAO_BLOCK) + TORCHAO_QMAP[bits]
        else:
            one = t.numel * state_bytes
        total += 2 * t.count * one  # exp_avg and exp_avg_sq
    return total


# ------------------------------------------------------------------ Adafactor


def _adafactor_state(train: TrainingLayout, spec: ModelSpec, plan: Plan) -> int:
    """Adafactor keeps rows + cols second-moment entries per trainable matrix, a full one per vector.

    The entries are fp32 whatever the parameter's dtype: transformers' `Adafactor.step`
    (transformers/optimization.py) up-casts a 16-bit gradient with `grad.float()` and allocates the state
    `.to(grad)`, i.e. in fp32; ZeRO's fp32 master copy gets fp32 state too.
    """
    d = spec.hidden_size
    entries = 0
    chosen = set(train.trainable_layers)
    for group in spec.blocks:  # a group's layers are identical: count one, times the layers that train
        block = group.block
        if train.method in ("lora", "qlora"):
            entries += group.count * sum(2 * plan.lora_rank + lin.in_features + lin.out_features
                                         for lin in lora_targets(spec, block, plan)[0])
            continue
        layers = range(group.start, group.start + group.count)
        trained = sum(1 for i in layers if i in chosen) if train.method == "freeze" else group.count
        one = sum(lin.in_features + lin.out_features + (lin.out_features if lin.bias else 0) for lin in block.linears)
        one += block.other_params.get("norms", 0) + block.other_params.get("qk_norm", 0)
        if block.mlp.kind == "moe":
            e, i = block.mlp.num_experts, block.mlp.intermediate_size
            one += e * (2 * i + d) + e * (d + i) + e + d
        entries += trained * one
    if train.method == "full":
        entries += spec.vocab_size + d + (spec.head_width + d if spec.head_params else 0) + d
    return 4 * entries


# ------------------------------------------------------------------ Muon, Adam-mini


def _muon_matrix(t: Tensor) -> bool:
    """LLaMA-Factory's split (train/trainer_utils.py, `_create_muon_optimizer`): Muon for 2-D parameters that
    are neither embeddings nor the LM head, AdamW for the rest."""
    return t.matrix and not t.embedding and not t.head


def _muon_state(tensors: list[Tensor], state_bytes: int) -> int:
    """Muon's one momentum buffer per matrix (`zeros_like(g)`, LLaMA-Factory third_party/muon/muon.py, as
    torch.optim.Muon's `momentum_buffer`), AdamW's `moment1`/`moment2` for the others, in the grad's dtype."""
    return sum(t.count * t.numel * state_bytes * (1 if _muon_matrix(t) else 2) for t in tensors)


# Adam-mini 1.1.1 (zyushun/Adam-mini, adam_mini/adam_mini.py `__init__`): the name fragments that choose each
# parameter's rule in `step`, checked in this order after "bias"
ADAM_MINI_QK = ("k_proj", "q_proj", "wq", "wk", "query", "key")
ADAM_MINI_ROWS = ("embed", "embd", "wte", "lm_head", "output", "final_layer", "v_proj", "wv", "value",
                  "feed_forward", "linear", "mlp", "o_proj", "wo", "attn.proj")


def _adam_mini_state(tensors: list[Tensor], spec: ModelSpec, state_bytes: int) -> int:
    """Adam-mini's `step` (adam_mini.py, Adam_mini.step), as LLaMA-Factory's `_create_adam_mini_optimizer` builds it
    (`dim=hidden_size`, `n_heads=num_attention_heads`): every parameter keeps a full first moment `m`
    (`zeros_like(p)`) and a second moment `vmean` of
    * two full moments (Adam) for a name with "bias";
    * one entry per `dim * dim / n_heads` elements (per head) for q/k (`m.view(-1, head_numel)`);
    * one per row (`m.size(0)`) for embeddings, the head, v, o and MLP matrices;
    * one 0-dim value for anything else (norms), `zeros_like(torch.sum(p * p))`.
    All in the parameter's dtype. Names are matched on the module path, as Adam-mini matches them on
    `named_parameters()`."""
    heads = spec.blocks[0].block.attention.num_heads if spec.blocks else 1
    head_numel = max(1, spec.hidden_size * spec.hidden_size // heads)
    total = 0
    for t in tensors:
        if t.bias:
            entries = 2 * t.numel
        elif any(k in t.path for k in ADAM_MINI_QK):
            entries = t.numel + t.numel // head_numel
        elif t.embedding or t.head or any(k in t.path for k in ADAM_MINI_ROWS):
            entries = t.numel + t.rows
        else:
            entries = t.numel + 1
        total += t.count * state_bytes * entries
    return total


# ------------------------------------------------------------------ GaLore, APOLLO


def _low_rank_target(t: Tensor) -> bool:
    return t.linear and t.matrix and not t.head


def _low_rank_state(tensors: list[Tensor], plan: Plan, state_bytes: int) -> int:
    """GaLore (jiaweizzhao/GaLore 2cc66f8, galore_torch/) and APOLLO (zhuhanqing/APOLLO 76b3472, apollo_torch/)
    as LLaMA-Factory (`_create_galore_optimizer`) and transformers (`_setup_low_rank_optimizer`) set them up:
    every `nn.Linear` weight of the decoder (LLaMA-Factory's `galore_target: all`, the LM head excluded) is a
    target; the other trainable tensors (embeddings, norms, the head) get the base optimizer's full state.

    * GaLoreAdamW (adamw.py): `exp_avg`/`exp_avg_sq` `zeros_like` the projected gradient; the projector keeps
      `ortho_matrix` (galore_projector.py `get_orthogonal_matrix`): for an fp32 weight, a slice of the SVD's
      U or Vh, which keeps that whole min(m, n)^2 fp32 factor alive; for a 16-bit one a copy of the slice.
    * GaLoreAdamW8bit (adamw8bit.py): bitsandbytes' 8-bit state on the projected gradient (it swaps `p.data`
      for it before `init_state`); transformers' embedding override does not apply (the class is not
      bitsandbytes'), so every tensor of 4096+ elements is 8-bit. Its `super().__init__` passes its arguments by
      position, and bitsandbytes 0.50's `Optimizer2State.__init__` takes `max_unorm` where GaLore meant
      `percentile_clipping` (100), so every tensor also keeps a 1-element fp32 `unorm_vec` (`init_state`).
    * GaLoreAdafactor (adafactor.py `step`): the gradient is up-cast (`grad.float()`) before it is projected, so
      the projector keeps the fp32 SVD factor whatever the weight's dtype, and every 2-D tensor (embeddings too)
      gets Adafactor's factored fp32 second moment (`_get_options`: `factored = len(shape) >= 2`), the projected
      ones of the rank-r gradient; vectors a full fp32 one.
    * APOLLOAdamW (apollo.py): Adam's two moments of the projected gradient, a rank x min(m, n) random
      projection in the weight's dtype, and a 0-dim norm.
    """
    rank, opt = plan.projection_rank, plan.optimizer
    galore = opt.startswith("galore")
    plain: list[Tensor] = []
    projected: list[Tensor] = []
    projectors = 0
    for t in tensors:
        if not _low_rank_target(t):
            plain.append(t)
            continue
        # `std` projects an m x n gradient (m >= n) on the right to m x r, else on the left to r x n; GaLore's SVD
        # gives at most min(m, n) directions (`Vh[:rank]`), APOLLO's random matrix is `rank` wide whatever the
        # shape (random_projector.py, `stable_randn`)
        small, large = min(t.rows, t.cols), max(t.rows, t.cols)
        r = min(rank, small) if galore else rank
        projected.append(Tensor(r * large, t.count, rows=r))
        fp32 = state_bytes == 4 or opt == "galore-adafactor"
        projectors += t.count * (4 * small * small if galore and fp32 else r * small * state_bytes)
    if opt == "galore-adamw-8bit":
        states = _bnb_state(plain + projected, 2, embeddings_32bit=False) + 4 * sum(t.count for t in tensors)
    elif opt == "galore-adafactor":
        states = 4 * sum(t.count * ((t.rows + t.cols) if t.matrix else t.numel) for t in plain + projected)
    else:
        states = 2 * state_bytes * sum(t.count * t.numel for t in plain + projected)
    return states + projectors


# ------------------------------------------------------------------ BAdam, AdaLomo


def badam_block(spec: ModelSpec, train: TrainingLayout, plan: Plan) -> int:
    """Trainable parameters of BAdam's largest block: one decoder layer (`BlockOptimizer.infer_param_groups`,
    Ledzy/BAdam bf989dc src/badam/block_optim.py: `layers.<i>.` prefixes; embeddings and the LM head are not
    blocks unless asked, and LLaMA-Factory does not ask), or that layer's adapters under LoRA."""
    layers = train.trainable_layers or range(spec.num_layers)
    if train.method in ("lora", "qlora"):
        return _ceil_div(train.trainable_params, max(1, spec.num_layers))
    per_group = [sum(t.numel for t in _block_tensors(spec, g.block, 1)) for g in spec.blocks
                 if any(g.start <= i < g.start + g.count for i in layers)]
    return max(per_group, default=0)


def _adalomo_state(tensors: list[Tensor]) -> int:
    """AdaLomo (lomo-optim 0.1.1, lomo_optim/adalomo.py `__init__`, lines 84-96): fp32 `exp_avg_sq_row` and
    `exp_avg_sq_col` for every 2-D parameter, a full fp32 `exp_avg_sq` of `shape[0]` for a vector. It walks
    `model.named_parameters()` without asking `requires_grad`, so frozen weights (LoRA's base, frozen layers)
    get their state too."""
    return 4 * sum(t.count * ((t.rows + t.cols) if t.matrix else t.numel) for t in tensors)


# ------------------------------------------------------------------ state and step


def optimizer_state(spec: ModelSpec, train: TrainingLayout, plan: Plan) -> int:
    """Optimizer state per GPU before ZeRO sharding (Loshchilov & Hutter 2019; Dettmers et al. 2022).

    * AdamW: exp_avg + exp_avg_sq in the parameter's dtype (PyTorch allocates them `zeros_like(p)`),
      so 8 bytes for fp32 parameters, 4 for pure bf16, 8 (fp32) under a ZeRO master copy; SGD with momentum:
      one such buffer, without: none; LOMO: none (its update is fused into backward).
    * bitsandbytes 8-bit AdamW / Lion: 1 byte per state plus fp32 absmaxes; 32-bit (paged AdamW, Lion):
      fp32 states whatever the parameter's dtype (`_bnb_state`).
    * torchao AdamW8bit / AdamW4bit: 1 or 0.5 byte per state plus fp32 scales (`_torchao_state`).
    * Adafactor (Shazeer & Stern 2018) and AdaLomo (Lv et al. 2023): factored fp32 second moments.
    * Muon, Adam-mini, GaLore / APOLLO: see their functions; BAdam: the active block's fp32 copy and its
      Adam moments (12 bytes per parameter of one decoder layer).
    """
    opt = plan.optimizer
    sb = _state_bytes(train, plan)
    if opt in ("adamw", "adamw-fused"):
        return _moments(train, plan, 2)
    if opt == "sgd-momentum":
        return _moments(train, plan, 1)
    if opt in ("sgd", "lomo"):
        return 0
    if opt == "adafactor":
        return _adafactor_state(train, spec, plan)
    if opt == "paged-adamw":
        return 2 * 4 * train.trainable_params
    if opt in ("lion", "paged-lion"):
        return 4 * train.trainable_params
    if opt == "badam":
        # BlockOptimizer._switch_trainable_params_single_gpu: `param.clone().float()` of the active block, and
        # the base optimizer (torch AdamW) keeps its moments for those fp32 copies only
        return 12 * badam_block(spec, train, plan)
    tensors = trainable_tensors(spec, train, plan)
    if opt in BNB_8BIT:
        return _bnb_state(tensors, 1 if "lion" in opt else 2)
    if opt in ("adamw-torch-8bit", "adamw-torch-4bit"):
        return _torchao_state(tensors, 8 if opt.endswith("8bit") else 4, sb)
    if opt == "muon":
        return _muon_state(tensors, sb)
    if opt == "adam-mini":
        return _adam_mini_state(tensors, spec, sb)
    if opt in LOW_RANK:
        return _low_rank_state(tensors, plan, sb)
    if opt == "adalomo":
        # every model parameter, trained or not, plus the adapters a PEFT method adds
        adapters = () if train.method in ("full", "freeze") else tensors
        return _adalomo_state([*_model_tensors(spec), *adapters])
    raise AssertionError(f"no state rule for optimizer {opt}")


def step_temporaries(spec: ModelSpec, train: TrainingLayout, plan: Plan) -> int:
    """What one step allocates and frees again, without ZeRO (the largest moment).

    * foreach AdamW materialises sqrt(exp_avg_sq) for the whole parameter group (`torch._foreach_sqrt` in
      `_multi_tensor_adam`); the fused kernel, bitsandbytes and torchao (one compiled kernel per parameter,
      `single_param_adam`) update in place.
    * Per-parameter loops hold one parameter's temporaries at a time, the largest parameter's at the peak:
      GaLore/APOLLO AdamW and Muon's AdamW part `exp_avg / denom` and the denominator; GaLore's projection
      update, `torch.linalg.svd` of the fp32 gradient (U, S, Vh beside the fp32 copy), or its back-projected
      full-size update and its scaled copy; APOLLO's scaled full-size gradient and its limited copy; Muon's
      Newton-Schulz iteration (LLaMA-Factory third_party/muon/muon.py `zeropower_via_newtonschulz5`: the
      Nesterov update in the grad's dtype, bf16 X and its update, and two k x k bf16 products); Adam-mini's
      full-size `update`; LOMO's fp32 gradient and weight (`fuse_update`), AdaLomo's fp32 update besides.
    * BAdam: the active block's fp32 gradients (`_grad_to_hp`) and the foreach AdamW sqrt over them.
    """
    opt = plan.optimizer
    sb = _state_bytes(train, plan)
    if opt == "adamw":
        return _moments(train, plan, 1)
    if opt == "badam":
        return 8 * badam_block(spec, train, plan)
    per_param = ("muon", "adam-mini", "lomo", "adalomo", *LOW_RANK)
    if opt not in per_param:
        return 0
    tensors = trainable_tensors(spec, train, plan)
    largest = max((t.numel for t in tensors), default=0)
    if opt == "lomo":
        return 8 * largest
    if opt == "adalomo":
        return 12 * largest
    if opt == "adam-mini":
        return sb * largest
    moments = [2 * sb * t.numel for t in tensors]  # Adam's denominator and normalised update, per parameter
    if opt == "muon":
        for t in tensors:
            if _muon_matrix(t):
                k = min(t.rows, t.cols)
                moments.append(t.numel * (sb + 3 * 2) + 3 * 2 * k * k)
    elif opt in LOW_RANK:
        for t in tensors:
            if _low_rank_target(t):
                k = min(t.rows, t.cols)
                full = 2 * sb * t.numel  # the full-size update and its scaled (or limited) copy
                if opt.startswith("galore"):
                    copy = 0 if sb == 4 else 4 * t.numel
                    full = max(full, copy + 4 * (t.rows * k + k + k * t.cols))  # the SVD's factors
                    if opt == "galore-adamw-8bit":
                        full += sb * t.numel  # `p.saved_data = p.data.clone()` while the state steps
                moments.append(full)
    return max(moments, default=0)


def optimizer_assumptions(plan: Plan) -> list[str]:
    """The assumption lines an estimate states for its optimizer."""
    name = {
        "adamw": "AdamW, PyTorch foreach implementation (LLaMA-Factory/TRL `adamw_torch`): its step briefly "
                 "holds sqrt(exp_avg_sq) for all parameters",
        "adamw-fused": "AdamW, fused kernel (`adamw_torch_fused`, transformers' default on torch >= 2.8)",
        "adamw-8bit": "bitsandbytes AdamW8bit: 2 bytes of state per parameter (tensors >= 4096 elements)",
        "paged-adamw-8bit": "bitsandbytes paged AdamW8bit: 8-bit state in unified memory",
        "paged-adamw": "bitsandbytes paged AdamW 32-bit: two fp32 states (8 bytes per parameter, whatever the "
                       "weights' dtype) in unified memory",
        "adamw-torch-8bit": "torchao AdamW8bit (`adamw_torch_8bit`): 1 byte per state, one fp32 scale per 256 "
                            "values and a 1 KiB quantile map per quantized tensor",
        "adamw-torch-4bit": "torchao AdamW4bit (`adamw_torch_4bit`): 0.5 byte per state, one fp32 scale per 256 "
                            "values (the Trainer's block_size)",
        "lion": "bitsandbytes Lion 32-bit: one fp32 momentum per parameter",
        "paged-lion": "bitsandbytes paged Lion 32-bit: one fp32 momentum per parameter, in unified memory",
        "lion-8bit": "bitsandbytes Lion8bit: one 8-bit momentum (1 byte per parameter, tensors >= 4096 elements)",
        "paged-lion-8bit": "bitsandbytes paged Lion8bit: one 8-bit momentum in unified memory",
        "adafactor": "Adafactor without momentum: factored second moments only",
        "sgd": "SGD without momentum: no optimizer state",
        "sgd-momentum": "SGD with momentum: one buffer per parameter",
        "adam-mini": "Adam-mini: a full first moment, one second moment per head (q/k) or output row; for full or "
                     "freeze tuning (its per-head views do not fit LoRA matrices)",
        "muon": "Muon as LLaMA-Factory's use_muon sets it up: one momentum for 2-D hidden weights, AdamW's two "
                "moments for embeddings, the LM head and vectors; Newton-Schulz in bf16 on one matrix at a time",
        "galore-adamw": "GaLore AdamW: Adam's moments at rank {projection_rank} for every decoder nn.Linear "
                        "(LLaMA-Factory's galore_target all), full AdamW for the rest; the projection update step "
                        "runs an SVD of one gradient at a time",
        "galore-adamw-8bit": "GaLore AdamW8bit: 8-bit moments at rank {projection_rank} for every decoder "
                             "nn.Linear, 8-bit AdamW for the rest (embeddings too)",
        "galore-adafactor": "GaLore Adafactor: factored second moments of the rank-{projection_rank} projected "
                            "gradients",
        "apollo-adamw": "APOLLO AdamW: Adam's moments at rank {projection_rank} with a random projection for every "
                        "decoder nn.Linear, full AdamW for the rest",
        "badam": "BAdam (layer mode): one decoder layer trains at a time, with an fp32 copy, its gradients and "
                 "Adam's moments; the other layers are frozen (ratio mode is not modelled)",
        "lomo": "LOMO: the SGD update is fused into backward (one gradient at a time), no optimizer state",
        "adalomo": "AdaLomo: the update is fused into backward (one gradient at a time), factored fp32 second "
                   "moments",
    }[plan.optimizer]
    out = [name]
    if plan.optimizer.startswith("paged"):
        out.append("paged optimizer state counts on the GPU: CUDA unified memory pages it to host RAM only when "
                   "the GPU runs out (bitsandbytes pages tensors of 1e5+ elements)")
    if plan.optimizer in BNB_8BIT:
        out.append("8-bit state as the HF Trainer sets it up: nn.Embedding weights and tensors under 4096 elements "
                   "keep 32-bit state (4 bytes per state per parameter); one fp32 absmax per 256 values")
    if plan.optimizer in ("adafactor", "galore-adafactor"):
        out.append("Adafactor state in fp32 whatever the weights' dtype (transformers up-casts the gradient)")
    if plan.optimizer_in_backward and plan.optimizer in LOW_RANK:
        out.append("layer-wise: each parameter has its own optimizer, stepped in its gradient hook, so one "
                   "gradient exists at a time")
    return out
