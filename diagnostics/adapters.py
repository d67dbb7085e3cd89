"""Houlsby bottleneck adapters (Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP"), which peft
does not have: after each decoder layer's attention and after its MLP, down (d -> d / R, bias), SiLU, up (d / R ->
d, bias), added to the sublayer's output before the residual sum, as the `adapters` library's DoubleSeqBnConfig
places them. The adapter weights are fp32 and see the sublayer output cast to fp32, the result cast back, as peft
treats LoRA; planner.activations `Tape.bottleneck` replays exactly this (keep the two the same).

Each adapter is an attribute of the sublayer it follows (`model.layers.3.self_attn.houlsby_adapter.down.weight`),
so the monitor files it under its layer, and a forward hook that reads the adapter from the hooked module applies
it: a deep copy (the DPO reference) then runs its own adapters, not the original's.
"""

from __future__ import annotations

import functools
import re

from planner.errors import FtplanError

ATTRIBUTE = "houlsby_adapter"
# the decoder layer's attention and MLP submodules, by the names transformers gives them per family
_ATTENTION = ("self_attn", "attn", "attention", "self_attention")
_MLP = ("mlp", "block_sparse_moe", "feed_forward")
_DECODER_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks|block)\.\d+$")
INIT_STD = 0.02  # the adapters library's default init ("bert": normal(0, 0.02) weights, zero biases)


@functools.cache
def _bottleneck_class():
    import torch
    from torch import nn

    class Bottleneck(nn.Module):
        def __init__(self, hidden: int, width: int, device):
            super().__init__()
            self.down = nn.Linear(hidden, width, device=device, dtype=torch.float32)
            self.up = nn.Linear(width, hidden, device=device, dtype=torch.float32)
            for linear in (self.down, self.up):
                nn.init.normal_(linear.weight, std=INIT_STD)
                nn.init.zeros_(linear.bias)

        def forward(self, x):
            return x + self.up(nn.functional.silu(self.down(x.float()))).to(x.dtype)

    return Bottleneck


def _apply(module, args, output):
    adapter = getattr(module, ATTRIBUTE)
    if isinstance(output, tuple):  # attention returns (hidden states, weights, ...)
        return (adapter(output[0]), *output[1:])
    return adapter(output)


def decoder_layers(model) -> list:
    return [module for name, module in model.named_modules() if _DECODER_LAYER.search(name)]


def attach_adapters(model, hidden: int, width: int) -> int:
    """Freeze `model` and give every decoder layer its two adapters; returns how many were attached."""
    model.requires_grad_(False)
    device = next(model.parameters()).device
    count = 0
    for layer in decoder_layers(model):
        children = dict(layer.named_children())
        for names in (_ATTENTION, _MLP):
            sublayer = next((children[n] for n in names if n in children), None)
            if sublayer is None:
                raise FtplanError(f"{type(layer).__name__} has none of the submodules {', '.join(names)} to put a "
                                  "Houlsby adapter after; use lora or prompt for this model", field="method")
            sublayer.add_module(ATTRIBUTE, _bottleneck_class()(hidden, width, device))
            sublayer.register_forward_hook(_apply)
            count += 1
    if not count:
        raise FtplanError(f"found no decoder layers in {type(model).__name__} to put Houlsby adapters in; use lora "
                          "or prompt for this model", field="method")
    return count
