"""axolotl's `quantize_moe_experts`: transformers 5's fused 3-D MoE expert tensors quantized as they load.

src/axolotl/monkeypatch/moe_quant.py `patch_moe_quantization_on_load` wraps transformers' `set_param_for_module`:
every parameter of three or more dimensions whose name contains "expert" (and that is not inside a bitsandbytes
Linear) is replaced through bitsandbytes' `replace_parameter_4bit` (one `quantize_4bit` over the whole tensor: NF4
by default, `bnb_4bit_use_double_quant` deciding the nested statistics, bitsandbytes' 64-value blocks) or, with
load_in_8bit, `replace_parameter_8bit` (`int8_vectorwise_quant` over the tensor flattened to rows of its last
dimension: int8 values and one fp32 scale per row). bitsandbytes itself quantizes `nn.Linear` modules only, so
without this the experts stay in the compute dtype (planner.methods).
"""

from __future__ import annotations

from planner.spec import Block


def expert_tensors(block: Block, hidden: int) -> list[tuple[int, int]]:
    """(numel, rows of the last dimension) of each fused expert tensor in `block`: gate_up (E, 2I, d) and down
    (E, d, I) for gated experts, up (E, I, d) and down for plain ones; one tensor when the count fits neither."""
    mlp = block.mlp
    total = block.other_params.get("experts", 0)
    if mlp.kind != "moe" or not total:
        return []
    e, i = mlp.num_experts, mlp.intermediate_size
    down = (e * hidden * i, e * hidden)
    for width in (2, 1):  # gated, plain
        if total == e * (width + 1) * i * hidden:
            return [(e * width * i * hidden, e * width * i), down]
    return [(total, total // hidden)]
