"""Activation memory: the bytes autograd saves for backward, by replaying the forward.

Rules of thumb such as Korthikanti et al. (2022)'s `sbh(34 + 5as/h)` assume one
kernel set and fp16 everywhere. What a transformers model really keeps depends on
which inputs require grad, the dtype of every cast, the attention kernel and
peft's adapter casts. So instead of one closed formula per family, this module
replays a block's forward at the level of autograd *saved tensors*: every op
below saves what its PyTorch backward formula needs (`tools/autograd/
derivatives.yaml`; e.g. `mm` saves `self` only when `mat2` requires grad), and
storages are counted once however many ops save them. Sizes are exact integers,
so this stays a pure-Python model (no torch), a few hundred operations per block.

It is checked against the bytes `torch.autograd.graph.saved_tensors_hooks` sees on
real transformers models (tests/planner/test_activation_truth.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from planner.methods import DTYPE_BYTES, BlockTraining, WrappedTensor, wrapped_tensors
from planner.peft_methods import oft_block
from planner.spec import Block, Linear, ModelSpec


class _Storage:
    __slots__ = ("nbytes",)

    def __init__(self, nbytes: int):
        self.nbytes = nbytes


class T:
    """A symbolic tensor: a storage (shared by views), its dtype and whether it requires grad."""

    __slots__ = ("dtype", "grad", "numel", "storage")

    def __init__(self, numel: int, dtype: str, grad: bool, storage: _Storage | None = None):
        self.numel = numel
        self.dtype = dtype
        self.grad = grad
        self.storage = storage or _Storage(numel * DTYPE_BYTES[dtype])

    def view(self, numel: int) -> T:
        return T(numel, self.dtype, self.grad, self.storage)


def _promote(a: str, b: str) -> str:
    if a == b:
        return a
    return "fp32" if "fp32" in (a, b) else a


@dataclass
class Tape:
    """Collects the storages autograd would keep alive until backward."""

    autocast: str | None = None  # compute dtype under torch.autocast, else None
    device: str = "cuda"
    region: str = "activations"
    saved: dict[int, tuple[_Storage, str]] = field(default_factory=dict)
    shared: dict[str, T] = field(default_factory=dict)
    liger: frozenset[str] = frozenset()  # Liger's kernels in place of the eager ops (planner.liger.KERNELS)
    lora_kernels: frozenset[str] = frozenset()  # axolotl's fused LoRA Functions (planner.lora_kernels.KERNELS)
    # bytes in `saved` per region, added up as they are saved: the replay asks for the total around every block,
    # and summing every storage each time made it quadratic in the storages
    totals: dict[str, int] = field(default_factory=dict)

    # -- bookkeeping
    def save(self, *tensors: T | None) -> None:
        for t in tensors:
            if t is not None and id(t.storage) not in self.saved:
                self.saved[id(t.storage)] = (t.storage, self.region)
                self.totals[self.region] = self.totals.get(self.region, 0) + t.storage.nbytes

    def bytes(self, region: str | None = None) -> int:
        return sum(self.totals.values()) if region is None else self.totals.get(region, 0)

    # -- elementwise and shape ops
    def cast(self, x: T, dtype: str) -> T:
        return x if x.dtype == dtype else T(x.numel, dtype, x.grad)

    def new_like(self, x: T, grad: bool | None = None, dtype: str | None = None) -> T:
        return T(x.numel, dtype or x.dtype, x.grad if grad is None else grad)

    def mul(self, a: T, b: T) -> T:
        """a * b: each operand is saved when the *other* one requires grad."""
        if a.grad:
            self.save(b)
        if b.grad:
            self.save(a)
        return T(max(a.numel, b.numel), _promote(a.dtype, b.dtype), a.grad or b.grad)

    def unary(self, x: T, saves: str = "input", dtype: str | None = None) -> T:
        """An op whose backward needs its input (silu, gelu, pow) or its output (tanh, sigmoid, softmax)."""
        out = T(x.numel, dtype or x.dtype, x.grad)
        if x.grad:
            self.save(x if saves == "input" else out)
        return out

    def add(self, a: T, b: T) -> T:
        return T(max(a.numel, b.numel), _promote(a.dtype, b.dtype), a.grad or b.grad)

    def dropout(self, x: T, p: float) -> T:
        if p <= 0:
            return x
        if x.grad:
            # CUDA's fused dropout keeps a bool mask; the CPU path multiplies by a noise tensor.
            self.save(T(x.numel, "bool" if self.device == "cuda" else x.dtype, False))
        return self.new_like(x)

    # -- modules
    def linear(self, x: T, out_features: int, in_features: int, trainable: bool) -> T:
        if self.autocast:
            x = T(x.numel, self.autocast, x.grad) if x.dtype != self.autocast else x
        if trainable:
            self.save(x)  # grad_weight = grad_out^T @ x
        return T(x.numel // in_features * out_features, x.dtype, x.grad or trainable)

    def lora(self, x: T, lin: Linear, rank: int, dropout: float, adapter_dtype: str) -> T:
        """peft's LoRA branch: casts x to the adapter dtype, then B(A(dropout(x)))."""
        xa = T(x.numel, adapter_dtype, x.grad) if x.dtype != adapter_dtype else x
        xa = self.dropout(xa, dropout)
        h = self.linear(xa, rank, lin.in_features, trainable=True)
        return self.linear(h, lin.out_features, rank, trainable=True)

    def bottleneck(self, x: T, hidden: int, width: int, adapter_dtype: str) -> T:
        """A Houlsby adapter on a sublayer's output, cast to the adapter's dtype as peft casts LoRA's input:
        x + up(silu(down(x))).to(x.dtype), both projections trainable (diagnostics.models builds the same)."""
        h = self.activation(self.linear(self.cast(x, adapter_dtype), width, hidden, trainable=True), "silu")
        self.linear(h, hidden, width, trainable=True)
        return T(x.numel, x.dtype, True)

    def embedding(self, tokens: int, dim: int, dtype: str, trainable: bool, input_grad: bool) -> T:
        if trainable:
            self.save(T(tokens, "int64", False))  # the token ids index the gradient rows
        return T(tokens * dim, dtype, trainable or input_grad)

    def norm(self, x: T, rows: int, kind: str, weight_trainable: bool, weight_dtype: str,
             bias: bool = False) -> T:
        """RMSNorm variants and LayerNorm, as transformers writes them (or Liger's kernels, when on)."""
        if ("layer_norm" if kind == "layer" else "rms_norm") in self.liger:
            return self._liger_norm(x, rows, kind, x.grad or weight_trainable)
        if not (x.grad or weight_trainable):
            return T(x.numel, x.dtype if kind != "rms" else _promote(weight_dtype, x.dtype), False)
        if kind == "layer":
            xin = self.cast(x, "fp32") if self.autocast else x
            if x.grad or weight_trainable:
                self.save(xin, T(rows, "fp32", False), T(rows, "fp32", False))  # input, mean, rstd
            return T(x.numel, xin.dtype, True)
        x32 = self.cast(x, "fp32")
        rstd = T(rows, "fp32", x.grad)
        if x.grad:
            self.save(x32, rstd)  # pow(x, 2) and x * rsqrt(var)
        normed = T(x.numel, "fp32", x.grad)
        if kind == "rms":  # Llama: weight * normed.to(input_dtype)
            normed_in = self.cast(normed, x.dtype)
            if weight_trainable:
                self.save(normed_in)
            return T(x.numel, _promote(weight_dtype, x.dtype), True)
        if kind == "rms_gemma":  # (normed * (1 + weight.float())).type_as(x)
            if x.grad:
                self.save(T(x.numel // rows, "fp32", weight_trainable))  # 1 + w, once per call
            if weight_trainable:
                self.save(normed)
            return T(x.numel, x.dtype, True)
        # OLMo-2: (weight * normed).to(input_dtype)
        if weight_trainable:
            self.save(normed)
        return T(x.numel, x.dtype, True)

    def _liger_norm(self, x: T, rows: int, kind: str, grad: bool) -> T:
        """Liger's norms write their output in the input's dtype and keep the input itself, not an fp32 or a
        normalised copy. LigerRMSNormFunction.forward (liger_kernel/ops/rms_norm.py) saves X, W and RSTD, one fp32
        per row in the llama and gemma casting modes every monkey patch uses (rms_norm_forward); the Gemma offset
        (1 + w) is applied inside the kernel. LigerLayerNormFunction.forward (ops/layer_norm.py) saves X, W, B and
        Mean and RSTD per row in X's dtype (layer_norm_forward), with no autocast up-cast (a custom Function)."""
        if grad:
            stats = [T(rows, "fp32", False)] if kind != "layer" else [T(rows, x.dtype, False), T(rows, x.dtype, False)]
            self.save(x, *stats)
        return T(x.numel, x.dtype, grad)

    def activation(self, x: T, kind: str) -> T:
        if kind == "gelu_new":  # 0.5 * x * (1 + tanh(c * (x + 0.044715 * x**3))), op by op
            if x.grad:
                tanh_out = T(x.numel, x.dtype, True)
                self.save(x, tanh_out, T(x.numel, x.dtype, True), T(x.numel, x.dtype, True))
            return self.new_like(x)
        return self.unary(x, "input")


# ------------------------------------------------------------------ blocks


@dataclass
class Ctx:
    """Everything a block replay needs besides the block itself."""

    batch: int
    seq: int
    hidden: int
    compute: str  # activation dtype
    weight_dtype: str  # dtype of the block's (frozen or trainable) weights
    kernel: str  # eager | sdpa | flash
    lora_rank: int = 8
    lora_dropout: float = 0.0
    adapter_dtype: str = "fp32"
    prefix: int = 0  # prefix tuning: virtual keys and values before the sequence's own in every layer
    oft: tuple[int, int] = (32, 0)  # OFT (block size, blocks): one of them set
    adapter_width: int = 0  # Houlsby adapters' bottleneck
    # bitsandbytes 4/8-bit linears (QLoRA): Linear4bit.forward casts x to bnb_4bit_compute_dtype, runs its own op
    # (no autocast kernel) and returns `.to(inp_dtype)` (bitsandbytes/nn/modules.py): the output keeps x's dtype
    quantized: bool = False

    @property
    def tokens(self) -> int:
        return self.batch * self.seq


def _proj(tape: Tape, x: T, lin: Linear, training: BlockTraining, ctx: Ctx) -> T:
    if lin.path in training.oft_paths:
        x = _oft_rotate(tape, x, lin, ctx)
    elif lin.path in training.ia3_inputs:  # peft IA3 feed-forward: (x.to(l.dtype) * l).to(x.dtype)
        tape.save(tape.cast(x, ctx.adapter_dtype))
        x = T(x.numel, x.dtype, True)
    if ctx.quantized and not training.base_trainable:
        out = T(x.numel // lin.in_features * lin.out_features, x.dtype, x.grad)
    else:
        out = tape.linear(x, lin.out_features, lin.in_features, training.base_trainable)
    if lin.path in training.lora_paths:
        xa = tape.lora(x, lin, ctx.lora_rank, ctx.lora_dropout, ctx.adapter_dtype)
        if training.dora:
            # peft's DoRA (tuners/lora/dora.py): (m / ||W + BA|| - 1) * base_result + m / ||W + BA|| * lora_result;
            # the norm is detached, so the products keep the base result and the adapter's result
            tape.save(out, T(out.numel, xa.dtype, False))
        out = T(out.numel, out.dtype, True)  # (result + delta * scaling).to(result dtype)
    elif lin.path in training.ia3_paths:  # (result * l).to(result dtype): the product keeps the result
        tape.save(out)
        out = T(out.numel, out.dtype, True)
    return out


def _oft_rotate(tape: Tape, x: T, lin: Linear, ctx: Ctx) -> T:
    """peft's OFT (tuners/oft/layer.py, OFTRotationModule.forward): the input, cast to the rotation's dtype, times
    a block-diagonal R built from the skew-symmetric parameters by a Cayley-Neumann series (5 terms: Q, Q^2, Q^3
    from bmm's that keep their operands), as `einsum("...rk,rkc->...rc")`, which keeps both of its inputs."""
    blocks, size = oft_block(lin.in_features, *ctx.oft)
    rb = blocks * size * size
    dtype = tape.autocast or ctx.adapter_dtype  # bmm runs in the autocast dtype
    tape.save(T(rb, dtype, True), T(rb, dtype, True), T(rb, dtype, True))  # Q, Q^2, Q^3
    xr = tape.cast(tape.cast(x, ctx.adapter_dtype), dtype)
    tape.save(xr, T(rb, dtype, True))
    return T(x.numel, x.dtype, True)


def _rope(tape: Tape, x: T, rope_dim: int, ctx: Ctx) -> T:
    """q * cos + rotate_half(q) * sin: the muls keep cos and sin, computed once per forward and
    shared by every layer; the rotated tensor is new."""
    if rope_dim <= 0:
        return x
    if x.grad:
        for name in ("cos", "sin"):
            tape.save(tape.shared.setdefault(f"rope.{name}", T(ctx.seq * rope_dim, x.dtype, False)))
    if "rope" in tape.liger and x.storage.nbytes == x.numel * DTYPE_BYTES[x.dtype]:
        # LigerRopeFunction.forward (liger_kernel/ops/rope.py) saves the same cos and sin, but rope_forward rotates
        # q and k in place and returns them: no new tensor unless `.contiguous()` had to copy a view of a larger
        # storage (a fused qkv projection's slices)
        return x
    return tape.new_like(x)


def _attention(tape: Tape, x: T, block: Block, training: BlockTraining, ctx: Ctx) -> T:
    att = block.attention
    lins = {lin.name: lin for lin in block.linears if lin.component == "attention"}
    b, s, nh, kvh = ctx.batch, ctx.seq, att.num_heads, att.num_kv_heads
    trainable = training.base_trainable
    if att.kind == "mla":
        return _mla(tape, x, block, training, ctx)
    if att.kind == "fused_qkv":
        qkv_lin = next(iter(lins.values()))
        qkv = _proj(tape, x, qkv_lin, training, ctx)
        # q and k become new tensors at the rotary embedding; v is split off into its own copy
        q, k = qkv.view(b * s * nh * att.head_dim), qkv.view(b * s * kvh * att.head_dim)
        v = T(b * s * kvh * att.head_dim, qkv.dtype, qkv.grad)
        o_lin = list(lins.values())[1]
    elif _fused_lora(tape, "qkv", [lins.get(n) for n in ("q_proj", "k_proj", "v_proj")], training):
        q, k, v = _lora_kernel(tape, x, [lins["q_proj"], lins["k_proj"], lins["v_proj"]], ctx)
        o_lin = lins["o_proj"]
    else:
        q = _proj(tape, x, lins["q_proj"], training, ctx)
        k = _proj(tape, x, lins["k_proj"], training, ctx)
        v = _proj(tape, x, lins["v_proj"], training, ctx)
        o_lin = lins["o_proj"]
    if att.qk_norm == "full":
        q = tape.norm(q, b * s, "rms_olmo", trainable, ctx.weight_dtype)
        k = tape.norm(k, b * s, "rms_olmo", trainable, ctx.weight_dtype)
    elif att.qk_norm == "per_head":  # same RMSNorm class as the block's (Qwen3: Llama-style, Gemma 3: 1 + w)
        q = tape.norm(q, b * s * nh, block.norm.kind, trainable, ctx.weight_dtype)
        k = tape.norm(k, b * s * kvh, block.norm.kind, trainable, ctx.weight_dtype)
    q = _rope(tape, q, att.rope_dim, ctx)
    k = _rope(tape, k, att.rope_dim, ctx)
    if att.rope_dim and att.rope_dim < att.head_dim:
        q, k = tape.new_like(q), tape.new_like(k)  # torch.cat((rotated, passthrough))
    mask = _sdpa_mask(att, s)
    if ctx.prefix:
        # the cache prepends the trainable prefix to the layer's keys and values (DynamicCache.update's torch.cat),
        # and with more keys than queries transformers hands sdpa an explicit causal mask
        kv = b * (s + ctx.prefix) * kvh
        k, v = T(kv * att.head_dim, k.dtype, True), T(kv * att.v_head_dim, v.dtype, True)
        mask = mask or "full"
    out = _attention_kernel(tape, q, k, v, att.num_heads, att.num_kv_heads, att.head_dim, att.v_head_dim,
                            ctx, softcap=att.logit_softcap, dropout=att.dropout,
                            mask=mask, softmax_fp32=att.softmax_fp32)
    merged = _merge_heads(tape, out, ctx)
    if o_lin.name == "o_proj" and _fused_lora(tape, "o", [o_lin], training):
        return _lora_kernel(tape, merged, [o_lin], ctx)[0]
    return _proj(tape, merged, o_lin, training, ctx)


def _fused_lora(tape: Tape, kernel: str, linears: list[Linear | None], training: BlockTraining) -> bool:
    """Whether axolotl's kernel replaces these projections: asked for, and every one of them carries a plain LoRA
    adapter on a frozen weight (monkeypatch/lora_kernels.py `can_patch_*`); DoRA's kernels save other tensors
    (unmodelled)."""
    return (kernel in tape.lora_kernels and not training.base_trainable and not training.dora
            and all(lin is not None and lin.path in training.lora_paths for lin in linears))


def _lora_kernel(tape: Tape, x: T, linears: list[Linear], ctx: Ctx) -> list[T]:
    """axolotl's LoRA_QKV / LoRA_O (kernels/lora.py): dropout runs outside the Function (`_apply_dropout`, one mask
    shared by the projections); forward saves X, X_drop and each adapter's A and B `.to(X.dtype)` (new tensors when
    the adapters are kept in another dtype), never the rank-r intermediates or peft's up-casts of x. The outputs
    come from `matmul_lora` in X's dtype (the autocast dtype under autocast: `torch_amp_custom_fwd` keeps it)."""
    xd = tape.dropout(x, ctx.lora_dropout)
    tape.save(x, xd)
    _saved_adapters(tape, x, linears, ctx)
    dtype = tape.autocast or x.dtype
    return [T(x.numel // lin.in_features * lin.out_features, dtype, True) for lin in linears]


def _saved_adapters(tape: Tape, x: T, linears: list[Linear], ctx: Ctx) -> None:
    """The kernels' `A.to(X.dtype)`, `B.to(X.dtype)`. Under autocast peft's own layers save autocast's casts of
    the same weights, which this replay leaves out of the eager path, so they are left out here too: counting
    them only on one side would make the kernels look costlier than peft's layers."""
    if ctx.adapter_dtype != x.dtype and not tape.autocast:
        for lin in linears:
            tape.save(T(ctx.lora_rank * lin.in_features, x.dtype, False),
                      T(lin.out_features * ctx.lora_rank, x.dtype, False))


def _merge_heads(tape: Tape, out: T, ctx: Ctx) -> T:
    """transpose(1, 2).contiguous(): a copy after eager matmuls; a no-op after flash-style kernels,
    whose output is already laid out as (batch, seq, heads, dim)."""
    return tape.new_like(out) if ctx.kernel == "eager" else out


def _sdpa_mask(att, seq: int) -> str | None:
    """Which explicit mask transformers hands to sdpa for this layer (None: is_causal, no mask)."""
    if att.sliding_window and att.sliding_window < seq:
        return "sliding"
    return "full" if att.explicit_mask else None


def _attention_kernel(tape: Tape, q: T, k: T, v: T, nh: int, kvh: int, hd: int, vd: int, ctx: Ctx, *,
                      softcap: float | None = None, dropout: float = 0.0, mask: str | None = None,
                      softmax_fp32: bool = True) -> T:
    b, s = ctx.batch, ctx.seq
    kv = s + ctx.prefix  # keys per query row
    grad = q.grad or k.grad or v.grad
    rep = nh // kvh
    if ctx.kernel == "sdpa" and dropout > 0 and tape.device == "cpu":
        # CPU sdpa has no fused kernel with dropout: its math fallback runs in fp32
        q, k, v = T(q.numel, "fp32", q.grad), T(k.numel, "fp32", k.grad), T(v.numel, "fp32", v.grad)
        out = _attention_kernel(tape, q, k, v, nh, kvh, hd, vd, Ctx(**{**ctx.__dict__, "kernel": "eager"}),
                                dropout=dropout, softmax_fp32=False)
        tape.save(tape.new_like(out))
        return T(b * nh * s * vd, ctx.compute, grad)
    if ctx.kernel == "eager":
        if rep > 1 and not (kvh == 1 and b == 1):
            # repeat_kv materialises the grouped heads (a single KV head at batch 1 stays a broadcast view)
            k, v = T(b * nh * kv * hd, k.dtype, k.grad), T(b * nh * kv * vd, v.dtype, v.grad)
        # matmul reshapes the transposed q, k and v (when not already repeated) into contiguous copies
        qc = tape.new_like(q)
        kc = k if rep > 1 else tape.new_like(k)
        v = v if rep > 1 else T(b * nh * kv * vd, v.dtype, v.grad)
        if qc.grad:
            tape.save(kc)
        if kc.grad:
            tape.save(qc)
        scores = T(b * nh * s * kv, q.dtype, grad)
        if softcap:
            scores = tape.unary(scores, "output")
        if softmax_fp32:  # softmax(dtype=float32).to(q.dtype)
            probs = tape.cast(tape.unary(scores, "output", dtype="fp32"), q.dtype)
        else:
            probs = tape.unary(scores, "output")
        probs = tape.dropout(probs, dropout)
        if probs.grad:
            tape.save(v)
        if v.grad:
            tape.save(probs)
        return T(b * nh * s * vd, q.dtype, grad)
    # sdpa / flash-attention: q, k, v, the output and the fp32 log-sum-exp per row.
    # transformers passes enable_gqa=True to sdpa when there is no mask, so grouped heads are
    # not repeated; an explicit mask (sliding window, Gemma 3) forces repeat_kv and is kept for backward.
    if ctx.kernel == "sdpa" and rep > 1 and mask:
        k, v = T(b * nh * kv * hd, k.dtype, k.grad), T(b * nh * kv * vd, v.dtype, v.grad)
    out = T(b * nh * s * vd, q.dtype, grad)
    if grad:
        tape.save(q, k, v, out, T(b * nh * s, "fp32", False))
        if mask and ctx.kernel == "sdpa":  # an additive [b, 1, s, s] mask, one per mask kind
            tape.save(tape.shared.setdefault(f"mask.{mask}", T(b * s * kv, q.dtype, False)))
    return out


def _mla(tape: Tape, x: T, block: Block, training: BlockTraining, ctx: Ctx) -> T:
    """DeepSeek-V3 multi-head latent attention (transformers' DeepseekV3Attention)."""
    att = block.attention
    lins = {lin.name: lin for lin in block.linears if lin.component == "attention"}
    b, s, nh = ctx.batch, ctx.seq, att.num_heads
    trainable = training.base_trainable
    if "q_a_proj" in lins:
        qa = _proj(tape, x, lins["q_a_proj"], training, ctx)
        qa = tape.norm(qa, b * s, "rms", trainable, ctx.weight_dtype)
        q = _proj(tape, qa, lins["q_b_proj"], training, ctx)
    else:
        q = _proj(tape, x, lins["q_proj"], training, ctx)
    ckv = _proj(tape, x, lins["kv_a_proj_with_mqa"], training, ctx)
    latent = tape.norm(ckv.view(b * s * att.kv_lora_rank), b * s, "rms", trainable, ctx.weight_dtype)
    kv = _proj(tape, latent, lins["kv_b_proj"], training, ctx)
    rope = att.rope_dim
    _rope(tape, T(b * s * nh * rope, q.dtype, q.grad), rope, ctx)
    _rope(tape, T(b * s * rope, ckv.dtype, ckv.grad), rope, ctx)
    qs = T(b * s * nh * att.head_dim, q.dtype, q.grad)  # cat(q_pass, q_rot)
    ks = T(b * s * nh * att.head_dim, kv.dtype, kv.grad or ckv.grad)  # cat(k_pass, k_rot.expand)
    v = kv.view(b * s * nh * att.v_head_dim)
    out = _attention_kernel(tape, qs, ks, v, nh, nh, att.head_dim, att.v_head_dim, ctx, dropout=att.dropout)
    return _proj(tape, _merge_heads(tape, out, ctx), lins["o_proj"], training, ctx)


def _gated(tape: Tape, x: T, linears: list[Linear], activation: str, training: BlockTraining, ctx: Ctx) -> T:
    by_name = {lin.name: lin for lin in linears}
    # find_mlp_in_layer patches the layer's own dense MLP only, not a MoE block's shared expert
    if _fused_lora(tape, "mlp", [by_name.get(n) for n in ("gate_proj", "up_proj", "down_proj")], training) and (
            activation == "silu" or activation.startswith("gelu")) and linears[0].component == "mlp":
        return _lora_mlp(tape, x, [by_name[n] for n in ("gate_proj", "up_proj", "down_proj")], ctx)
    if "gate_up_proj" in by_name:  # Phi-3: one projection, chunked into views
        lin = by_name["gate_up_proj"]
        gu = _proj(tape, x, lin, training, ctx)
        half = gu.numel // 2
        gate, up = gu.view(half), gu.view(half)
        down = by_name["down_proj"]
    else:
        gate = _proj(tape, x, by_name["gate_proj"], training, ctx)
        up = _proj(tape, x, by_name["up_proj"], training, ctx)
        down = by_name["down_proj"]
    if "glu" in tape.liger:
        return _proj(tape, _liger_glu(tape, gate, up, "gate_up_proj" in by_name), down, training, ctx)
    act = tape.activation(gate, activation)
    return _proj(tape, tape.mul(act, up), down, training, ctx)


def _lora_mlp(tape: Tape, x: T, linears: list[Linear], ctx: Ctx) -> T:
    """axolotl's LoRA_MLP (kernels/lora.py, applied by `apply_lora_mlp_swiglu` / `_geglu`): forward saves X, X_drop,
    the gate and up projections' outputs and the six adapters' A and B in X's dtype; the activation's output
    (down's input) is recomputed in backward from gate and up (`swiglu_backward` / `geglu_backward`)."""
    gate, up, down = linears
    xd = tape.dropout(x, ctx.lora_dropout)
    dtype = tape.autocast or x.dtype
    rows = x.numel // gate.in_features
    tape.save(x, xd, T(rows * gate.out_features, dtype, True), T(rows * up.out_features, dtype, True))
    _saved_adapters(tape, x, linears, ctx)
    return T(rows * down.out_features, dtype, True)


def _liger_glu(tape: Tape, gate: T, up: T, halves: bool) -> T:
    """LigerSiLUMulFunction.forward (liger_kernel/ops/swiglu.py) and LigerGELUMulFunction.forward (ops/geglu.py)
    keep their two inputs and return a new product in the gate's dtype (swiglu_forward's `empty_like(a)`), so the
    activation's own output is never kept. `@ensure_contiguous` copies a non-contiguous input first: Phi-3's
    chunked gate_up halves (LigerPhi3SwiGLUMLP) are saved as two new tensors."""
    grad = gate.grad or up.grad
    if grad:
        if halves:
            gate, up = T(gate.numel, gate.dtype, gate.grad), T(up.numel, up.dtype, up.grad)
        tape.save(gate, up)
    return T(gate.numel, gate.dtype, grad)


def _moe(tape: Tape, x: T, block: Block, training: BlockTraining, ctx: Ctx) -> T:
    """Router + routed experts (+ shared experts), as transformers 5 runs them."""
    mlp = block.mlp
    n_tok, d, inter, e = ctx.tokens, ctx.hidden, mlp.intermediate_size, mlp.num_experts
    trainable = training.base_trainable
    wrapped = training.lora_params
    _param_wrapper(tape, wrapped_tensors(block, d, wrapped, ctx.lora_rank), ctx)
    logits = tape.linear(x, e, d, trainable or "router" in wrapped)
    scores = tape.unary(T(logits.numel, "fp32", logits.grad), "output")  # softmax / sigmoid in fp32
    slots = n_tok * mlp.top_k
    if scores.grad:
        tape.save(T(slots, "int64", False))  # top-k indices
    weights = T(slots, "fp32", scores.grad)
    if mlp.router == "softmax" and scores.grad:
        tape.save(weights, T(n_tok, "fp32", True))  # normalising top-k: value / sum
    # experts: gather each routed token, gate_up, act * up, down, scale by its router weight
    gathered = T(slots * d, x.dtype, x.grad)
    if x.grad:
        tape.save(T(slots, "int64", False))  # token indices of the gather
    gu = tape.linear(gathered, 2 * inter, d, trainable or "gate_up" in wrapped)
    gate, up = gu.view(slots * inter), gu.view(slots * inter)
    prod = tape.mul(tape.activation(gate, mlp.activation), up)
    down = tape.linear(prod, d, inter, trainable or "down" in wrapped)
    tape.mul(down, T(slots, "fp32", weights.grad))
    if down.grad:
        tape.save(T(slots, "int64", False), T(slots, "int64", False))  # index_add_ and weight gather
    out = T(n_tok * d, x.dtype, down.grad or weights.grad)
    shared = [lin for lin in block.linears if lin.component == "shared_expert"]
    if mlp.shared_intermediate_size:
        shared_mlp = [lin for lin in shared if lin.name != "shared_expert_gate"]
        sh = _gated(tape, x, shared_mlp, mlp.activation, training, ctx)
        if mlp.shared_expert_gate:
            gate_lin = next(lin for lin in shared if lin.name == "shared_expert_gate")
            g = tape.unary(_proj(tape, x, gate_lin, training, ctx), "output")  # sigmoid
            sh = tape.mul(g, sh)
        out = tape.add(out, sh)
    return out


def _param_wrapper(tape: Tape, wrapped: list[WrappedTensor], ctx: Ctx) -> None:
    """peft's ParamWrapper materialises W + BA for the whole tensor on every forward.

    Experts use `torch.baddbmm(W, B, A)` (saving B and A cast to W's dtype); the router adds B @ A.
    The merged tensor requires grad, so it is saved by the matmuls that use it.
    """
    wdt = ctx.weight_dtype
    for w in wrapped:
        if w.experts > 1 and ctx.adapter_dtype != wdt:
            tape.save(T(w.experts * w.out_features * w.rank, wdt, False),
                      T(w.experts * w.rank * w.in_features, wdt, False))
        tape.save(T(w.numel, wdt, True))


def _mlp(tape: Tape, x: T, block: Block, training: BlockTraining, ctx: Ctx) -> T:
    mlp = block.mlp
    if mlp.kind == "moe":
        return _moe(tape, x, block, training, ctx)
    linears = [lin for lin in block.linears if lin.component == "mlp"]
    if mlp.kind == "gated":
        return _gated(tape, x, linears, mlp.activation, training, ctx)
    up, down = linears
    h = _proj(tape, x, up, training, ctx)
    return _proj(tape, tape.activation(h, mlp.activation), down, training, ctx)


def replay_block(tape: Tape, x: T, block: Block, training: BlockTraining, ctx: Ctx) -> T:
    """One decoder block; returns the block output (the next block's input)."""
    rows = ctx.tokens
    trainable = training.base_trainable

    def norm(h: T) -> T:
        return tape.norm(h, rows, block.norm.kind, trainable, ctx.weight_dtype, block.norm.bias)

    def adapted(out: T) -> T:  # a sublayer's output, through its Houlsby adapter when the block has one
        return tape.bottleneck(out, ctx.hidden, ctx.adapter_width, ctx.adapter_dtype) if training.adapter else out

    def attention(h: T) -> T:
        return adapted(_attention(tape, h, block, training, ctx))

    def mlp(h: T) -> T:
        return adapted(_mlp(tape, h, block, training, ctx))

    p = block.residual_dropout
    if block.layout == "pre":
        h = tape.add(x, tape.dropout(attention(norm(x)), p))
        return tape.add(h, tape.dropout(mlp(norm(h)), p))
    if block.layout == "sandwich":
        h = tape.add(x, norm(attention(norm(x))))
        return tape.add(h, norm(mlp(norm(h))))
    if block.layout == "post":
        h = tape.add(x, norm(attention(x)))
        return tape.add(h, norm(mlp(h)))
    # parallel: attention and MLP read the same input (one shared norm or one each)
    xa = norm(x)
    xm = xa if block.num_norms == 1 else norm(x)
    a = tape.dropout(attention(xa), p)
    m = tape.dropout(mlp(xm), p)
    return tape.add(tape.add(x, a), m)


# ------------------------------------------------------------------ model


def _shared_bytes(tape: Tape) -> int:
    return sum(t.storage.nbytes for t in tape.shared.values() if id(t.storage) in tape.saved)


@dataclass(frozen=True)  # shared: planner.memory memoizes the replay
class ActivationBytes:
    """Saved-for-backward bytes of one forward pass (one micro-batch)."""

    blocks: int  # everything saved inside the decoder blocks
    outside: int  # embeddings, final norm, LM-head input
    logits: int  # saved by the LM head's output path and the loss (log-softmax in fp32, targets)
    per_block_max: int  # the largest single block, for recomputation under checkpointing
    per_layer: list[int]
    # what checkpointing keeps instead of `blocks`: each block's input, in the residual stream's
    # real dtype (fp32 under autocast when the embeddings are fp32); per layer, and their sum
    input_per_layer: list[int]

    @property
    def block_inputs(self) -> int:
        return sum(self.input_per_layer)

    @property
    def total(self) -> int:
        return self.blocks + self.outside + self.logits


def saved_bytes(spec: ModelSpec, trainings: list[BlockTraining], *, batch: int, seq: int, compute: str,
                weight_dtypes: tuple[str, str], kernel: str, autocast: str | None = None,
                embeddings_trainable: bool = False, head_trainable: bool = False, input_grad: bool = False,
                lora_rank: int = 8, lora_dropout: float = 0.0, adapter_dtype: str = "fp32",
                device: str = "cuda", head: str = "logits", head_width: int | None = None,
                scored: int | None = None, head_linear_trainable: bool | None = None,
                logit_tokens: int | None = None, nll_term: bool = True, prefix: int = 0,
                prompt_tokens: int = 0, prompt_encoder: int = 0, oft: tuple[int, int] = (32, 0),
                adapter_width: int = 0, liger: frozenset[str] = frozenset(),
                quantized: bool = False, lora_kernels: frozenset[str] = frozenset()) -> ActivationBytes:
    """Replay the whole forward + loss once.

    `weight_dtypes` is (dtype of trainable weights, dtype of frozen weights): norms
    promote their output to the weight's dtype, which matters under autocast.
    `input_grad` models `enable_input_require_grads()` (used with gradient checkpointing).
    `head` is what the output head and loss save (planner.stages): "logits" (the LM head and a cross-entropy
    over its fp32 up-cast), "fused" (a fused linear cross-entropy), "chunked" (TRL's fused log-prob head over
    `scored` positions in all), "value" (a value or classification head of `head_width` outputs, with no loss
    over them) or "logps" (TRL's ORPO/CPO log-probs over logits kept in their own dtype, with the NLL term on the
    chosen half unless `nll_term` is off).
    Prompt learning: `prefix` virtual keys and values precede each layer's own; `prompt_tokens` of the `seq`
    are trained embeddings prepended to the input (so the whole input requires grad), and `prompt_encoder` is
    what the encoder that makes them saves. `oft` and `adapter_width` size OFT's rotations and Houlsby adapters.
    `liger` names the Liger kernels that replace eager ops (planner.liger.applied); `lora_kernels` axolotl's fused
    LoRA Functions (planner.lora_kernels.applied).
    """
    tape = Tape(autocast=autocast, device=device, liger=liger, lora_kernels=lora_kernels)
    tokens, d = batch * seq, spec.hidden_size
    emb_dtype = weight_dtypes[0] if embeddings_trainable else weight_dtypes[1]
    x = tape.embedding(tokens, d, emb_dtype, embeddings_trainable, input_grad or prompt_tokens > 0)
    if prompt_encoder:
        tape.save(T(prompt_encoder, "uint8", False))
    x = tape.dropout(x, spec.embedding_dropout)
    embedding_bytes = tape.bytes()
    per_layer: list[int] = []
    input_per_layer: list[int] = []
    # Identical blocks with the same training and input save the same bytes: replay each
    # distinct one once. Storages shared across layers (rotary cos/sin) are counted once.
    memo: dict[tuple, tuple[int, T]] = {}
    if len(trainings) != spec.num_layers:
        raise ValueError(f"{len(trainings)} BlockTrainings for {spec.num_layers} layers")
    i = 0
    for group in spec.blocks:
        block, end = group.block, i + group.count
        while i < end:
            training = trainings[i]
            input_per_layer.append(x.numel * DTYPE_BYTES[x.dtype])
            key = (id(block), training, x.grad, x.dtype)
            if key in memo:
                nbytes, out = memo[key]
                per_layer.append(nbytes)
                x = T(out.numel, out.dtype, out.grad)
            else:
                before, shared_before = tape.bytes(), _shared_bytes(tape)
                wdt = weight_dtypes[0] if training.base_trainable else weight_dtypes[1]
                ctx = Ctx(batch=batch, seq=seq, hidden=d, compute=compute, weight_dtype=wdt, kernel=kernel,
                          lora_rank=lora_rank, lora_dropout=lora_dropout, adapter_dtype=adapter_dtype,
                          prefix=prefix, oft=oft, adapter_width=adapter_width, quantized=quantized)
                x = replay_block(tape, x, block, training, ctx)
                nbytes = tape.bytes() - before
                memo[key] = (nbytes - (_shared_bytes(tape) - shared_before), x)
                per_layer.append(nbytes)
            i += 1
            if (x.grad, x.dtype) != key[2:]:
                continue
            # The next layers of the group that train the same way get this very input again, so each is the
            # memo hit above: add them all at once, and a model of 1,000 layers costs what one of 10 does.
            repeat = i
            while repeat < end and (trainings[repeat] is training or trainings[repeat] == training):
                repeat += 1
            if repeat > i:
                nbytes, out = memo[key]
                per_layer.extend([nbytes] * (repeat - i))
                input_per_layer.extend([x.numel * DTYPE_BYTES[x.dtype]] * (repeat - i))
                x, i = T(out.numel, out.dtype, out.grad), repeat
    blocks = sum(per_layer)
    unreplayed = blocks - (tape.bytes() - embedding_bytes)
    head_dtype = weight_dtypes[0] if head_trainable else weight_dtypes[1]
    x = tape.norm(x, tokens, spec.final_norm.kind, head_trainable, head_dtype, spec.final_norm.bias)
    width = head_width or spec.vocab_size
    if head in ("logits", "value", "logps"):
        # the head itself may train while the final norm does not (peft's modules_to_save copy of a `score`)
        logits = tape.linear(x, width, d, head_trainable if head_linear_trainable is None else head_linear_trainable)
        if logit_tokens is not None and head == "logits":  # `logits_to_keep`: the head runs on the last positions
            logits = T(logit_tokens * width, logits.dtype, logits.grad)
    outside = tape.bytes() + unreplayed - blocks
    tape.region = "logits"
    if head == "chunked":
        # trl/kernels/chunked_logprob.py ChunkedLogProbFunction.forward saves a copy of the scored hidden
        # states (`hidden_states[mask]`, or a reshape of the shifted slice off CUDA), fp32 log-normalisers and
        # entropies, and the targets
        if x.grad or head_trainable:
            n = scored if scored is not None else tokens
            tape.save(T(n * d, x.dtype, False), T(n, "fp32", False), T(n, "fp32", False), T(n, "int64", False))
    elif head == "value":
        pass  # the score of each sequence's last token and a log-sigmoid of pair differences: a few bytes
    elif head == "logps":
        # TRL's ORPO/CPO (trl/experimental/orpo concatenated_forward): logits in their own dtype; the NLL on the
        # chosen half saves its log-softmax (CPO skips it when cpo_alpha is 0, cpo_trainer.py); selective_log_softmax
        # (trl/trainer/utils.py) keeps the fp32 logits themselves (logsumexp), or one 16-bit log-softmax per row
        if logits.grad:
            shifted = batch * (seq - 1)
            if nll_term:
                tape.save(T(batch // 2 * (seq - 1) * width, logits.dtype, False))
            tape.save(T(shifted, "int64", False))
            tape.save(logits if logits.dtype == "fp32" else T(shifted * width, logits.dtype, False))
    elif head == "fused":
        # fused linear cross-entropy (Liger, Cut Cross-Entropy): logits are made chunk by chunk inside
        # the loss, which computes d(loss)/d(hidden) during forward and keeps only that for backward
        if x.grad:
            tape.save(T(tokens * d, x.dtype, False))
    else:
        if spec.final_logit_softcap:
            logits = tape.unary(logits, "output")  # tanh(logits / cap) * cap
        if logits.grad:
            kept = logits.numel // spec.vocab_size
            if "cross_entropy" in tape.liger:
                # LigerCrossEntropyFunction.forward (liger_kernel/ops/cross_entropy.py) writes the gradient into
                # its input, the loss's fp32 up-cast of the logits, and saves only that (no targets)
                tape.save(T(kept * spec.vocab_size, "fp32", False))
            else:
                tape.save(T(kept * spec.vocab_size, "fp32", True), T(kept, "int64", False))  # log_softmax, target
    return ActivationBytes(blocks=blocks, outside=outside, logits=tape.bytes("logits"),
                           per_block_max=max(per_layer, default=0), per_layer=per_layer,
                           input_per_layer=input_per_layer)
