"""Per-layer gradient statistics for every optimizer step, at the cost of one host sync.

All per-parameter norms come from one batched `torch._foreach_norm` call; they are
reduced into layers (prompt_encoder, embeddings, block.N, final_norm, head) and into
module kinds inside each block (attention, mlp, experts, router, norm, and the PEFT
methods' lora_A, lora_B, dora_magnitude, oft, ia3, adapter) with
`index_add_` on the device. Everything a step needs on the host is packed into one
tensor and moved with a single `.tolist()`, before the optimizer step, so a
non-finite step can stop with the weights that produced it. Update ratios, sampled
on some steps, need the weights after the step and bring their own read.

Norms are overflow-safe: fp32 holds a gradient norm up to 3.4e38 but its sum of
squares only up to 1.8e19, so squares are summed in fp64 and a huge finite norm
stays finite (an exploding gradient, not a NaN one step early).

Parameter names are normalised across wrappers (`module.` from DDP, `_orig_mod.`
from torch.compile, `_fsdp_wrapped_module.`, peft's `base_model.model.`, `base_layer.`
and adapter names, peft's `prompt_encoder.default.`) so reports read the same however the model was wrapped.

Sharded models (FSDP, FSDP2, DeepSpeed ZeRO-1/2/3): the gradients and weights are read through a
`diagnostics.sharded.GradAccess`, this rank's piece of each; the per-parameter squared norms are summed over the
ranks in one all-reduce before they are grouped, so every rank sees the unsharded run's norms.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from diagnostics.adapters import ATTRIBUTE as HOULSBY
from diagnostics.sharded import PLAIN, GradAccess, fsdp1

_PREFIXES = ("module.", "_orig_mod.", "_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "base_model.model.")
_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks|block)\.(\d+)\.")
_EMBED = ("embed_tokens", "wte", "wpe", "word_embeddings", "embed_in", "tok_embeddings")
_HEAD = ("lm_head", "embed_out", "output.weight")
# what peft (or diagnostics.adapters) adds inside a block -> its kind; DoRA's magnitude vectors are their own kind
_PEFT_KINDS = {"lora_A": "lora_A", "lora_B": "lora_B", "lora_magnitude_vector": "dora_magnitude", "oft_R": "oft",
               "ia3_l": "ia3", HOULSBY: "adapter"}


def normalize_name(name: str) -> str:
    """`base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight` -> `model.layers.0.self_attn.q_proj.lora_A.weight`."""
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix):], True
    for wrapper in ("._orig_mod.", "._fsdp_wrapped_module.", "._checkpoint_wrapped_module.", ".base_layer."):
        name = name.replace(wrapper, ".")
    name = re.sub(r"^prompt_encoder\.[^.]+\.", "prompt_encoder.", name)  # peft's prompt encoders, by adapter
    return re.sub(r"\.(lora_[AB]|lora_embedding_[AB]|lora_magnitude_vector|oft_R|ia3_l)\.[^.]+(\.|$)", r".\1\2",
                  name)


def layer_index(name: str) -> int | None:
    """The decoder-layer number in a parameter name (`model.layers.3.mlp...` -> 3)."""
    match = _LAYER.search(name)
    return int(match.group(1)) if match else None


def classify(name: str) -> tuple[str, str]:
    """(layer key, module kind) of a normalised parameter name."""
    match = _LAYER.search(name)
    if match:
        rest = name[match.end():]
        peft_kind = next((k for k in _PEFT_KINDS if f".{k}." in f".{rest}."), None)
        if peft_kind is not None:
            kind = _PEFT_KINDS[peft_kind]
        elif "experts" in rest:
            kind = "experts"
        elif re.search(r"(^|\.)(gate|router)(\.weight)?$", rest) or ".router." in rest:
            kind = "router"
        elif "norm" in rest or rest.startswith(("ln_", "ln")):
            kind = "norm"
        elif "attn" in rest or "attention" in rest:
            kind = "attention"
        else:
            kind = "mlp"
        return f"block.{int(match.group(1))}", kind
    if name.startswith("prompt_encoder."):  # prompt, prefix and P-tuning: their whole encoder is one group
        return "prompt_encoder", "prompt_encoder"
    if any(key in name for key in _EMBED):
        return "embeddings", "embedding"
    if any(key in name for key in _HEAD):
        return "head", "head"
    if "norm" in name or "ln_f" in name:
        return "final_norm", "norm"
    return "other", "other"


def _norms(tensors: list):
    """L2 norm of each tensor, fp64, overflow-safe.

    CUDA's fused `_foreach_norm` accumulates in its output dtype, so fp64 costs one pass over the fp32
    gradients, as fp32 would. Elsewhere fp64 takes the unfused per-tensor path (about 10x slower on CPU) and a
    host read costs nothing: fp32 norms first, and only the tensors whose sum of squares overflowed (a norm
    above 1.8e19, or a real inf) are summed again in fp64.
    """
    import torch

    device = tensors[0].device
    if device.type == "cuda":
        return torch.stack(torch._foreach_norm(tensors, 2, dtype=torch.float64))
    norms = torch.stack(torch._foreach_norm(tensors, 2, dtype=torch.float32)).double()
    for i in torch.isinf(norms).nonzero().flatten().tolist():
        norms[i] = torch.linalg.vector_norm(tensors[i], dtype=torch.float64)
    return norms


def layer_sort_key(layer: str) -> tuple[int, int]:
    order = {"prompt_encoder": 0, "embeddings": 1, "final_norm": 3, "head": 4, "other": 5}
    if layer.startswith("block."):
        return 2, int(layer.split(".")[1])
    return order.get(layer, 6), 0


@dataclass
class StepStats:
    """What one step's sync brought back, already on the host."""

    total_norm: float
    layer_norms: dict[str, float]
    kind_norms: dict[str, float]
    nonfinite_param: str | None
    zero_params: list[str]  # trainable parameters whose gradient was exactly zero (or absent)
    micro_sq: float | None  # |g|^2 of the first micro-batch (gradient-noise-scale estimate)
    zero_fraction: dict[str, float] | None  # share of exactly-zero gradient elements per layer
    extra: list[float]  # caller's scalars (loss, ...), in the order given


@dataclass
class UpdateStats:
    """What `after_step` measured against the weights `before_step` copied."""

    update_ratio: dict[str, float]  # |dW| / |W| per layer
    unchanged_fraction: dict[str, float] | None  # share of weights the step left bit-identical


class GradMonitor:
    """Attach to a model's trainable parameters once; every step call `after_backward()` and `finish()`, and
    around the optimizer step, where update ratios are sampled, `before_step()` and `after_step()`."""

    def __init__(self, model, *, distributed_sum=None, access: GradAccess | None = None):
        """`access` says where a sharded model keeps its gradients (diagnostics.sharded); `distributed_sum`
        alone sums `p.grad` shards over the ranks (FSDP1)."""
        import torch

        named = [(normalize_name(n), p) for n, p in model.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.device = self.params[0].device if self.params else torch.device("cpu")
        keys = [classify(n) for n in self.names]
        self.layers = sorted({layer for layer, _ in keys}, key=layer_sort_key)
        self.kinds = sorted({f"{layer}.{kind}" for layer, kind in keys if layer.startswith("block.")},
                            key=lambda k: (layer_sort_key(k.rsplit(".", 1)[0]), k))
        layer_id = {k: i for i, k in enumerate(self.layers)}
        kind_id = {k: i for i, k in enumerate(self.kinds)}
        self._layer_idx = torch.tensor([layer_id[layer] for layer, _ in keys], dtype=torch.long, device=self.device)
        self._kind_idx = torch.tensor([kind_id.get(f"{layer}.{kind}", len(self.kinds)) for layer, kind in keys],
                                      dtype=torch.long, device=self.device)
        self._numel = torch.zeros(len(self.layers), dtype=torch.float64, device=self.device).index_add_(
            0, self._layer_idx, torch.tensor([float(p.numel()) for p in self.params], dtype=torch.float64,
                                             device=self.device))
        self.access = access or (fsdp1(distributed_sum) if distributed_sum is not None else PLAIN)
        self._micro = None
        self._snapshot = None

    # -- gradient noise scale: the first micro-batch's gradient, before accumulation adds the rest
    def after_first_micro_batch(self, scale: float = 1.0) -> None:
        if not self.access.micro_batches:
            return
        grads = self._grads()
        if self.access.reduce_grads is not None or any(g is not None for g in grads):
            sq = self._grad_norms(grads).square()
            if self.access.reduce_grads is not None:  # every rank calls it: the collective needs them all
                sq = self.access.reduce_grads(sq)
            self._micro = sq.sum() * (scale * scale)

    # -- weights before the optimizer step, for update ratios
    def before_step(self, count_unchanged: bool = False) -> None:
        """Copy the trainable weights; `count_unchanged` also counts weights the step leaves bit-identical
        (the pure-bf16 rounding check), two more passes over the weights."""
        import torch

        with torch.no_grad():
            self._snapshot = [self.access.weight(p).clone() for p in self.params]
        self._count_unchanged = count_unchanged

    def _grads(self) -> list:
        """This rank's piece of each parameter's gradient (None where it holds none)."""
        return [self.access.grad(p) for p in self.params]

    def _grad_norms(self, grads: list):
        """Per-parameter norms of this rank's gradient pieces in fp64 (0 where there is none)."""
        import torch

        # Built on the device only: a host-made tensor (an index list, a constant) copied to a CUDA
        # device synchronises the stream, and the step must have one sync, in finish().
        present = [g for g in grads if g is not None]
        if not present:
            return torch.zeros(len(self.params), dtype=torch.float64, device=self.device)
        values = iter(_norms(present))
        missing = torch.zeros((), dtype=torch.float64, device=self.device)
        return torch.stack([next(values) if g is not None else missing for g in grads])

    def after_backward(self, max_grad_norm: float | None, zeros: bool = False):
        """Pre-clip norms (grads must be unscaled), then clip in place without a host sync.

        Returns device tensors of packed stats; decode them with `finish()`, before the optimizer step.
        """
        import torch

        grads = self._grads()
        sq = self._grad_norms(grads).square()
        counts = None
        if zeros:
            # no gradient counts as all zeros, unless the gradient is sharded: then another rank holds the piece
            absent = 0.0 if self.access.reduce_grads is not None else None
            counts = torch.stack([(g == 0).sum().double() if g is not None else
                                  torch.full((), float(p.numel()) if absent is None else absent,
                                             dtype=torch.float64, device=self.device)
                                  for p, g in zip(self.params, grads, strict=True)])
        if self.access.reduce_grads is not None:  # one all-reduce: shards' squares (and zero counts) summed
            both = self.access.reduce_grads(sq if counts is None else torch.cat([sq, counts]))
            sq, counts = (both, None) if counts is None else (both[:len(sq)], both[len(sq):])
        layer_sq = torch.zeros_like(self._numel).index_add_(0, self._layer_idx, sq)
        kind_sq = sq.new_zeros(len(self.kinds) + 1).index_add_(0, self._kind_idx, sq)
        total = layer_sq.sum().sqrt()
        bad = ~torch.isfinite(sq)
        first_bad = torch.where(bad.any(), bad.float().argmax().float(), -1.0)
        parts = [layer_sq, kind_sq[:-1], total.reshape(1), first_bad.reshape(1), (sq == 0).float()]
        if counts is not None:
            parts.append(torch.zeros_like(self._numel).index_add_(0, self._layer_idx, counts) / self._numel)
        present = [g for g in grads if g is not None]
        if max_grad_norm is not None and max_grad_norm > 0 and self.access.clips and present:
            coef = torch.clamp(max_grad_norm / (total + 1e-6), max=1.0)
            torch._foreach_mul_(present, coef.to(present[0].dtype))
        self._zeros = zeros
        return parts

    def after_step(self) -> UpdateStats | None:
        """Update ratios and unchanged-weight shares, if `before_step` took a snapshot; a host read of its own."""
        import torch

        if self._snapshot is None:
            return None
        with torch.no_grad():
            delta = self._snapshot
            weights = [self.access.weight(p) for p in self.params]
            torch._foreach_sub_(delta, weights)
            d_sq, w_sq = _norms(delta).square(), _norms(weights).square()
            same = (torch.stack([(d == 0).sum().double() for d in delta]) if self._count_unchanged
                    else torch.full((len(delta),), float("nan"), dtype=torch.float64, device=self.device))
            if self.access.reduce_weights is not None:
                d_sq, w_sq, same = self.access.reduce_weights(torch.stack([d_sq, w_sq, same])).unbind()
        self._snapshot = None
        zeros = torch.zeros_like(self._numel)
        d_sq, w_sq, same = torch.stack([zeros.index_add(0, self._layer_idx, d_sq),
                                        zeros.index_add(0, self._layer_idx, w_sq),
                                        zeros.index_add(0, self._layer_idx, same) / self._numel]).tolist()
        return UpdateStats(
            update_ratio={k: (d ** 0.5) / (w ** 0.5) if w > 0 else 0.0
                          for k, d, w in zip(self.layers, d_sq, w_sq, strict=True)},
            unchanged_fraction=None if math.isnan(same[0]) else dict(zip(self.layers, same, strict=True)))

    def finish(self, parts: list, extra: list | None = None) -> StepStats:
        """Decode the packed stats; `extra` scalars (loss, learning rate, ...) ride along in the same sync."""
        micro, self._micro = self._micro, None
        flat = self._pack(parts, micro, extra or [])
        n_l, n_k, n_p = len(self.layers), len(self.kinds), len(self.params)
        pos = 0

        def take(n):
            nonlocal pos
            out = flat[pos:pos + n]
            pos += n
            return out

        layer_sq, kind_sq = take(n_l), take(n_k)
        total, first_bad = take(1)[0], int(take(1)[0])
        zero_flags = take(n_p)
        zero_fraction = dict(zip(self.layers, take(n_l), strict=True)) if self._zeros else None
        has_micro, micro_sq = take(2)
        return StepStats(
            total_norm=total,
            layer_norms={k: v ** 0.5 for k, v in zip(self.layers, layer_sq, strict=True)},
            kind_norms={k: v ** 0.5 for k, v in zip(self.kinds, kind_sq, strict=True)},
            nonfinite_param=self.names[first_bad] if first_bad >= 0 else None,
            zero_params=[n for n, z in zip(self.names, zero_flags, strict=True) if z > 0],
            micro_sq=micro_sq if has_micro == 0.0 else None, zero_fraction=zero_fraction, extra=flat[pos:],
        )

    def _pack(self, parts: list, micro, extra: list) -> list[float]:
        """Everything the host needs, in one tensor and one transfer (the step's one sync)."""
        import torch

        # fp64 end to end: a finite norm above fp32's range must not come back as inf
        f64 = torch.float64
        tail = [x.detach().reshape(1).to(self.device, f64) if torch.is_tensor(x)
                else torch.full((1,), float(x), dtype=f64, device=self.device) for x in extra]
        head = [p.reshape(-1).to(self.device, f64) for p in parts]
        flag = torch.full((1,), -1.0 if micro is None else 0.0, dtype=f64, device=self.device)
        value = (micro if micro is not None else torch.zeros((), dtype=f64, device=self.device)).reshape(1)
        return torch.cat([*head, flag, value, *tail]).tolist()


class PlainMonitor:
    """What an uninstrumented loop does per step (the HF Trainer's clip_grad_norm_ and a logged loss):
    the baseline `benchmarks/bench_monitor.py` measures the monitor's overhead against."""

    def __init__(self, model, **_):
        self.params = [p for p in model.parameters() if p.requires_grad]

    def after_first_micro_batch(self, scale: float = 1.0) -> None:
        pass

    def before_step(self, count_unchanged: bool = False) -> None:
        pass

    def after_backward(self, max_grad_norm: float | None, zeros: bool = False) -> list:
        import torch

        norm = torch.nn.utils.clip_grad_norm_(self.params, max_grad_norm or float("inf"))
        return [norm.reshape(1)]

    def after_step(self) -> None:
        return None

    def finish(self, parts: list, extra: list | None = None) -> StepStats:
        import torch

        values = torch.cat([parts[0].float(), *(x.detach().float().reshape(1) if torch.is_tensor(x)
                                               else torch.tensor([float(x)], device=parts[0].device)
                                               for x in (extra or []))]).tolist()
        return StepStats(total_norm=values[0], layer_norms={}, kind_norms={}, nonfinite_param=None, zero_params=[],
                         micro_sq=None, zero_fraction=None, extra=values[1:])
