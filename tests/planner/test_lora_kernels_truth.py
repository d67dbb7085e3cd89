"""axolotl's fused LoRA kernels (lora_qkv_kernel, lora_o_kernel, lora_mlp_kernel) against the bytes autograd saves.

axolotl's Functions (src/axolotl/kernels/lora.py: LoRA_QKV, LoRA_O, LoRA_MLP) call Triton only for the activation,
so each is rewritten here for the CPU from its source: a forward that saves exactly what the original's
`ctx.save_for_backward` keeps (X, X_drop or X again, the adapters' A and B `.to(X.dtype)`, and for the MLP the gate
and up outputs), with a backward that recomputes the same gradients by plain autograd. They are patched onto peft
models the way src/axolotl/monkeypatch/lora_kernels.py `apply_lora_kernel_patches` does (q/k/v share one Function
call, o_proj and the MLP forward are replaced), and the planner's replay is compared with `saved_tensors_hooks`.
"""

from __future__ import annotations

import types

import pytest

from planner.memory import estimate_memory
from planner.plan import Plan
from planner.spec import spec_from_config
from planner.target import Machine
from tests.planner.configs import random_config
from tests.planner.truth import build_model, measure_saved_bytes, random_ids

torch = pytest.importorskip("torch")
F = torch.nn.functional
CPU = Machine(device="cpu")


def _lora_parts(layer):
    """peft's LoRA Linear as kernels/lora.py get_lora_parameters reads it: W, A, B, scale, dropout module."""
    return (layer.base_layer.weight, layer.lora_A["default"].weight, layer.lora_B["default"].weight,
            layer.scaling["default"], layer.lora_dropout["default"])


def _matmul_lora(x, x_drop, w, a, b, s):
    """kernels/lora.py matmul_lora: X @ W^T + s * (X_drop @ A^T.to(X.dtype)) @ B^T.to(X.dtype)."""
    return x @ w.t() + s * ((x_drop @ a.t().to(x.dtype)) @ b.t().to(x.dtype))


def _regrad(fn, inputs: tuple, grads_out: tuple) -> tuple:
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(t.requires_grad) for t in inputs]
        outs = fn(*leaves)
        outs = outs if isinstance(outs, tuple) else (outs,)
        wanted = [t for t in leaves if t.requires_grad]
        grads = iter(torch.autograd.grad(outs, wanted, grads_out, allow_unused=True))
    return tuple(next(grads) if t.requires_grad else None for t in leaves)


def _triples(params: tuple) -> list[tuple]:
    return [params[i:i + 3] for i in range(0, len(params), 3)]


class LoRAProjRef(torch.autograd.Function):
    """LoRA_QKV (n = 3) and LoRA_O (n = 1): inputs X, X_drop, then (W, A, B) per projection; scales in ctx."""

    @staticmethod
    def eager(scales, x, x_drop, *params):
        return tuple(_matmul_lora(x, x_drop, w, a, b, s)
                     for (w, a, b), s in zip(_triples(params), scales, strict=True))

    @staticmethod
    def forward(ctx, scales, x, x_drop, *params):
        ctx.scales, ctx.params = scales, params  # the original keeps the weights as ctx attributes too
        casts = [t.to(x.dtype) for (_, a, b) in _triples(params) for t in (a, b)]
        ctx.save_for_backward(x, x_drop, *casts)
        out = LoRAProjRef.eager(scales, x, x_drop, *params)
        return out if len(out) > 1 else out[0]

    @staticmethod
    def backward(ctx, *grads):
        x, x_drop = ctx.saved_tensors[:2]
        x.requires_grad_(True), x_drop.requires_grad_(True)
        g = _regrad(lambda *t: LoRAProjRef.eager(ctx.scales, *t), (x, x_drop, *ctx.params), grads)
        return (None, *g)


class LoRAMLPRef(torch.autograd.Function):
    """LoRA_MLP: gate and up through matmul_lora, act(gate) * up (swiglu_forward / geglu_forward), down; saves X,
    X_drop, gate, up and the six A/B casts; backward recomputes the activation from gate and up."""

    @staticmethod
    def act(gate, up, gelu: bool):
        return (F.gelu(gate, approximate="tanh") if gelu else F.silu(gate)) * up

    @staticmethod
    def eager(scales, gelu, x, x_drop, gw, ga, gb, uw, ua, ub, dw, da, db):
        gate = _matmul_lora(x, x_drop, gw, ga, gb, scales[0])
        up = _matmul_lora(x, x_drop, uw, ua, ub, scales[1])
        h = LoRAMLPRef.act(gate, up, gelu)
        return _matmul_lora(h, h, dw, da, db, scales[2])

    @staticmethod
    def forward(ctx, scales, gelu, x, x_drop, *params):
        gw, ga, gb, uw, ua, ub, dw, da, db = params
        gate = _matmul_lora(x, x_drop, gw, ga, gb, scales[0])
        up = _matmul_lora(x, x_drop, uw, ua, ub, scales[1])
        ctx.scales, ctx.gelu, ctx.params = scales, gelu, params
        ctx.save_for_backward(x, x_drop, gate, up, *[t.to(x.dtype) for t in (ga, gb, ua, ub, da, db)])
        h = LoRAMLPRef.act(gate, up, gelu)
        return _matmul_lora(h, h, dw, da, db, scales[2])

    @staticmethod
    def backward(ctx, grad):
        x, x_drop = ctx.saved_tensors[:2]
        x.requires_grad_(True), x_drop.requires_grad_(True)
        g = _regrad(lambda *t: LoRAMLPRef.eager(ctx.scales, ctx.gelu, *t), (x, x_drop, *ctx.params), (grad,))
        return (None, None, *g)


def _dropped(drop, x):
    """kernels/lora.py _apply_dropout: outside the Function, one mask for every projection; none at p = 0."""
    return x if isinstance(drop, torch.nn.Identity) else drop(x)


def _proj_params(layers):
    parts = [_lora_parts(layer) for layer in layers]
    return tuple(s for *_, s, _ in parts), [t for w, a, b, _, _ in parts for t in (w, a, b)], parts[0][4]


def patch(model, kernels: set[str]) -> None:
    """apply_lora_kernel_patches on a peft model: every layer whose projections all carry LoRA adapters."""
    for module in model.get_base_model().modules():
        if "qkv" in kernels and all(hasattr(getattr(module, n, None), "lora_A") for n in ("q_proj", "k_proj",
                                                                                            "v_proj")):
            _patch_qkv(module)
        if "o" in kernels and hasattr(getattr(module, "o_proj", None), "lora_A"):
            scales, params, drop = _proj_params([module.o_proj])
            module.o_proj.forward = lambda x, s=scales, p=params, d=drop: LoRAProjRef.apply(s, x, _dropped(d, x), *p)
        if "mlp" in kernels and all(hasattr(getattr(module, n, None), "lora_A") for n in ("gate_proj", "up_proj",
                                                                                            "down_proj")):
            gelu = "gelu" in str(getattr(module.config, "hidden_act", ""))
            scales, params, drop = _proj_params([module.gate_proj, module.up_proj, module.down_proj])
            module.forward = types.MethodType(
                lambda self, x, s=scales, p=params, d=drop, g=gelu: LoRAMLPRef.apply(s, g, x, _dropped(d, x), *p),
                module)


def _patch_qkv(attn) -> None:
    """One LoRA_QKV call for the three projections: q_proj runs it on the shared input, k_proj and v_proj hand
    back its other outputs (transformers calls them in that order on the same hidden states)."""
    scales, params, drop = _proj_params([attn.q_proj, attn.k_proj, attn.v_proj])
    kept: dict = {}

    def q_forward(x):
        q, k, v = LoRAProjRef.apply(scales, x, _dropped(drop, x), *params)
        kept.update(k=k, v=v)
        return q

    attn.q_proj.forward = q_forward
    attn.k_proj.forward = lambda x: kept.pop("k")
    attn.v_proj.forward = lambda x: kept.pop("v")


def _compare(model_type: str, kernels: str, *, precision: str = "bf16", dropout: float = 0.0, batch: int = 2,
             seq: int = 24) -> tuple[float, int, int]:
    config = random_config(model_type, 0, layers=2)
    spec = spec_from_config(config, source="test")
    plan = Plan(method="lora", precision=precision, attention="sdpa", batch_size=batch, seq_len=seq, lora_rank=4,
                lora_target="all-linear", lora_dropout=dropout, lora_kernels=kernels)
    est = estimate_memory(spec, plan, machine=CPU)
    model = build_model(config, method="lora", precision=precision, kernel="sdpa", lora_rank=4,
                        lora_target="all-linear", lora_dropout=dropout)
    patch(model, set(kernels.split(",")) - {""})
    real = measure_saved_bytes(model, batch, seq, config["vocab_size"],
                               autocast="bf16" if precision == "bf16-mixed" else None)
    ours = est.largest["activations"] + est.largest["logits"]
    return (ours - real) / real, ours, real


@pytest.mark.parametrize("model_type", ["llama", "qwen3", "gemma"])
@pytest.mark.parametrize("kernels", ["qkv", "o", "mlp", "qkv,o,mlp"])
def test_each_kernel_matches_what_its_function_saves(model_type: str, kernels: str) -> None:
    err, ours, real = _compare(model_type, kernels)
    assert abs(err) <= 0.03, f"ours {ours} vs real {real} ({err:+.1%})"


@pytest.mark.parametrize("precision", ["fp32", "bf16-mixed"])
def test_kernels_at_other_precisions(precision: str) -> None:
    err, ours, real = _compare("llama", "qkv,o,mlp", precision=precision)
    assert abs(err) <= 0.03, f"ours {ours} vs real {real} ({err:+.1%})"


def test_kernels_with_dropout() -> None:
    err, ours, real = _compare("llama", "qkv,o,mlp", dropout=0.1)
    assert abs(err) <= 0.03, f"ours {ours} vs real {real} ({err:+.1%})"


def test_the_kernels_save_less_than_peft_layers() -> None:
    """Truth against truth: the same LoRA model saves fewer bytes with the three kernels in place."""
    config = random_config("llama", 0, layers=2)
    plain = measure_saved_bytes(build_model(config, method="lora", lora_target="all-linear"), 2, 24,
                                config["vocab_size"])
    model = build_model(config, method="lora", lora_target="all-linear")
    patch(model, {"qkv", "o", "mlp"})
    assert measure_saved_bytes(model, 2, 24, config["vocab_size"]) < 0.9 * plain


@pytest.mark.parametrize("model_type", ["llama", "gemma"])
def test_the_references_compute_peft_gradients(model_type: str) -> None:
    """The CPU references are a truth only if they are the same functions: same loss, same adapter gradients."""
    config = random_config(model_type, 0, layers=2)
    ids = random_ids(2, 12, config["vocab_size"])

    def grads(kernels: set[str]):
        model = build_model(config, method="lora", precision="fp32", lora_target="all-linear")
        for name, p in model.named_parameters():
            if "lora_B" in name:  # peft starts B at zero, which would hide a wrong A gradient
                torch.nn.init.normal_(p, std=0.02)
        patch(model, kernels)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    loss, plain = grads(set())
    fused_loss, fused = grads({"qkv", "o", "mlp"})
    assert torch.allclose(loss, fused_loss, atol=1e-5)
    for name, grad in plain.items():
        assert torch.allclose(grad, fused[name], atol=1e-5, rtol=1e-4), name


def test_dora_and_unadapted_projections_keep_peft_saves() -> None:
    """The kernels patch only where every fused projection has a plain LoRA adapter (can_patch_*); DoRA's
    kernels save more and are not modelled, so such plans keep peft's replay."""
    spec = spec_from_config(random_config("llama", 0, layers=2), source="test")
    base = dict(method="lora", precision="bf16", batch_size=2, seq_len=24, lora_rank=4)

    def acts(**kw):
        return estimate_memory(spec, Plan(**{**base, **kw}), machine=CPU).largest["activations"]

    assert acts(lora_target="q_proj,v_proj", lora_kernels="qkv") == acts(lora_target="q_proj,v_proj")
    assert acts(lora_target="all-linear", use_dora=True, lora_kernels="qkv,o,mlp") == acts(
        lora_target="all-linear", use_dora=True)


def test_kernel_names() -> None:
    from planner.errors import FtplanError

    assert Plan.build(lora_kernels="mlp, lora_qkv_kernel,o").lora_kernels == "qkv,o,mlp"
    with pytest.raises(FtplanError, match="unknown LoRA kernel 'swiglu'"):
        Plan.build(lora_kernels="swiglu")
