"""ftplan's planner: pure-Python memory, fit and time model for LLM fine-tuning.

Never imports torch or transformers (a test checks it), and loads its modules only when a
name is first used (PEP 562), so `import planner` stays light:

    >>> import planner
    >>> est = planner.estimate("7b", method="lora", gpu="RTX 4090")
    >>> est.fit.fits, est.memory.total / 2**30
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from planner.errors import EnvironmentMissing, FtplanError
    from planner.fields import FIELDS
    from planner.plan import Plan
    from planner.result import Estimate
    from planner.service import plan_run
    from planner.spec import ModelSpec, load_spec
    from planner.target import GpuTarget, Machine, resolve_target

__all__ = ["FIELDS", "EnvironmentMissing", "Estimate", "FtplanError", "GpuTarget", "Machine", "ModelSpec", "Plan",
           "estimate", "load_spec", "plan_run", "resolve_target"]

_LAZY = {
    "FIELDS": "planner.fields", "EnvironmentMissing": "planner.errors", "FtplanError": "planner.errors",
    "Estimate": "planner.result", "GpuTarget": "planner.target", "Machine": "planner.target",
    "resolve_target": "planner.target", "ModelSpec": "planner.spec", "load_spec": "planner.spec",
    "Plan": "planner.plan", "plan_run": "planner.service",
}

_MACHINE = ("gpu", "gpu_memory", "cuda_context", "fragmentation")
_SEARCH = ("search_batch", "search_seq", "mfu", "samples", "epochs")


def estimate(model: Any, **settings: Any) -> Estimate:
    """Plan one fine-tuning run: `model` is a preset, hub id, local path or `ModelSpec`; `settings` are
    the `Plan` fields (method="lora", batch_size=4, ...) plus `gpu=` (catalog name or "auto"),
    `gpu_memory=` ("24GiB"), `cuda_context=` (bytes), `fragmentation=`, `device=` ("cuda" or "cpu"),
    and the searches `search_batch=`, `search_seq=`, `mfu=`, `samples=`, `epochs=`.
    Raises `FtplanError` naming the setting on bad input."""
    from planner.errors import unknown_setting, validation_error
    from planner.plan import Plan
    from planner.service import plan_run
    from planner.spec import ModelSpec, load_spec
    from planner.target import resolve_target

    known = (*Plan.model_fields, *_MACHINE, *_SEARCH, "device")
    machine = {k: settings.pop(k) for k in _MACHINE if k in settings}
    search = {k: settings.pop(k) for k in _SEARCH if k in settings}
    device = settings.pop("device", None)
    unknown = next((k for k in settings if k not in Plan.model_fields), None)
    if unknown is not None:
        raise unknown_setting(unknown, known)
    target = resolve_target(**machine, gpus=settings.get("gpus"))
    if device is not None:
        from pydantic import ValidationError

        try:
            target = type(target)(**{**dict(target), "device": device})
        except ValidationError as exc:
            raise validation_error(exc) from None
    spec = model if isinstance(model, ModelSpec) else load_spec(str(model))
    return plan_run(spec, Plan.build(**settings), target, **search)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'planner' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
