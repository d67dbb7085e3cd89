"""axolotl's quantize_moe_experts: the base's bytes against a real QLoRA MoE model whose fused expert tensors are
quantized as src/axolotl/monkeypatch/moe_quant.py does it (every parameter of 3+ dimensions with "expert" in its
name: bitsandbytes' `replace_parameter_4bit`, or int8 rows with an fp32 scale each for 8 bits)."""

from __future__ import annotations

import pytest

from planner.errors import FtplanError
from planner.methods import layout
from planner.params import count_params
from planner.plan import Plan
from planner.spec import spec_from_config
from tests.planner.configs import random_config
from tests.planner.truth import build_model

torch = pytest.importorskip("torch")
bnb = pytest.importorskip("bitsandbytes")


def _quantize_experts(model, bits: int, double_quant: bool) -> int:
    """moe_quant.py `_patched_set_param_for_module`, applied after loading: returns how many tensors it quantized."""
    import torch.nn.utils.parametrize as P
    from bitsandbytes.nn.parametrize import replace_parameter_4bit

    targets = [(name, module) for name, module in model.named_modules()
               for pname, p in module.named_parameters(recurse=False)
               if p.ndim >= 3 and "expert" in f"{name}.{pname}".lower()
               for name in [f"{name}.{pname}"]]
    for full, module in targets:
        pname = full.rsplit(".", 1)[1]
        if bits == 4:
            replace_parameter_4bit(module, pname, compress_statistics=double_quant, quant_type="nf4")
        else:  # replace_parameter_8bit: int8_vectorwise_quant over rows of the last dimension
            p = getattr(module, pname)
            data, stats, _ = bnb.functional.int8_vectorwise_quant(p.data.reshape(-1, p.shape[-1]).half())
            setattr(module, pname, torch.nn.Parameter(data.reshape(p.shape), requires_grad=False))
            module.register_buffer(f"{pname}_row_stats", stats)
        assert P.is_parametrized(module, pname) or bits == 8
    return len(targets)


def _stored_bytes(model) -> int:
    """Every parameter, and bitsandbytes' quantization states (on Linear4bit weights and on the
    parametrizations of the quantized expert tensors)."""
    seen: dict[int, int] = {}

    def keep(t) -> None:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()

    states = [getattr(p, "quant_state", None) for p in model.parameters()]
    states += [getattr(m, "quant_state", None) for m in model.modules()]
    # buffers: only the 8-bit row scales (the rotary inv_freq is not a weight, and the plan leaves it out)
    for t in [*model.parameters(), *(b for n, b in model.named_buffers() if n.endswith("_row_stats"))]:
        keep(t)
    for state in states:
        for obj in (state, getattr(state, "state2", None)):
            for value in vars(obj).values() if obj is not None else ():
                if isinstance(value, torch.Tensor):
                    keep(value)
    return sum(seen.values())


@pytest.mark.parametrize("model_type", ["qwen3_moe", "mixtral"])
@pytest.mark.parametrize(("bits", "double_quant"), [(4, True), (4, False), (8, True)])
def test_quantized_experts_match_bitsandbytes(model_type: str, bits: int, double_quant: bool, tmp_path) -> None:
    config = random_config(model_type, 1, layers=2)
    spec = spec_from_config(config, source="test")
    plan = Plan(method="qlora", quant_bits=bits, precision="bf16", lora_rank=4, lora_target="q_proj,v_proj",
                double_quant=double_quant, quantize_experts=True)
    ours = layout(spec, count_params(spec), plan)
    model = build_model(config, method="qlora", precision="bf16", lora_rank=4, lora_target="q_proj,v_proj",
                        double_quant=double_quant, quant_bits=bits, tmp_dir=tmp_path)
    before = _stored_bytes(model)
    assert _quantize_experts(model, bits, double_quant) == 2 * 2  # gate_up and down, in each of the 2 layers
    after = _stored_bytes(model)
    plain = layout(spec, count_params(spec), plan.with_(quantize_experts=False))
    assert plain.weight_bytes - ours.weight_bytes == before - after
    # 8 bits: the plan's Linear8bitLt linears already differ from this CPU model by a few bytes without the key
    # (1,280 of 155,072 here), so only the experts' share is compared there
    if bits == 4:
        assert ours.weight_bytes == after


def test_quantize_experts_needs_qlora() -> None:
    with pytest.raises(FtplanError, match="needs QLoRA"):
        Plan.build(method="lora", quantize_experts=True)
