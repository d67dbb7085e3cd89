"""Liger's kernels besides the fused loss, against the bytes autograd really saves with them in place.

Liger's kernels are Triton (GPU only), so each autograd Function is rewritten here for the CPU from its source
(Liger-Kernel, src/liger_kernel/ops): a forward that saves exactly what Liger's forward saves, in the same dtypes
and storages, and a backward that computes the same gradients with plain torch. They are patched into tiny
transformers models the way liger_kernel/transformers/monkey_patch.py patches a model instance (module forwards
rebound; `apply_rotary_pos_emb` and `nn.functional.cross_entropy` replaced), and the planner's replay is checked
against `saved_tensors_hooks`. A gradient check against the unpatched model keeps the references honest.
"""

from __future__ import annotations

import types

import pytest

from planner.memory import estimate_memory
from planner.plan import Plan
from planner.service import plan_run
from planner.spec import spec_from_config
from planner.target import Machine
from tests.planner.configs import random_config
from tests.planner.truth import build_model, measure_saved_bytes, random_ids

torch = pytest.importorskip("torch")
F = torch.nn.functional
CPU = Machine(device="cpu")


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _regrad(fn, inputs: tuple, grad_out) -> tuple:
    """The gradients of `fn(*inputs)` by plain autograd, for a backward that recomputes from what was saved."""
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(t.is_floating_point()) for t in inputs]
        out = fn(*leaves)
        wanted = [t for t in leaves if t.requires_grad]
        grads = iter(torch.autograd.grad(out, wanted, grad_out))
    return tuple(next(grads) if t.requires_grad else None for t in leaves)


class RMSNormRef(torch.autograd.Function):
    """ops/rms_norm.py LigerRMSNormFunction: rms_norm_forward writes Y in X's dtype and an fp32 RSTD per row
    (llama and gemma casting modes); forward saves X (contiguous), W and RSTD."""

    @staticmethod
    def eager(x, w, eps: float, offset: float, gemma: bool):
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
        if gemma:  # everything in fp32, cast at the end
            return (normed * (offset + w.float())).to(x.dtype)
        return (normed.to(x.dtype) * (offset + w)).to(x.dtype)  # llama: only the rstd in fp32

    @staticmethod
    def forward(ctx, x, w, eps, offset, gemma):
        x = x.contiguous()
        rstd = torch.rsqrt(x.float().pow(2).mean(-1) + eps)
        ctx.eps, ctx.offset, ctx.gemma = eps, offset, gemma
        ctx.save_for_backward(x, w, rstd)
        return RMSNormRef.eager(x, w, eps, offset, gemma)

    @staticmethod
    def backward(ctx, dy):
        x, w, _ = ctx.saved_tensors
        dx, dw = _regrad(lambda a, b: RMSNormRef.eager(a, b, ctx.eps, ctx.offset, ctx.gemma), (x, w), dy)
        return dx, dw, None, None, None


class GatedRef(torch.autograd.Function):
    """ops/swiglu.py LigerSiLUMulFunction and ops/geglu.py LigerGELUMulFunction: `@ensure_contiguous` inputs,
    c = act(a) * b in a's dtype (`empty_like(a)`), a and b saved."""

    @staticmethod
    def eager(a, b, gelu: bool):
        act = F.gelu(a.float(), approximate="tanh") if gelu else F.silu(a.float())
        return act.to(b.dtype) * b

    @staticmethod
    def forward(ctx, a, b, gelu):
        a, b = a.contiguous(), b.contiguous()
        ctx.gelu = gelu
        ctx.save_for_backward(a, b)
        return GatedRef.eager(a, b, gelu)

    @staticmethod
    def backward(ctx, dc):
        a, b = ctx.saved_tensors
        return (*_regrad(lambda x, y: GatedRef.eager(x, y, ctx.gelu), (a, b), dc), None)


class RopeRef(torch.autograd.Function):
    """ops/rope.py LigerRopeFunction: rope_forward transposes q and k back to (batch, seq, heads, dim), makes them
    contiguous (a copy only for a view of a larger storage), rotates them in place and returns them; cos and sin
    are saved. The rotation's transpose is the rotation by -theta, which backward applies."""

    @staticmethod
    def _rotate(x, cos, sin):
        return x * cos + _rotate_half(x) * sin

    @staticmethod
    def forward(ctx, q, k, cos, sin):
        cos, sin = cos.contiguous(), sin.contiguous()
        c, s = cos.unsqueeze(2), sin.unsqueeze(2)
        out = []
        for x in (q, k):
            x = x.transpose(1, 2).contiguous()
            x.data.copy_(RopeRef._rotate(x, c, s).to(x.dtype))  # in place, unseen by autograd, as Triton writes
            out.append(x.transpose(1, 2))
        ctx.save_for_backward(cos, sin)
        return tuple(out)

    @staticmethod
    def backward(ctx, dq, dk):
        cos, sin = ctx.saved_tensors
        c, s = cos.unsqueeze(1), sin.unsqueeze(1)
        return RopeRef._rotate(dq, c, -s), RopeRef._rotate(dk, c, -s), None, None


class CrossEntropyRef(torch.autograd.Function):
    """ops/cross_entropy.py LigerCrossEntropyFunction: the kernel writes d(loss)/d(input) into the input during
    forward and saves `_input.detach()`; backward scales it by the incoming gradient."""

    @staticmethod
    def forward(ctx, x, target, ignore_index, reduction):
        valid = target != ignore_index
        logp = x.float().log_softmax(-1)
        rows = torch.arange(len(target))[valid]
        loss = -logp[rows, target[valid]].sum()
        grad = logp.exp()
        grad[rows, target[valid]] -= 1
        grad[~valid] = 0
        if reduction == "mean":
            count = valid.sum().clamp(min=1)
            loss, grad = loss / count, grad / count
        x.data.copy_(grad.to(x.dtype))
        ctx.save_for_backward(x.detach())
        return loss.to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        (grad,) = ctx.saved_tensors
        return grad * g, None, None, None


def liger_cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
                        reduction="mean", label_smoothing=0.0):
    return CrossEntropyRef.apply(input, target, ignore_index, reduction)


def _rms_forward(gemma: bool):
    def forward(self, hidden):
        eps = getattr(self, "variance_epsilon", getattr(self, "eps", 1e-6))
        return RMSNormRef.apply(hidden, self.weight, eps, 1.0 if gemma else 0.0, gemma)

    return forward


def _mlp_forward(self, x):
    gelu = "gelu" in str(getattr(self.config, "hidden_act", ""))
    if hasattr(self, "gate_up_proj"):  # LigerPhi3SwiGLUMLP: chunked halves
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
    else:
        gate, up = self.gate_proj(x), self.up_proj(x)
    return self.down_proj(GatedRef.apply(gate, up, gelu))


def patch(model, kernels: set[str], monkeypatch) -> None:
    """Liger's kernels on a model instance, as `apply_liger_kernel_to_<type>(model=...)` installs them (every
    RMSNorm, the q/k norms too, as a patch before loading swaps the class)."""
    import importlib

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    model_type = base.config.model_type
    gemma = model_type.startswith("gemma")
    for module in base.modules():
        name = type(module).__name__
        if "rms_norm" in kernels and name.endswith("RMSNorm"):
            module.forward = types.MethodType(_rms_forward(gemma), module)
        if "glu" in kernels and name.endswith("MLP") and (hasattr(module, "gate_proj")
                                                            or hasattr(module, "gate_up_proj")):
            module.forward = types.MethodType(_mlp_forward, module)
    if "rope" in kernels:
        modeling = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
        monkeypatch.setattr(modeling, "apply_rotary_pos_emb",
                            lambda q, k, cos, sin, *a, **kw: RopeRef.apply(q, k, cos, sin))
    if "cross_entropy" in kernels:
        monkeypatch.setattr(F, "cross_entropy", liger_cross_entropy)


def _compare(model_type: str, kernels: str, *, method: str = "full", precision: str = "bf16",
             batch: int = 2, seq: int = 24, monkeypatch) -> tuple[float, int, int]:
    config = random_config(model_type, 0, layers=2)
    spec = spec_from_config(config, source="test")
    plan = Plan(method=method, precision=precision, attention="sdpa", batch_size=batch, seq_len=seq, lora_rank=4,
                lora_target="all-linear", liger_kernels=kernels)
    est = estimate_memory(spec, plan, machine=CPU)
    model = build_model(config, method=method, precision=precision, kernel="sdpa", lora_rank=4,
                        lora_target="all-linear")
    applied = set(kernels.split(",")) if kernels != "default" else {"rope", "rms_norm", "glu"}
    patch(model, applied, monkeypatch)
    real = measure_saved_bytes(model, batch, seq, config["vocab_size"],
                               autocast="bf16" if precision == "bf16-mixed" else None)
    ours = est.largest["activations"] + est.largest["logits"]
    return (ours - real) / real, ours, real


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "qwen3", "gemma", "phi3"])
@pytest.mark.parametrize("method", ["full", "lora"])
def test_default_kernels_match_what_their_functions_save(model_type: str, method: str, monkeypatch) -> None:
    err, ours, real = _compare(model_type, "default", method=method, monkeypatch=monkeypatch)
    assert abs(err) <= 0.03, f"ours {ours} vs real {real} ({err:+.1%})"


@pytest.mark.parametrize("kernels", ["rms_norm", "glu", "rope", "cross_entropy"])
@pytest.mark.parametrize("precision", ["bf16", "fp32", "bf16-mixed"])
def test_each_kernel_alone(kernels: str, precision: str, monkeypatch) -> None:
    err, ours, real = _compare("llama", kernels, precision=precision, monkeypatch=monkeypatch)
    assert abs(err) <= 0.03, f"ours {ours} vs real {real} ({err:+.1%})"


def test_the_kernels_save_less_than_the_eager_ops(monkeypatch) -> None:
    """Truth against truth: the same model saves fewer bytes with Liger's RMSNorm and SwiGLU in place."""
    config = random_config("llama", 0, layers=2)
    eager = measure_saved_bytes(build_model(config), 2, 24, config["vocab_size"])
    model = build_model(config)
    patch(model, {"rms_norm", "glu"}, monkeypatch)
    assert measure_saved_bytes(model, 2, 24, config["vocab_size"]) < 0.9 * eager


@pytest.mark.parametrize("model_type", ["llama", "gemma", "phi3"])
def test_the_references_compute_the_eager_gradients(model_type: str, monkeypatch) -> None:
    """The CPU references are only a truth if they are the same functions: same loss, same gradients."""
    config = random_config(model_type, 0, layers=2)
    ids = random_ids(2, 12, config["vocab_size"])

    def grads(kernels: set[str]):
        with monkeypatch.context() as m:
            model = build_model(config, precision="fp32")
            patch(model, kernels, m)
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            return loss.detach(), {n: p.grad for n, p in model.named_parameters()}

    loss, eager = grads(set())
    liger_loss, liger = grads({"rope", "rms_norm", "glu", "cross_entropy"})
    assert torch.allclose(loss, liger_loss, atol=1e-5)
    for name, grad in eager.items():
        assert torch.allclose(grad, liger[name], atol=1e-5, rtol=1e-4), name


def test_a_model_type_liger_does_not_patch_gets_no_kernels() -> None:
    """monkey_patch.py MODEL_TYPE_TO_APPLY_LIGER_FN has no gpt2: the eager saves are planned, with a warning."""
    spec = spec_from_config(random_config("gpt2", 0, layers=2), source="test")
    plain = plan_run(spec, Plan(batch_size=2, seq_len=24), CPU)
    asked = plan_run(spec, Plan(batch_size=2, seq_len=24, liger_kernels="default"), CPU)
    assert asked.memory.total == plain.memory.total
    assert [w.code for w in asked.warnings if w.code == "liger_unpatched"] == ["liger_unpatched"]
    llama = plan_run(spec_from_config(random_config("llama", 0, layers=2), source="test"),
                     Plan(batch_size=2, seq_len=24, liger_kernels="default"), CPU)
    assert any("Liger kernels for llama" in a for a in llama.assumptions) and not llama.warnings


def test_bad_kernel_names_and_a_plain_loss_beside_the_fused_one_are_refused() -> None:
    from planner.errors import FtplanError

    with pytest.raises(FtplanError, match="unknown Liger kernel 'swiglu2'"):
        Plan.build(liger_kernels="rope,swiglu2")
    with pytest.raises(FtplanError, match="not both"):
        Plan.build(liger_kernels="cross_entropy", fused_loss=True)
    assert Plan.build(liger_kernels="SwiGLU, rope").liger_kernels == "rope,glu"


def test_asking_for_layer_norm_on_an_rmsnorm_model_is_no_warning() -> None:
    """axolotl's examples set liger_layer_norm beside liger_rms_norm on RMSNorm models, whose Liger patch has no
    LayerNorm kernel: the model has no LayerNorm to replace, so nothing differs from what was asked."""
    spec = spec_from_config(random_config("qwen3", 0, layers=2), source="test")
    both = plan_run(spec, Plan(batch_size=2, seq_len=24, liger_kernels="rms_norm,layer_norm"), CPU)
    rms = plan_run(spec, Plan(batch_size=2, seq_len=24, liger_kernels="rms_norm"), CPU)
    assert both.memory.total == rms.memory.total
    assert not [w for w in both.warnings if w.code == "liger_unpatched"]
