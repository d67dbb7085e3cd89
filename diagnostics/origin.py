"""Where a non-finite step went non-finite: its micro-batches replayed with hooks, to name the module.

Runs once, on the step that stops the run, at the weights that produced it (the loop checks each step
before the optimizer touches them), never on a healthy step. Each micro-batch of the step, in order:

* forward, with a forward hook on every module: the origin is the first module to finish whose
  floating-point inputs were all finite and whose output was not. Modules finish inside-out (v_proj before
  self_attn before the decoder layer), so that is the innermost module that made the value; one made between
  submodules (a softmax inside attention) names the module whose code holds it.
* backward, only when every forward value was finite: a full backward hook on every module and a hook on
  every trainable parameter's gradient. The origin is the first, in the order backward reaches them, of a
  module whose input gradient was non-finite while its output gradient was finite, or a parameter whose
  gradient was non-finite while its module's output gradient was finite.

Names are normalised as the monitor's are (diagnostics.monitor.normalize_name), so LoRA's `base_layer` and
adapter modules read as the layer they wrap. With dropout the replay draws new masks and may not reproduce
the step; it then says so.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from diagnostics.monitor import normalize_name
from diagnostics.report import NonFiniteOrigin, StepRecord


def module_name(name: str, module) -> str:
    """`base_model.model.model.layers.3.self_attn.v_proj.base_layer` -> `model.layers.3.self_attn.v_proj`;
    the model itself (an empty name) by its class."""
    clean = normalize_name(name + ".").rstrip(".") if name else ""
    return clean or type(module).__name__


def _finite(value) -> bool:
    import torch
    from torch.utils._pytree import tree_leaves

    return all(bool(torch.isfinite(t).all()) for t in tree_leaves(value)
               if torch.is_tensor(t) and t.is_floating_point())


@dataclass
class _Found:
    module: str | None
    where: str
    parameter: str | None = None


def _forward(model, run: Callable[[], object]) -> _Found | None:
    """Run one forward (no grad) under forward hooks: the origin, if a module or the loss made a non-finite value."""
    import torch

    names = {module: module_name(name, module) for name, module in model.named_modules()}
    found: list[_Found] = []
    fallback: list[_Found] = []  # the first non-finite output, if none came from finite inputs

    def hook(module, args, kwargs, output):
        if found or _finite(output):
            return
        weights_bad = not all(bool(torch.isfinite(p).all()) for p in module.parameters(recurse=False))
        hit = _Found(names[module], "weights" if weights_bad else "output")
        if _finite((args, kwargs)):
            found.append(hit)
        elif not fallback:
            fallback.append(hit)

    handles = [module.register_forward_hook(hook, with_kwargs=True) for module in names]
    try:
        with torch.no_grad():
            loss = run()
    finally:
        for handle in handles:
            handle.remove()
    if found or fallback:
        return (found or fallback)[0]
    if not _finite(loss):  # every module's output was finite: the loss was computed outside them (DPO's, ORPO's)
        return _Found(None, "loss")
    return None


def _backward(model, run: Callable[[], object], backward: Callable[[object], None]) -> _Found | None:
    """Run one forward and backward under backward hooks: the first module or parameter to make a non-finite
    gradient from a finite one."""
    import torch

    names = {module: module_name(name, module) for name, module in model.named_modules()}
    incoming_ok: dict[object, bool] = {}  # module -> was the gradient reaching its output finite (every call)
    events: list[tuple[str, object, str | None]] = []  # ("input", module, None) / ("param", module, name)

    def module_hook(module, grad_input, grad_output):
        ok = _finite(grad_output)
        incoming_ok[module] = incoming_ok.get(module, True) and ok
        if ok and not _finite(grad_input):
            events.append(("input", module, None))

    def param_hook(module, name):
        def hook(grad):
            if not bool(torch.isfinite(grad).all()):
                events.append(("param", module, name))
        return hook

    handles = [module.register_full_backward_hook(module_hook) for module in names]
    for module in names:
        for pname, p in module.named_parameters(recurse=False):
            if p.requires_grad:
                handles.append(p.register_hook(param_hook(module, pname)))
    try:
        for p in model.parameters():
            p.grad = None
        backward(run())
    finally:
        for handle in handles:
            handle.remove()
        for p in model.parameters():
            p.grad = None
    for kind, module, pname in events:
        # a parameter hook fires before its module's hook: judge it once the module's output gradient is known
        if kind == "input":
            return _Found(names[module], "input gradient")
        if incoming_ok.get(module, True):
            return _Found(names[module], "parameter gradient", f"{names[module]}.{pname}")
    return None


def not_located(record: StepRecord, note: str | None = None) -> NonFiniteOrigin:
    """What the record alone says: the phase (the loss non-finite or only gradients) and the non-finite layers."""
    return NonFiniteOrigin(phase="forward" if not math.isfinite(record.loss) else "backward",
                           layers=record.nonfinite_layers, note=note)


def locate(model, forward: Callable[[int], object], backward: Callable[[object], None], indices: Sequence[int],
           record: StepRecord) -> NonFiniteOrigin:
    """Replay micro-batches `indices` of the step `record` describes; `forward(index)` returns the micro-batch's
    loss as the step computed it, `backward(loss)` backpropagates it as the step did."""
    try:
        with warnings.catch_warnings():
            # full backward hooks warn about modules whose output is not a tensor (the model's ModelOutput)
            warnings.simplefilter("ignore")
            for micro, index in enumerate(indices):
                found = _forward(model, lambda index=index: forward(index))
                if found is not None:
                    return NonFiniteOrigin(phase="forward", module=found.module, where=found.where,
                                           micro_batch=micro, layers=record.nonfinite_layers)
                if not math.isfinite(record.loss):  # the step's forward failed: a finite replay did not reproduce it
                    continue
                found = _backward(model, lambda index=index: forward(index), backward)
                if found is not None:
                    return NonFiniteOrigin(phase="backward", module=found.module, where=found.where,
                                           parameter=found.parameter, micro_batch=micro,
                                           layers=record.nonfinite_layers)
    except Exception as exc:  # the replay is a diagnosis: it must not turn a report into a crash
        first = str(exc).splitlines()[0] if str(exc) else ""
        return not_located(record, f"the replay failed ({type(exc).__name__}: {first[:200]})")
    return not_located(record, "the replay stayed finite: the step is not reproducible (dropout or a "
                               "nondeterministic kernel)")
