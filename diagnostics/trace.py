"""Trace one training step of the real transformers / peft model and count the bytes it allocates.

The model is the one `diagnostics.models.build_model` sets up for a `Plan` (LLaMA-Factory's setup:
full / freeze / LoRA, dtypes, mixed precision, gradient checkpointing). With `fake=True` (the
default) it is built on the meta device and its parameters are then made fake tensors
(`torch._subclasses.fake_tensor.FakeTensorMode`): every op runs for its shapes and dtypes only,
so a 70B step needs no memory and takes seconds. With `fake=False` it is built and run on real
CPU tensors, the oracle the fake trace is tested against (byte for byte).

Counting: a `TorchDispatchMode` sees every op's outputs; each new storage adds its bytes and a
`weakref.finalize` on the storage takes them off when it dies, so "allocated" is the sum of live
storages, as `torch.cuda.memory_allocated` is on a GPU (without its 512-byte rounding). Parameters,
buffers and optimizer state count, as on a GPU.

The step is the steady state of training: the optimizer state exists at the start (it is created
by a step on zero gradients before tracing), gradients do not (`zero_grad(set_to_none=True)`), or,
with `grad_accum > 1`, do (the last micro-batch of an accumulation window). Phases:

* forward: the model on a batch of random token ids with labels = ids, up to its own loss;
* backward: `loss.backward()`;
* optimizer: gradient clipping (the HF Trainer's max_grad_norm), `step()` and `zero_grad()`.

What makes a fake step equal a GPU step (each was found the hard way):

* transformers reads fake tensors as graph tracing: its packed-sequence check then answers
  "packed" and every layer gets an explicit mask, so sdpa repeats the KV heads; patched to the
  eager answer (no packing: position ids are a plain arange);
* CPU AdamW defaults to its per-tensor loop; the trace uses `foreach=True` (the CUDA default,
  `diagnostics.measure.make_optimizer`), whose `_foreach_sqrt` temporaries are part of the peak;
  gradient clipping too (`foreach=None` decides per tensor type, and a FakeTensor is not a plain
  Tensor, so a fake step would clip tensor by tensor while a real one uses `_foreach_norm`);
* a fake parameter cannot be moved with `module.to()` (it swaps tensors, which fails on a
  fake tensor that FakeTensorMode's memo holds a weakref to): the model is built on the meta
  device and each meta tensor is replaced by one fake tensor, memoised so tied weights stay tied;
* AdamW keeps its `step` counters on the CPU even on a GPU: they are not counted;
* autograd sums two gradients of one tensor (a tied embedding and LM head, a residual stream) in place when
  it holds the only reference to the first, but never while a dispatch mode is active, and every traced op
  runs under two: such a sum does not raise the counted peak when its first operand dies at once
  (`StorageCounter._summed_in_place`);
* fake CUDA tensors abort the process on a CPU-only build (embedding's device guard: "PyTorch is
  not linked with support for cuda devices") and CUDA autocast turns itself off without CUDA, so
  the fake tensors are on the CPU device and the step runs CPU autocast;
* MoE experts run transformers' grouped_mm path (its default; the eager loop reads which experts
  were hit, which fake tensors cannot answer); torch's meta kernel for grouped_mm accepts bf16 only,
  while the real kernels take the fp32 experts of a *-mixed full fine-tune: patched to match them;
* transformers' attention without sdpa support (e.g. BLOOM) is traced with eager attention, as
  transformers falls back by default; the KV cache is off, as LLaMA-Factory trains.

Where the CPU step still differs from a GPU's (the first two are noted on the results they touch):

* dropout: CPU keeps a mask in the activation dtype (CUDA's fused dropout: a bool mask) and sdpa
  with dropout has no fused CPU kernel (fp32 math instead);
* CPU autocast casts fewer ops to fp32 than CUDA autocast (layer_norm, softmax, pow, exp...):
  Llama-style models upcast explicitly and are unaffected; frozen 16-bit LayerNorms are not;
* sdpa picks its kernel by the CPU's rules: where a model hands it a mask and unequal head counts
  (Falcon: an always-built mask, 1 KV head against 71 query heads) the CPU runs the math kernel,
  which keeps the scores; whether CUDA does too is not checked here.

Not seen: memory a kernel takes for itself (cuBLAS / flash-attention workspaces), the CUDA
context and allocator fragmentation. QLoRA is not traced (see `_check_plan`).
"""

from __future__ import annotations

import contextlib
import gc
import time
import weakref
from collections.abc import Callable

from pydantic import BaseModel

from diagnostics.models import build_model, torch_dtype
from planner.errors import EnvironmentMissing, FtplanError
from planner.plan import Plan

PHASES = ("forward", "backward", "optimizer")


class TracePhase(BaseModel):
    name: str
    peak: int  # the most bytes allocated at once within the phase
    end: int  # bytes allocated when the phase ends


class TraceResult(BaseModel):
    """Bytes of one traced training step; `peak_allocated` is comparable to `torch.cuda.max_memory_allocated`."""

    model: str
    model_type: str
    plan: Plan
    fake: bool  # fake tensors (shapes only) or real CPU tensors
    weights: int  # parameters and buffers at the start of the step
    optimizer_state: int  # optimizer state at the start of the step
    gradients: int  # gradients at the start (an accumulation window's earlier micro-batches), else 0
    start: int  # everything allocated at the start: the above and the batch
    peak_allocated: int
    peak_phase: str
    phases: list[TracePhase]
    seconds: float  # wall time of the traced step: forward, backward, optimizer
    cpu_seconds: float  # this process's CPU time for it (steadier on a busy machine)
    build_seconds: float  # building the model and its optimizer state
    ops: int  # aten ops dispatched during the step
    notes: list[str] = []

    def phase(self, name: str) -> TracePhase:
        return next(p for p in self.phases if p.name == name)


# ---------------------------------------------------------------- the counter


def _storage_counter_class():
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class StorageCounter(TorchDispatchMode):
        """Live bytes of every storage an op creates (or that `track` is given), current and peak."""

        def __init__(self) -> None:
            super().__init__()
            self.live: dict[int, tuple[int, weakref.finalize]] = {}
            self.current = 0
            self._peak = 0
            self._phase_peak = 0
            self.ops = 0
            self.made_by: dict[int, int] = {}  # storage -> sequence number of the autograd node that made it
            self._held: tuple[int, int] | None = None  # a gradient sum's (first operand, bytes with the sum)

        @property
        def peak(self) -> int:
            self.settle()
            return self._peak

        @property
        def phase_peak(self) -> int:
            self.settle()
            return self._phase_peak

        def track(self, tensor, raise_peak: bool = True) -> None:
            storage = tensor.untyped_storage()
            key = storage._cdata
            nbytes = storage.nbytes()
            held = self.live.get(key)
            if held is not None:
                if held[0] == nbytes:
                    return
                self.current -= held[0]  # resized in place (resize_, out= ops)
                self.live[key] = (nbytes, held[1])
            else:
                self.live[key] = (nbytes, weakref.finalize(storage, self._free, key))
                node = torch._C._current_autograd_node()
                if node is not None:
                    self.made_by[key] = node._sequence_nr()
            self.current += nbytes
            if raise_peak:
                self._raise(self.current)

        def _raise(self, nbytes: int) -> None:
            if nbytes > self._phase_peak:
                self._phase_peak = nbytes
                self._peak = max(self._peak, nbytes)

        def _free(self, key: int) -> None:
            nbytes, _ = self.live.pop(key)
            self.made_by.pop(key, None)
            self.current -= nbytes

        def settle(self) -> None:
            """A gradient sum held back by `_summed_in_place`: if its first operand died before the next op,
            autograd held the only reference and a GPU step sums in place, so the sum never coexisted with it;
            else it did, and counts at the peak."""
            if self._held is not None:
                operand, nbytes = self._held
                self._held = None
                if operand in self.live:
                    self._raise(nbytes)

        def new_phase(self) -> None:
            self.settle()
            self._phase_peak = self.current

        def close(self) -> None:
            self.settle()
            for _, fin in self.live.values():
                fin.detach()
            self.live.clear()

        def _summed_in_place(self, func, args, kwargs, out) -> int | None:
            """The first operand's storage when this op is autograd's sum of two gradients for one input (a
            tensor used twice in forward, e.g. tied embeddings or a residual stream) that a GPU step would do in
            place. The engine sums them in `InputBuffer::accumulate` (torch/csrc/autograd/input_buffer.cpp) as
            `old_var.add_(var)` when it holds the last reference to a plain dense `old_var`, else `old_var + var`;
            its `can_accumulate_inplace` refuses whenever `at::isTensorSubclassLike`, which is true for every
            tensor while any TorchDispatchMode is active (ATen/TensorSubclassLikeUtils.h), so under this counter
            (and FakeTensorMode) every sum is out of place. Here: an add of two same-shaped tensors, run while
            a backward node other than the first operand's maker is evaluated, whose first operand is a whole,
            contiguous, non-view storage; `settle` decides once it is known whether the engine dropped it."""
            if func is not torch.ops.aten.add.Tensor or kwargs.get("alpha", 1) != 1 or len(args) != 2:
                return None
            old, var = args
            if not (isinstance(old, torch.Tensor) and isinstance(var, torch.Tensor) and isinstance(out, torch.Tensor)):
                return None
            node = torch._C._current_autograd_node()
            if node is None or old.shape != var.shape or old.shape != out.shape or old.dtype != out.dtype:
                return None
            storage = old.untyped_storage()
            key = storage._cdata
            if (old._is_view() or not old.is_contiguous() or old.storage_offset() != 0
                    or storage.nbytes() != old.numel() * old.element_size()
                    or self.made_by.get(key) == node._sequence_nr()):
                return None
            return key

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.settle()
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            if func.namespace != "prim":  # prim.device: a fake tensor's .device goes through dispatch
                self.ops += 1
            operand = self._summed_in_place(func, args, kwargs, out)
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    self.track(t, raise_peak=operand is None)
            if operand is not None:
                self._held = (operand, self.current)
            return out

    return StorageCounter


# ---------------------------------------------------------------- building


def _check_plan(plan: Plan) -> None:
    """What a fake-tensor step cannot run, refused before anything is built (errors carry the field)."""
    if plan.method == "qlora":
        raise FtplanError(
            "trace does not support qlora: bitsandbytes' 4-bit weight (Params4bit) is a tensor subclass made "
            "with _make_subclass, which cannot wrap a fake tensor, and building it needs a checkpoint on disk; "
            "`ftplan estimate` has exact QLoRA weight bytes, or trace lora for the rest", field="method")
    if plan.optimizer in ("adamw-8bit", "paged-adamw-8bit"):
        raise FtplanError(
            f"trace does not support {plan.optimizer}: bitsandbytes' 8-bit step reads tensor values (.item()), "
            "which fake tensors do not have; use adamw, adamw-fused, adafactor or sgd", field="optimizer")
    if plan.stage not in ("sft", "pt"):
        raise FtplanError(f"trace runs a supervised step; stage {plan.stage} (its reference model, paired rows "
                          "or generation) is modelled by `ftplan estimate`, not traced", field="stage")
    beyond = {"gpus": plan.gpus > 1, "zero": plan.zero > 0, "offload_optimizer": plan.offload_optimizer,
              "fused_loss": plan.fused_loss, "optimizer_in_backward": plan.optimizer_in_backward}
    for name, set_ in beyond.items():
        if set_:
            raise FtplanError("trace runs one GPU's plain step; only the planner models {gpus}, {zero}, "
                              "{offload_optimizer}, {fused_loss} and {optimizer_in_backward}", field=name)


def _fake_copies(model, device: str) -> None:
    """Replace every meta tensor the model holds (parameters, buffers, tensor attributes) with a fake one
    on `device`: one per meta storage, so tied weights stay tied."""
    import torch

    made: dict[int, torch.Tensor] = {}

    def fake(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in made:
            made[id(t)] = torch.empty_strided(t.size(), t.stride(), dtype=t.dtype, device=device)
        return made[id(t)]

    shared = _shared_storages(model)
    if shared:
        raise FtplanError(f"trace: the model holds tensors that share storage ({shared[0]}); not supported")
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is not None and p.is_meta:
                if id(p) not in made:
                    made[id(p)] = torch.nn.Parameter(
                        torch.empty_strided(p.size(), p.stride(), dtype=p.dtype, device=device),
                        requires_grad=p.requires_grad)
                module._parameters[name] = made[id(p)]
        for name, b in list(module._buffers.items()):
            if b is not None and b.is_meta:
                module._buffers[name] = fake(b)
        for name, value in list(vars(module).items()):
            if isinstance(value, torch.Tensor) and not isinstance(value, torch.nn.Parameter) and value.is_meta:
                setattr(module, name, fake(value))


def _shared_storages(model) -> list[str]:
    """Names of distinct parameters/buffers that view one storage (the fake copy keeps tensors, not storages)."""
    seen: dict[int, int] = {}
    clashes = []
    for name, t in [*model.named_parameters(remove_duplicate=True), *model.named_buffers(remove_duplicate=True)]:
        key = t.untyped_storage()._cdata
        if key in seen and seen[key] != id(t):
            clashes.append(name)
        seen.setdefault(key, id(t))
    return clashes


@contextlib.contextmanager
def _eager_masks():
    """transformers takes a fake tensor for graph tracing (`is_tracing`): its packed-sequence check then says
    "packed" and builds explicit masks (sdpa loses is_causal and repeats the KV heads). Our batches are not
    packed (position ids are an arange), so answer as eager runs do: no packed sequences."""
    from transformers import masking_utils

    original = getattr(masking_utils, "find_packed_sequence_indices", None)
    if original is None:  # renamed: the fake-equals-real test says whether it still matters
        yield
        return

    def find_packed_sequence_indices(position_ids):
        from torch._subclasses.fake_tensor import FakeTensor

        return None if isinstance(position_ids, FakeTensor) else original(position_ids)

    masking_utils.find_packed_sequence_indices = find_packed_sequence_indices
    try:
        yield
    finally:
        masking_utils.find_packed_sequence_indices = original


@contextlib.contextmanager
def _grouped_mm_any_float():
    """torch's meta kernel for `_grouped_mm` copies the CUDA fast path's rule (bf16 inputs only), but the CPU
    and CUDA kernels fall back to a loop of mm for fp32/fp16 (MoE experts under *-mixed are fp32). Check
    everything else with bf16 stand-ins and allocate the output as the kernels do, in the inputs' dtype."""
    import torch
    from torch import _meta_registrations as meta

    original = meta._meta_grouped_mm_common

    def common(mat_a, mat_b, scale_a, scale_b, offs=None, bias=None, scale_result=None, out_dtype=None,
               use_fast_accum=False):
        if (scale_a is None and mat_a.dtype == mat_b.dtype and mat_a.dtype in (torch.float32, torch.float16)
                and out_dtype in (None, mat_a.dtype)):
            def stand_in(m):
                return torch.empty_strided(m.shape, m.stride(), dtype=torch.bfloat16, device=m.device)

            original(stand_in(mat_a), stand_in(mat_b), None, None, offs=offs, bias=bias,
                     scale_result=scale_result, out_dtype=None, use_fast_accum=use_fast_accum)
            return meta._create_grouped_mm_output_tensor(mat_a, mat_b, offs, out_dtype)
        return original(mat_a, mat_b, scale_a, scale_b, offs=offs, bias=bias, scale_result=scale_result,
                        out_dtype=out_dtype, use_fast_accum=use_fast_accum)

    meta._meta_grouped_mm_common = common
    try:
        yield
    finally:
        meta._meta_grouped_mm_common = original


def _text_config(model):
    config = model.config
    get = getattr(config, "get_text_config", None)
    return get() if get else config


def _optimizer_state(optimizer) -> list:
    """The optimizer's state tensors that live on the GPU: AdamW's `step` counters stay on the CPU unless
    the optimizer is fused or capturable."""
    import torch

    tensors = []
    for group in optimizer.param_groups:
        on_host = not (group.get("fused") or group.get("capturable"))
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                if isinstance(value, torch.Tensor) and not (key == "step" and on_host):
                    tensors.append(value)
    return tensors


# ---------------------------------------------------------------- the step


def _build(config: dict, plan: Plan, *, fake: bool, seed: int, build: Callable):
    """The model for `plan`, on the meta device (to be made fake) or real on the CPU; returns the model and
    the plan it was built for (sdpa becomes eager where the family has no sdpa, as transformers' default
    does), with a note saying so."""
    import torch

    try:
        with torch.device("meta") if fake else contextlib.nullcontext():
            model = build(config, plan, device="meta" if fake else "cpu", seed=seed)
    except (ValueError, KeyError) as exc:  # transformers: an unknown model_type or a config it rejects
        text = str(exc).strip()
        if "does not support an attention implementation" in text and plan.attention != "eager":
            model, built, notes = _build(config, plan.with_(attention="eager"), fake=fake, seed=seed, build=build)
            return model, built, [f"{config.get('model_type')} has no {plan.attention} attention in transformers: "
                                  "traced with eager attention (transformers' own fallback)", *notes]
        first = text.split(". ")[0].splitlines()[0] if text else type(exc).__name__
        raise FtplanError(f"trace: cannot build {config.get('model_type')!r} for this plan "
                          f"({first})") from None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    can_set = getattr(type(base), "_can_set_experts_implementation", None)
    if can_set is not None and can_set() and base.config._experts_implementation != "grouped_mm":
        base.set_experts_implementation("grouped_mm")  # the eager experts loop reads which experts were hit
    for config_ in {id(c): c for c in (model.config, _text_config(model))}.values():
        config_.use_cache = False  # LLaMA-Factory trains without a KV cache
    return model, plan, []


def trace_step(config: dict, plan: Plan, *, fake: bool = True, name: str | None = None, seed: int = 0,
               max_grad_norm: float | None = 1.0, build: Callable = build_model) -> TraceResult:
    """Trace one training step of the model `config` describes under `plan` (see the module docstring).

    `build(config, plan, device=..., seed=...)` makes the model (default: `diagnostics.models.build_model`);
    `max_grad_norm` clips as the HF Trainer does (None: no clipping).
    """
    _check_plan(plan)
    try:
        import torch
        import transformers  # noqa: F401
        from torch._subclasses.fake_tensor import (
            DataDependentOutputException,
            DynamicOutputShapeException,
            FakeTensorMode,
            UnsupportedOperatorException,
        )
        if plan.method in ("lora", "qlora"):
            import peft  # noqa: F401
    except ImportError as exc:
        raise EnvironmentMissing(f"trace needs torch, transformers and peft ({exc.name} is missing): "
                                 "install ftplan[diagnostics]") from None
    from diagnostics.measure import make_optimizer

    label = name or config.get("_name_or_path") or config.get("model_type", "model")
    began = time.perf_counter()
    model, plan, notes = _build(config, plan, fake=fake, seed=seed, build=build)
    notes += _cpu_kernel_notes(model, plan)
    vocab = _text_config(model).vocab_size
    counter = _storage_counter_class()()
    autocast = torch.autocast("cpu", dtype=torch_dtype(plan.compute_dtype)) if plan.mixed \
        else contextlib.nullcontext()
    scaled = plan.precision == "fp16-mixed"  # GradScaler: a scaled loss, gradients unscaled in place
    phases: list[TracePhase] = []
    collecting = False
    try:
        with (FakeTensorMode() if fake else contextlib.nullcontext()), _eager_masks(), _grouped_mm_any_float():
            if fake:
                _fake_copies(model, "cpu")
            trainable = [p for p in model.parameters() if p.requires_grad]
            optimizer = make_optimizer(trainable, plan)
            for p in trainable:  # a step before ours creates the optimizer state
                p.grad = torch.zeros_like(p)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if plan.grad_accum > 1:  # the last micro-batch of a window: the earlier ones left gradients
                for p in trainable:
                    p.grad = torch.zeros_like(p)
                notes.append(f"traced the last of {plan.grad_accum} accumulated micro-batches: gradients are "
                             "alive from the start")
            gc.collect()
            build_seconds = time.perf_counter() - began
            weights = _track(counter, [*model.parameters(), *model.buffers(), *_tensor_attributes(model)])
            state = _track(counter, _optimizer_state(optimizer))
            grads = _track(counter, [p.grad for p in trainable if p.grad is not None])
            collecting = gc.isenabled()
            gc.disable()  # a collection would fire at different points in a fake and a real run
            with counter:
                generator = None if fake else torch.Generator().manual_seed(seed)
                ids = torch.randint(0, vocab, (plan.batch_size, plan.seq_len), generator=generator)
                start = counter.current
                began, cpu_began = time.perf_counter(), time.process_time()
                counter.new_phase()
                with autocast:
                    loss = model(input_ids=ids, labels=ids).loss
                if plan.grad_accum > 1:
                    loss = loss / plan.grad_accum
                if scaled:
                    loss = loss * torch.full((), 2.0 ** 16)
                phases.append(TracePhase(name="forward", peak=counter.phase_peak, end=counter.current))
                counter.new_phase()
                loss.backward()
                del loss
                phases.append(TracePhase(name="backward", peak=counter.phase_peak, end=counter.current))
                counter.new_phase()
                if scaled:
                    torch._amp_foreach_non_finite_check_and_unscale_(
                        [p.grad for p in trainable], torch.zeros(()), torch.full((), 2.0 ** -16))
                if max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm, foreach=True)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                phases.append(TracePhase(name="optimizer", peak=counter.phase_peak, end=counter.current))
                seconds, cpu_seconds = time.perf_counter() - began, time.process_time() - cpu_began
    except (DataDependentOutputException, DynamicOutputShapeException) as exc:
        raise FtplanError(f"trace: {label}'s training step reads tensor values ({_op_name(exc)}), which fake "
                          "tensors do not have; it cannot be traced") from None
    except UnsupportedOperatorException as exc:
        raise FtplanError(f"trace: {label} uses an op with no fake-tensor implementation ({_op_name(exc)}); "
                          "it cannot be traced") from None
    finally:
        if collecting:
            gc.enable()
        counter.close()
    return TraceResult(
        model=label, model_type=config.get("model_type", "?"), plan=plan, fake=fake, weights=weights,
        optimizer_state=state, gradients=grads, start=start, peak_allocated=counter.peak,
        peak_phase=max(phases, key=lambda p: p.peak).name, phases=phases, seconds=seconds,
        cpu_seconds=cpu_seconds, build_seconds=build_seconds, ops=counter.ops, notes=notes)


ATTENTION_DROPOUT_KEYS = ("attention_dropout", "attn_pdrop", "attention_probs_dropout_prob")


def _cpu_kernel_notes(model, plan: Plan) -> list[str]:
    """Where the CPU kernels the trace runs allocate differently from a GPU's, say so."""
    import torch

    notes = []
    text = _text_config(model)
    dropout = any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules()) or any(
        isinstance(getattr(text, k, None), (int, float)) and getattr(text, k) > 0 for k in ATTENTION_DROPOUT_KEYS)
    if dropout:
        notes.append("dropout is on: the CPU kernels traced keep dropout's mask in the activation dtype (CUDA: "
                     "1 byte) and run sdpa with dropout as fp32 math (CUDA: a fused kernel), so a GPU allocates "
                     "less; the planner's CPU mode (Machine(device='cpu')) models this step")
    half = (torch.bfloat16, torch.float16)
    if plan.mixed and any(isinstance(m, torch.nn.LayerNorm) and m.weight is not None and m.weight.dtype in half
                          and not m.weight.requires_grad for m in model.modules()):
        notes.append("CPU autocast keeps layer_norm (and softmax, pow, exp without a dtype) in 16 bits where CUDA "
                     "autocast runs them in fp32: on a GPU the frozen LayerNorms' outputs are fp32")
    return notes


def _tensor_attributes(model) -> list:
    """Tensors modules keep as plain attributes (e.g. a rotary embedding's original_inv_freq)."""
    import torch

    return [v for m in model.modules() for v in vars(m).values()
            if isinstance(v, torch.Tensor) and not isinstance(v, torch.nn.Parameter)]


def _track(counter, tensors) -> int:
    """Count tensors that exist before the step; the bytes they add (shared storages count once)."""
    before = counter.current
    for t in tensors:
        counter.track(t)
    return counter.current - before


def _op_name(exc: Exception) -> str:
    func = getattr(exc, "func", None)
    return str(func) if func is not None else type(exc).__name__


# ---------------------------------------------------------------- against the planner


class PlannerPeak(BaseModel):
    """The planner's allocated peak for the same plan: no CUDA context, no allocator fragmentation."""

    peak_allocated: int
    peak_phase: str
    phases: dict[str, int]


class TraceReport(BaseModel):
    trace: TraceResult
    planner: PlannerPeak | None = None  # None where the planner does not model the family
    difference: float | None = None  # (planner - trace) / trace: positive when the planner says more
    notes: list[str] = []


def _modelled(config: dict) -> bool:
    """Whether the planner has a reader for this family (or the language model a wrapper carries)."""
    try:
        from planner.architectures import READERS
    except ImportError:  # the planner moved its table: assume it models the family, as it says in its warnings
        return True
    text = config.get("text_config")
    return config.get("model_type") in READERS or (isinstance(text, dict) and text.get("model_type") in READERS)


def planner_report(trace: TraceResult, config: dict, *, source: str = "<config>",
                   name: str | None = None) -> TraceReport:
    """The trace next to `planner.memory.estimate_memory` for the same plan (or alone, with a note why)."""
    from planner.memory import estimate_memory
    from planner.spec import spec_from_config

    notes = list(trace.notes)
    if not _modelled(config):
        notes.append(f"the planner does not model {config.get('model_type')!r} (it would only guess a "
                     "Llama-style decoder): the trace alone")
        return TraceReport(trace=trace, notes=notes)
    try:
        spec = spec_from_config(config, source=source, name=name)
        est = estimate_memory(spec, trace.plan)
    except FtplanError as exc:
        from planner.fields import worded

        notes.append(f"the planner cannot estimate this model ({worded(exc, 'cli')}): the trace alone")
        return TraceReport(trace=trace, notes=notes)
    notes.extend(spec.warnings)
    peak = PlannerPeak(peak_allocated=est.peak_allocated, peak_phase=est.peak_phase,
                       phases={p.name: p.allocated for p in est.phases})
    difference = (est.peak_allocated - trace.peak_allocated) / trace.peak_allocated if trace.peak_allocated else None
    return TraceReport(trace=trace, planner=peak, difference=difference, notes=notes)
