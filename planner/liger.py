"""Liger-Kernel's kernels besides the fused linear cross-entropy: which ones a run gets.

A Plan names them in `liger_kernels` (a comma list; `default` is what LLaMA-Factory's `enable_liger_kernel` and
the Trainer's `use_liger_kernel` ask for). Liger applies them per model type: `MODEL_TYPE_TO_APPLY_LIGER_FN` in
liger_kernel/transformers/monkey_patch.py maps a type to its `apply_liger_kernel_to_<type>`, whose keyword
arguments are the kernels it can patch and whose defaults are the ones it does when not told otherwise (axolotl's
LigerPlugin passes its `liger_*` keys as those arguments, integrations/liger/plugin.py). A model type outside the
map gets none of them (`_apply_liger_kernel_to_instance` logs and returns), so the estimate keeps the eager saves.
What each kernel's autograd Function saves is in planner.activations.
"""

from __future__ import annotations

from planner.errors import FtplanError

# "glu" is Liger's SwiGLU (LigerSiLUMulFunction) or GeGLU (LigerGELUMulFunction), whichever the model type has:
# its apply function takes `swiglu` or `geglu`, as axolotl's one `liger_glu_activation` key does
KERNELS = ("rope", "rms_norm", "glu", "layer_norm", "cross_entropy")
DEFAULT = "default"

_R, _N, _G, _L, _C = "rope", "rms_norm", "glu", "layer_norm", "cross_entropy"


def _types(on: str, off: str = "") -> tuple[frozenset[str], frozenset[str]]:
    """(kernels on by default, every kernel the apply function takes) from `on` and `off` as spaced names."""
    return frozenset(on.split()), frozenset(on.split()) | frozenset(off.split())


# model type -> (on by default, patchable), read from the signatures of the apply functions in
# monkey_patch.py (Liger-Kernel at ead96b6); cross_entropy is the plain LigerCrossEntropyFunction, off everywhere
# but Granite (whose logits are scaled, so the fused loss is off there instead)
_LLAMA = _types(f"{_R} {_N} {_G}", _C)
_NO_ROPE = _types(f"{_N} {_G}", f"{_R} {_C}")
PATCHED: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    **dict.fromkeys(("llama", "mistral", "ministral", "mixtral", "qwen2", "qwen3", "qwen3_moe", "qwen2_5_vl",
                     "qwen2_5_vl_text", "qwen3_vl_moe", "qwen3_vl_moe_text", "phi3", "olmo2", "olmo3", "smollm3",
                     "falcon_h1", "hunyuan_v1_dense", "hunyuan_v1_moe", "exaone4"), _LLAMA),
    "pixtral": _types(f"{_R} {_N} {_G}"),
    "granite": _types(f"{_R} {_N} {_G} {_C}"),
    **dict.fromkeys(("gemma", "gemma2", "gemma3_text"), _LLAMA),
    **dict.fromkeys(("gemma3", "paligemma", "mllama", "mllama_text_model", "llama4", "llama4_text"),
                    _types(f"{_R} {_N} {_G} {_L}", _C)),
    **dict.fromkeys(("qwen2_vl", "qwen2_vl_text"), _types(f"{_R} {_N} {_G} {_L}", _C)),
    "gemma4_text": _NO_ROPE, "gemma4": _types(f"{_N} {_G}", f"{_R} {_C} {_L}"),
    **dict.fromkeys(("glm4", "glm4v", "glm4v_moe", "qwen3_next", "qwen3_5", "qwen3_5_text", "qwen3_5_moe",
                     "qwen3_5_moe_text"), _NO_ROPE),
    **dict.fromkeys(("gpt_oss", "qwen3_vl", "qwen3_vl_text"), _types(f"{_R} {_N}", f"{_C} {_G}")),
    "deepseek_v4": _types(_N, f"{_R} {_C} {_G}"),
    **dict.fromkeys(("internvl", "smolvlm"), _types(f"{_N} {_L}", _C)),
    "llava": _types("", _C),
    "nemotron": _types("", _C),  # relu_squared: a kernel ftplan's MLP kinds do not have
}


def parse(value) -> str:
    """A user's kernel list (a comma string, a list, `default`, `none`) in canonical order; bad names refused."""
    if value is None or value is False:
        return ""
    if value is True:
        return DEFAULT
    names = value.split(",") if isinstance(value, str) else list(value)
    names = {str(n).strip().lower().replace("-", "_") for n in names} - {"", "none"}
    names = {"glu" if n in ("swiglu", "geglu", "glu_activation") else n for n in names}
    unknown = sorted(names - set(KERNELS) - {DEFAULT})
    if unknown:
        raise FtplanError(f"unknown Liger kernel {unknown[0]!r}: give a comma list of {', '.join(KERNELS)}, or "
                          f"{DEFAULT} (what the model type gets by default), or none", field="liger_kernels")
    return ",".join(n for n in (DEFAULT, *KERNELS) if n in names)


def applied(model_type: str, kernels: str) -> frozenset[str]:
    """The kernels a run of this model type really gets from the plan's `liger_kernels`."""
    names = set(kernels.split(",")) - {""}
    if not names or model_type not in PATCHED:
        return frozenset()
    on, patchable = PATCHED[model_type]
    wanted = (on if DEFAULT in names else frozenset()) | (names - {DEFAULT})
    return frozenset(wanted & patchable)


def unpatched_warning(model_type: str, kernels: str) -> str | None:
    """Why kernels that were asked for are not applied (None when they are, or none were asked)."""
    if not kernels:
        return None
    if model_type not in PATCHED:
        return (f"{{liger_kernels}} {kernels}: Liger has no kernels for model type {model_type} "
                "(monkey_patch.py MODEL_TYPE_TO_APPLY_LIGER_FN), so none are applied and the eager activations "
                "are planned")
    # a patch with no LayerNorm kernel is an RMSNorm model's: it has no LayerNorm for one to replace, so asking for
    # it changes nothing (axolotl's examples turn liger_layer_norm on beside liger_rms_norm for such models)
    missing = sorted(set(kernels.split(",")) - {DEFAULT, "layer_norm"} - PATCHED[model_type][1])
    if missing:
        return (f"{{liger_kernels}}: Liger's patch for {model_type} has no {', '.join(missing)} kernel; the eager "
                "activations are planned there")
    return None


_SAVES = {
    "rope": "RoPE rotates q and k in place (cos and sin kept)",
    "rms_norm": "RMSNorm keeps its input and an fp32 rstd per row",
    "glu": "SwiGLU/GeGLU keeps its two inputs, not the activation's output",
    "layer_norm": "LayerNorm keeps its input and two statistics per row in its dtype",
    "cross_entropy": "the plain cross-entropy keeps the fp32 logits' gradient instead of log_softmax",
}


def assumptions(model_type: str, kernels: str, moe: bool) -> list[str]:
    """The assumption line of the kernels a run gets (none when it gets none)."""
    on = applied(model_type, kernels)
    if not on:
        return []
    line = (f"Liger kernels for {model_type}: " + "; ".join(_SAVES[k] for k in KERNELS if k in on)
            + " (what their autograd Functions save, liger_kernel/ops)")
    if moe and "glu" in on:
        line += "; routed experts keep the eager saves (Liger's fused MoE Function is not modelled)"
    return [line]


# the kernels every decoder-only apply function turns on by default (layer_norm only patches vision towers)
_TEXT_DEFAULTS = frozenset({"rope", "rms_norm", "glu"})


def from_apply_kwargs(kwargs: dict, *, loss: bool = True) -> str:
    """The plan value for `apply_liger_kernel_to_<type>(**kwargs)` (the Trainer's liger_kernel_config is these
    kwargs): Liger's defaults for the model type unless a kernel is turned off, then the decoder defaults with
    the changes. `fused_linear_cross_entropy` is the plan's fused loss, not one of these; `loss` off drops the
    plain cross-entropy for trainers that never call the model's loss."""
    named = {"glu" if key in ("swiglu", "geglu") else key: bool(value) for key, value in kwargs.items()}
    named = {key: value for key, value in named.items() if key in KERNELS and (loss or key != "cross_entropy")}
    on = {key for key, value in named.items() if value}
    if set(named) >= set(KERNELS) - ({"cross_entropy"} if not loss else set()):  # every kernel named: exactly those
        return parse(on)
    if all(named.values()):
        return parse({DEFAULT} | on)
    return parse((_TEXT_DEFAULTS | on) - {key for key, value in named.items() if not value})


def apply_kwargs(kernels: str) -> dict[str, bool]:
    """The apply function's keyword arguments (the Trainer's liger_kernel_config) for a plan value: only the
    additions to `default`, or every kernel by name (swiglu and geglu both: each apply function takes its own and
    `_apply_liger_kernel_to_instance` drops the other)."""
    names = set(kernels.split(",")) - {""}
    if DEFAULT in names:
        return {("swiglu" if n == "glu" else n): True for n in KERNELS if n in names}
    out = {}
    for name in KERNELS:
        for key in (("swiglu", "geglu") if name == "glu" else (name,)):
            out[key] = name in names
    return out
