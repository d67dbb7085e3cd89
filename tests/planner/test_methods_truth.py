"""Trainable counts and weight bytes against peft, bitsandbytes and real models."""

from __future__ import annotations

import warnings

import pytest

from planner.errors import FtplanError
from planner.memory import estimate_memory
from planner.methods import layout
from planner.params import count_params
from planner.plan import Plan
from planner.spec import spec_from_config
from planner.target import Machine
from tests.planner.configs import EXACT_TYPES, random_config
from tests.planner.truth import build_model, lora_target_modules, meta_model

CPU = Machine(device="cpu")  # no CUDA context in the totals

# A second target set per family: the MLP projections under their transformers names.
MLP_TARGETS = {
    "gpt2": "c_fc,mlp.c_proj", "gpt_neox": "dense_h_to_4h,dense_4h_to_h", "falcon": "dense_h_to_4h,dense_4h_to_h",
    "starcoder2": "c_fc,c_proj", "phi3": "gate_up_proj,down_proj", "mixtral": "w1,w2,w3",
}
QV_TARGETS = {"gpt2": "c_attn", "gpt_neox": "query_key_value", "falcon": "query_key_value",
              "phi3": "qkv_proj", "deepseek_v3": "q_b_proj,kv_b_proj"}

def _peft_trainable(config: dict, target: str, rank: int) -> int:
    """Trainable parameters peft creates for a `lora_target`: `all` as LLaMA-Factory expands it
    (find_all_linear_modules), `all-linear` handed to peft as its own shorthand."""
    from peft import LoraConfig, get_peft_model

    model = meta_model(config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank,
                                                      target_modules=lora_target_modules(model, target)))
    return sum(p.numel() for p in peft_model.parameters() if p.requires_grad)


@pytest.mark.parametrize("rank", [4, 16])
@pytest.mark.parametrize("model_type", EXACT_TYPES)
def test_lora_trainable_counts_match_peft(model_type: str, rank: int) -> None:
    config = random_config(model_type, 1, layers=2)
    if model_type == "deepseek_v3":
        config["q_lora_rank"] = 24
    spec = spec_from_config(config, source="test")
    counts = count_params(spec)
    targets = ["all-linear", QV_TARGETS.get(model_type, "q_proj,v_proj"),
               MLP_TARGETS.get(model_type, "gate_proj,up_proj,down_proj")]
    for target in targets:
        ours = layout(spec, counts, Plan(method="lora", lora_rank=rank, lora_target=target))
        assert ours.trainable_params == _peft_trainable(config, target, rank), target


@pytest.mark.parametrize("model_type", [t for t in EXACT_TYPES if t != "gpt2"])
def test_lora_all_matches_llamafactory(model_type: str) -> None:
    """`lora_target: all` as LLaMA-Factory expands it, built by the truth helper. On transformers 5 it differs
    from peft's all-linear where experts are fused 3-D parameters and routers are not Linear modules: Mixtral
    and Qwen3-MoE get attention adapters only, DeepSeek-V3 no router adapters (its shared experts lend the
    expert names, which peft re-points to the experts too)."""
    config = random_config(model_type, 1, layers=2)
    if model_type == "deepseek_v3":
        config["q_lora_rank"] = 24
    spec = spec_from_config(config, source="test")
    ours = layout(spec, count_params(spec), Plan(method="lora", lora_rank=4, lora_target="all"))
    assert ours.trainable_params == _peft_trainable(config, "all", 4)


def test_lora_all_on_gpt2_is_refused_as_llamafactory_refuses_it() -> None:
    """GPT-2's projections are Conv1D, so LLaMA-Factory's `all` finds no module and peft refuses the empty
    list: LLaMA-Factory cannot launch the run, and the planner says so (all-linear includes Conv1D)."""
    from peft import LoraConfig, get_peft_model

    config = random_config("gpt2", 1, layers=2)
    model = meta_model(config)
    assert lora_target_modules(model, "all") == []
    with pytest.raises(ValueError, match="target_modules"):
        get_peft_model(model, LoraConfig(r=4, target_modules=lora_target_modules(model, "all")))
    spec = spec_from_config(config, source="test")
    with pytest.raises(FtplanError, match="Conv1D") as caught:
        layout(spec, count_params(spec), Plan(method="lora", lora_rank=4, lora_target="all"))
    assert caught.value.field == "lora_target"
    ours = layout(spec, count_params(spec), Plan(method="lora", lora_rank=4, lora_target="all-linear"))
    assert ours.trainable_params == _peft_trainable(config, "all-linear", 4)


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "mixtral", "phi3"])
def test_qlora_trainable_and_weight_bytes_match_bitsandbytes(model_type: str, tmp_path) -> None:
    """A real 4-bit model: adapters as peft counts them, weights as the storages hold them."""
    config = random_config(model_type, 2, layers=2)
    spec = spec_from_config(config, source="test")
    counts = count_params(spec)
    for double_quant in (True, False):
        plan = Plan(method="qlora", precision="bf16", lora_rank=8, double_quant=double_quant,
                    lora_target="all-linear")
        ours = layout(spec, counts, plan)
        model = build_model(config, method="qlora", precision="bf16", lora_rank=8, double_quant=double_quant,
                            lora_target="all-linear", tmp_dir=tmp_path / str(double_quant))
        assert ours.trainable_params == sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert ours.weight_bytes == _stored_bytes(model)


def _stored_bytes(model) -> int:
    """Bytes of every parameter plus bitsandbytes' quantization state (absmax, nested absmax, code)."""
    import torch

    seen: dict[int, int] = {}
    for p in model.parameters():
        seen[p.untyped_storage().data_ptr()] = p.untyped_storage().nbytes()
        state = getattr(p, "quant_state", None)
        for obj in (state, getattr(state, "state2", None)):
            if obj is None:
                continue
            for value in vars(obj).values():
                if isinstance(value, torch.Tensor):
                    seen[value.untyped_storage().data_ptr()] = value.untyped_storage().nbytes()
    return sum(seen.values())


@pytest.mark.parametrize(("method", "layers"), [("full", 1), ("freeze", 1), ("freeze", -2), ("lora", 1)])
def test_trainable_counts_match_requires_grad(method: str, layers: int) -> None:
    """freeze_trainable_layers N > 0 trains the last N layers, N < 0 the first -N (LLaMA-Factory)."""
    config = random_config("qwen2", 3, layers=3)
    spec = spec_from_config(config, source="test")
    ours = layout(spec, count_params(spec), Plan(method=method, freeze_trainable_layers=layers, lora_rank=4))
    model = build_model(config, method=method, freeze_trainable_layers=layers, lora_rank=4)
    assert ours.trainable_params == sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize(("method", "precision"), [("full", "bf16"), ("lora", "bf16"), ("freeze", "fp32")])
def test_ddp_buckets_match_what_ddp_allocates(method: str, precision: str, tmp_path) -> None:
    """Plain DDP allocates its gradient buckets when it wraps the model, before the first forward: the
    planner counts them in every phase, and their size is what DDP itself reports."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    config = random_config("llama", 0, layers=2)
    spec = spec_from_config(config, source="test")
    plan = Plan(method=method, precision=precision, gpus=2, lora_rank=4, freeze_trainable_layers=1)
    est = estimate_memory(spec, plan, machine=CPU)
    model = build_model(config, method=method, precision=precision, lora_rank=4, freeze_trainable_layers=1)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        sizes = DistributedDataParallel(model)._get_ddp_logging_data()["bucket_sizes"]
    finally:
        dist.destroy_process_group()
    assert est.details.ddp_buckets == sum(int(s) for s in str(sizes).split(","))
    single = estimate_memory(spec, plan.with_(gpus=1), machine=CPU)
    assert all(p.parts["gradients"] >= est.details.ddp_buckets for p in est.phases)
    assert est.phases[0].allocated - single.phases[0].allocated == est.details.ddp_buckets
