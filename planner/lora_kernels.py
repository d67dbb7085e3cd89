"""axolotl's fused LoRA kernels (`lora_mlp_kernel`, `lora_qkv_kernel`, `lora_o_kernel`): which ones a run gets.

axolotl's monkeypatch (src/axolotl/monkeypatch/lora_kernels.py, `apply_lora_kernel_patches`) rebinds a decoder
layer's `self_attn.apply_qkv` / `apply_o` and `mlp.forward` to the custom autograd Functions of
src/axolotl/kernels/lora.py (`LoRA_QKV`, `LoRA_O`, `LoRA_MLP`), each only where every projection it fuses carries
a LoRA adapter (`can_patch_qkv`, `can_patch_o`, `can_patch_mlp`), and the MLP only for a gated `gate_proj` /
`up_proj` / `down_proj` MLP with SiLU or GELU (`SUPPORTED_ACTIVATIONS`; routed MoE experts are never patched).
What each Function saves for backward is replayed in planner.activations.
"""

from __future__ import annotations

from planner.errors import FtplanError

KERNELS = ("qkv", "o", "mlp")


def parse(value) -> str:
    """A comma list (or list) of kernel names in canonical order; bad names refused."""
    if value is None or value is False:
        return ""
    names = value.split(",") if isinstance(value, str) else list(value)
    names = {str(n).strip().lower().removeprefix("lora_").removesuffix("_kernel") for n in names} - {"", "none"}
    unknown = sorted(names - set(KERNELS))
    if unknown:
        raise FtplanError(f"unknown LoRA kernel {unknown[0]!r}: give a comma list of {', '.join(KERNELS)}, or none",
                          field="lora_kernels")
    return ",".join(n for n in KERNELS if n in names)


def applied(kernels: str) -> frozenset[str]:
    return frozenset(kernels.split(",")) - {""}


def assumption(kernels: str) -> str | None:
    names = applied(kernels)
    if not names:
        return None
    what = {"qkv": "LoRA_QKV keeps q/k/v's shared input once", "o": "LoRA_O keeps o_proj's input",
            "mlp": "LoRA_MLP keeps the MLP input and the gate and up outputs, recomputing the activation"}
    return ("axolotl's LoRA kernels (" + "; ".join(what[n] for n in KERNELS if n in names)
            + ") in place of peft's layers, where every fused projection has an adapter and no DoRA")
