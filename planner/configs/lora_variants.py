"""LoRA's variants that change how the adapters start or are scaled, not what a training step holds: rsLoRA,
LoRA+, and peft's `init_lora_weights` (PiSSA, OLoRA, LoftQ, EVA, CorDA, ...). Every reader states them as
assumptions under its own key names; DoRA, which does change memory, is a Plan field (`use_dora`).

Facts from peft 0.21 (tuners/lora/config.py `init_lora_weights`, tuners/lora/layer.py `update_layer`) and the
papers: PiSSA (Meng et al. 2024) and OLoRA (Buyukakyuz 2024) move the top singular (or QR) directions of each
target weight into A and B and keep the residual as the frozen weight, so the tensors are LoRA's.
"""

from __future__ import annotations

from planner.configs.common import Direction
from planner.errors import FtplanError

SAME = "the same tensors as LoRA, so the same memory"

# peft's init_lora_weights strings: what each does at load, and which way the plan is off where it is
INITS: dict[str, tuple[str, Direction | None]] = {
    "gaussian": ("Gaussian A scaled by the rank (B zero), an initialisation only", None),
    "orthogonal": ("orthogonal A and B, the base weights untouched, an initialisation only", None),
    "olora": ("OLoRA: A and B from a QR decomposition of each target weight, whose residual becomes the frozen "
              "weight (a one-time decomposition at load)", None),
    "pissa": ("PiSSA: A and B from the top-r singular vectors of each target weight, whose residual becomes the "
              "frozen weight (a one-time full SVD of every target at load: minutes on a large model)", None),
    "corda": ("CorDA: A and B from a context-oriented decomposition of each target weight (input covariances "
              "collected by peft's preprocess_corda before training)", None),
    "eva": ("EVA: A from the SVD of each target's input activations over the first batches (a one-time pass "
            "before training)", None),
    "loftq": ("LoftQ: A and B fitted to each target weight's quantization error (a one-time pass at load)", None),
    "lora_ga": ("LoRA-GA: A and B from the gradients of a few batches (a one-time pass before training)", None),
    "mica": ("MiCA: B is frozen at the smallest singular directions and only A trains; this plan trains A and B",
             "overstates"),
}


def rslora_note(key: str) -> str:
    return f"{key}: rank-stabilised LoRA scales the update by lora_alpha/sqrt(r) instead of lora_alpha/r; {SAME}"


def loraplus_note(key: str, ratio: float) -> str:
    return (f"{key} {ratio:g}: LoRA+ trains each B matrix at {ratio:g}x the learning rate of A (its own optimizer "
            f"group); {SAME} and optimizer states")


def init_lora(key: str, value: bool | str, path: str) -> tuple[str | None, Direction | None]:
    """peft's `init_lora_weights` (as `key` sets it) as what it does, for an assumption line, and, where the plan
    is off, the direction; (None, None) for peft's default. An unknown name is refused: peft raises on it."""
    if value is True or (isinstance(value, str) and value.strip().lower() == "true"):
        return None, None
    if value is False or (isinstance(value, str) and value.strip().lower() == "false"):
        return f"A and B start random (peft's debugging init, not a no-op); {SAME}", None
    name = str(value).strip().lower()
    if name.startswith("pissa_niter_"):
        iters = name.removeprefix("pissa_niter_")
        if not iters.isdigit():
            raise FtplanError(f"{path}: key '{key}': {value} must be pissa_niter_N with N a whole number of "
                              "iterations, e.g. pissa_niter_16")
        return (f"PiSSA with a fast SVD of {iters} subspace iterations: A and B from the top-r singular vectors of "
                "each target weight, whose residual becomes the frozen weight (seconds on a 7B model, once at "
                f"load); {SAME}"), None
    if name not in INITS:
        raise FtplanError(f"{path}: key '{key}' must be true, false, {', '.join(INITS)} or pissa_niter_N (peft's "
                          f"init_lora_weights; peft raises on {value!r})")
    what, direction = INITS[name]
    return what + ("" if direction else f"; {SAME}"), direction
