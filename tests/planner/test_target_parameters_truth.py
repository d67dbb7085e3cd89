"""LoRA on MoE parameters (peft's `target_parameters`, axolotl's `lora_target_parameters`) against peft itself:
the trainable counts and tensors of tiny meta-device models, and what ParamWrapper saves on a tiny CPU model."""

from __future__ import annotations

import warnings
from collections import Counter

import pytest

from planner.errors import FtplanError
from planner.memory import estimate_memory
from planner.methods import layout
from planner.optimizers import trainable_tensors
from planner.params import count_params
from planner.plan import Plan
from planner.spec import spec_from_config
from planner.target import Machine
from tests.planner.configs import random_config
from tests.planner.truth import build_model, measure_saved_bytes, meta_model

CPU = Machine(device="cpu")
EXPERTS = "mlp.experts.gate_up_proj,mlp.experts.down_proj"
ROUTER = "mlp.gate.weight"


def _peft(model, targets: str, parameters: str, rank: int):
    from peft import LoraConfig, get_peft_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets.split(",")
                                                if targets else [], target_parameters=parameters.split(",")))


def _trainable(config: dict, targets: str, parameters: str, rank: int) -> list[int]:
    model = _peft(meta_model(config), targets, parameters, rank)
    return [p.numel() for p in model.parameters() if p.requires_grad]


def _plan(targets: str, parameters: str, rank: int, **kw) -> Plan:
    return Plan(method="lora", lora_rank=rank, lora_target=targets, lora_target_parameters=parameters, **kw)


@pytest.mark.parametrize("rank", [4, 16])
@pytest.mark.parametrize("model_type", ["qwen3_moe", "mixtral", "qwen2_moe"])
@pytest.mark.parametrize(("targets", "parameters"), [("", EXPERTS), ("q_proj,v_proj", EXPERTS),
                                                     ("", f"{EXPERTS},{ROUTER}"), ("o_proj", "experts.down_proj")])
def test_trainable_counts_and_tensors_match_peft(model_type: str, rank: int, targets: str, parameters: str) -> None:
    config = random_config(model_type, 1, layers=2)
    spec = spec_from_config(config, source="test")
    plan = _plan(targets, parameters, rank)
    real = _trainable(config, targets, parameters, rank)
    assert layout(spec, count_params(spec), plan).trainable_params == sum(real)
    ours = Counter()
    for t in trainable_tensors(spec, layout(spec, count_params(spec), plan), plan):
        ours[t.numel] += t.count
    assert ours == Counter(real)


def test_fused_gate_up_gets_rank_r() -> None:
    """ParamWrapper's lora_A for the fused (E, 2I, d) tensor is (E*r, d): rank r, where peft's own re-pointing of
    gate_proj + up_proj doubles it (its rank_pattern)."""
    config = random_config("qwen3_moe", 1, layers=1)
    e, d, r = config["num_experts"], config["hidden_size"], 4
    model = _peft(meta_model(config), "", "mlp.experts.gate_up_proj", r)
    shapes = [tuple(p.shape) for n, p in model.named_parameters() if "lora_A" in n]
    assert shapes == [(e * r, d)]


def test_named_and_repointed_gate_up_share_one_wrapper() -> None:
    """gate_proj,up_proj in target_modules and gate_up_proj in target_parameters: one wrapper, peft's doubled rank."""
    config = random_config("qwen3_moe", 2, layers=2)
    spec = spec_from_config(config, source="test")
    targets, parameters = "gate_proj,up_proj,q_proj", EXPERTS
    plan = _plan(targets, parameters, 8)
    assert layout(spec, count_params(spec), plan).trainable_params == sum(_trainable(config, targets, parameters, 8))


def test_dense_model_wraps_linears_only() -> None:
    """peft only warns when target_parameters match nothing but target_modules do; with nothing matched it raises."""
    from planner.methods import check_lora_target

    config = random_config("llama", 1, layers=2)
    spec = spec_from_config(config, source="test")
    plan = _plan("q_proj", EXPERTS, 4)
    assert layout(spec, count_params(spec), plan).trainable_params == sum(_trainable(config, "q_proj", EXPERTS, 4))
    with pytest.raises(ValueError):
        _trainable(config, "", EXPERTS, 4)
    with pytest.raises(FtplanError) as info:
        check_lora_target(spec, _plan("", EXPERTS, 4))
    assert info.value.field == "lora_target_parameters"


def test_unknown_names_and_other_methods_are_refused() -> None:
    with pytest.raises(FtplanError) as info:
        Plan.build(method="lora", lora_target="q_proj", lora_target_parameters="mlp.experts.weight")
    assert info.value.field == "lora_target_parameters"
    with pytest.raises(FtplanError) as info:
        Plan.build(method="full", lora_target_parameters=EXPERTS)
    assert info.value.field == "lora_target_parameters"


def test_names_stored_in_canonical_order() -> None:
    assert _plan("", " mlp.experts.down_proj , mlp.experts.gate_up_proj", 4) == _plan("", EXPERTS, 4)


@pytest.mark.parametrize("model_type", ["qwen3_moe", "mixtral"])
def test_param_wrapper_saves_match(model_type: str) -> None:
    """What a bf16 step saves with the experts wrapped, and what wrapping them adds over attention-only LoRA: the
    merged W + BA per wrapped tensor and the factors cast to W's dtype (peft keeps the adapters in fp32)."""
    config = random_config(model_type, 0, layers=2)
    spec = spec_from_config(config, source="test")
    batch, seq = 2, 24

    def real(parameters: str) -> int:
        model = build_model(config, method="full", precision="bf16")
        model = _peft(model, "q_proj,v_proj", parameters, 4)
        model.train()
        return measure_saved_bytes(model, batch, seq, config["vocab_size"])

    def ours(parameters: str) -> int:
        est = estimate_memory(spec, _plan("q_proj,v_proj", parameters, 4, precision="bf16", batch_size=batch,
                                          seq_len=seq), machine=CPU)
        return est.largest["activations"] + est.largest["logits"]

    with_experts, without = real(EXPERTS), real(ROUTER)
    planned, planned_without = ours(EXPERTS), ours(ROUTER)
    assert abs(planned - with_experts) <= 0.05 * with_experts, (planned, with_experts)
    assert abs((planned - planned_without) - (with_experts - without)) <= 0.05 * (with_experts - without), \
        (planned - planned_without, with_experts - without)
