"""Property tests over random valid plans: the memory model behaves like memory."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planner.memory import estimate_memory
from planner.plan import Plan
from planner.spec import ModelSpec, load_spec, spec_from_config
from tests.planner.configs import EXACT_TYPES, random_config

SPECS = {t: spec_from_config(random_config(t, 5, layers=3), source="prop") for t in EXACT_TYPES}
# Laws about sharding and quantization hold for models of real size, not for 3-layer toys where
# fixed costs (ZeRO-3's gathered layers, NF4's per-tensor code book) outweigh what is saved.
REAL = {name: load_spec(name) for name in ("llama-3.2-1b", "qwen2.5-7b-instruct", "mixtral-8x7b",
                                           "gemma-2-2b", "phi-3-mini-4k-instruct", "qwen3-30b-a3b")}
COMPONENTS = ("weights", "gradients", "optimizer", "master_weights", "activations", "logits", "temporaries",
              "overhead", "total")

plans = st.builds(
    Plan,
    method=st.sampled_from(["full", "freeze", "lora", "qlora"]),
    precision=st.sampled_from(["fp32", "bf16", "bf16-mixed", "fp16-mixed"]),
    optimizer=st.sampled_from(["adamw", "adamw-fused", "adamw-8bit", "paged-adamw-8bit", "adafactor", "sgd",
                               "sgd-momentum"]),
    batch_size=st.integers(1, 16),
    seq_len=st.integers(1, 4096),
    grad_accum=st.integers(1, 8),
    gradient_checkpointing=st.booleans(),
    attention=st.sampled_from(["eager", "sdpa", "flash"]),
    lora_rank=st.integers(1, 128),
    # LLaMA-Factory's `all` has nothing to wrap in GPT-2 (Conv1D): peft's all-linear does
    lora_target=st.sampled_from(["all-linear", "attention"]),
    freeze_trainable_layers=st.sampled_from([1, 2, -1]),
    gpus=st.sampled_from([1, 2, 8]),
    zero=st.sampled_from([0, 1, 2]),
)
models = st.sampled_from(EXACT_TYPES)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _total(spec: ModelSpec, plan: Plan) -> int:
    return estimate_memory(spec, plan).total


@SETTINGS
@given(models, plans)
def test_no_component_is_negative_or_nan(model_type: str, plan: Plan) -> None:
    mem = estimate_memory(SPECS[model_type], plan)
    for key, value in [*mem.peak.items(), *mem.largest.items(), ("overhead", mem.overhead)]:
        assert isinstance(value, int) and value >= 0, key
    assert mem.total >= mem.peak_allocated > 0
    assert sum(mem.peak.values()) == mem.peak_allocated and mem.peak_allocated + mem.overhead == mem.total
    assert mem.peak_allocated == max(p.allocated for p in mem.phases)


@SETTINGS
@given(models, plans)
def test_memory_grows_with_batch_sequence_and_rank(model_type: str, plan: Plan) -> None:
    spec = SPECS[model_type]
    base = _total(spec, plan)
    assert _total(spec, plan.with_(batch_size=plan.batch_size + 1)) >= base
    assert _total(spec, plan.with_(seq_len=plan.seq_len + 64)) >= base
    # bitsandbytes keeps tensors under 4096 elements at 32-bit state: a higher rank can push an adapter
    # past that size and lower the total, as it does on a GPU
    if plan.method in ("lora", "qlora") and plan.optimizer not in ("adamw-8bit", "paged-adamw-8bit"):
        assert _total(spec, plan.with_(lora_rank=plan.lora_rank + 8)) >= base


@SETTINGS
@given(models, plans)
def test_more_layers_never_need_less(model_type: str, plan: Plan) -> None:
    small = spec_from_config(random_config(model_type, 5, layers=2), source="prop")
    big = spec_from_config({**random_config(model_type, 5, layers=2), **_layers(model_type, 4)}, source="prop")
    plan = plan.with_(freeze_trainable_layers=1)
    assert _total(big, plan) >= _total(small, plan)


def _layers(model_type: str, n: int) -> dict:
    return {"n_layer": n} if model_type == "gpt2" else {"num_hidden_layers": n}


real_models = st.sampled_from(sorted(REAL))


@SETTINGS
@given(real_models, plans, st.sampled_from([2, 4, 8]))
def test_more_sharding_or_gpus_never_raises_per_gpu_memory(name: str, plan: Plan, gpus: int) -> None:
    spec = REAL[name]
    stages = [0, 1, 2] if plan.method == "qlora" else [0, 1, 2, 3]
    sharded = [_total(spec, plan.with_(gpus=gpus, zero=z)) for z in stages if z > 0]
    assert sharded == sorted(sharded, reverse=True)
    for z in stages:
        assert _total(spec, plan.with_(gpus=gpus * 2, zero=z)) <= _total(spec, plan.with_(gpus=gpus, zero=z))


@SETTINGS
@given(real_models, plans)
def test_qlora_weights_below_lora_below_full(name: str, plan: Plan) -> None:
    """At the same precision. (In pure bf16, LoRA = the full model's bf16 weights + fp32 adapters.)"""
    spec = REAL[name]
    plan = plan.with_(precision="bf16-mixed", zero=0, gpus=1)
    weights = {m: estimate_memory(spec, plan.with_(method=m)).peak["weights"] for m in ("qlora", "lora", "full")}
    assert weights["qlora"] < weights["lora"] < weights["full"]
