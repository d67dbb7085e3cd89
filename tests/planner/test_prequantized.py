"""Model resolution order for a hub id (HF cache, then preset, then hub) and pre-quantized checkpoints'
`quantization_config` deciding the frozen base's bytes."""

from __future__ import annotations

import json

import pytest

from planner.errors import FtplanError
from planner.methods import checkpoint_weight_bytes, layout
from planner.params import count_params
from planner.plan import Plan
from planner.spec import Quantization, load_spec, resolve_preset, spec_from_config

HUB_ID = "Qwen/Qwen2.5-0.5B-Instruct"
TINY = {"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 512, "vocab_size": 1000}


def _fake_cache(root, repo_id: str, config: dict):
    """The layout huggingface_hub's try_to_load_from_cache reads: models--owner--name/refs/main holding the
    revision, and snapshots/<revision>/config.json."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    rev = "a" * 40
    (repo / "snapshots" / rev).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    (repo / "snapshots" / rev / "config.json").write_text(json.dumps(config))


@pytest.fixture
def hub_cache(monkeypatch, tmp_path):
    import huggingface_hub.constants as c

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # HF_HOME/hub, read when the lookup runs
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    return cache


def test_cached_config_wins_over_the_preset_of_the_same_hub_id(hub_cache) -> None:
    assert resolve_preset(HUB_ID) is not None
    config = dict(json.loads(_preset_text(HUB_ID)), num_hidden_layers=3)  # the user's own (modified) copy
    _fake_cache(hub_cache, HUB_ID, config)
    spec = load_spec(HUB_ID)
    assert spec.num_layers == 3
    assert spec.source.startswith(f"HF cache: {HUB_ID} (") and str(hub_cache) in spec.source


def test_without_the_cache_the_preset_is_used_offline(hub_cache) -> None:
    spec = load_spec(HUB_ID)
    assert spec.source == "preset: qwen2.5-0.5b-instruct"
    assert spec.num_layers == 24


def test_hub_cache_env_var_is_honoured(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    _fake_cache(tmp_path, "acme/tiny", TINY)
    assert load_spec("acme/tiny").source.startswith("HF cache: acme/tiny")


def test_estimate_shows_the_source(hub_cache) -> None:
    from rich.console import Console

    from planner.service import plan_run
    from tui.report import print_estimate

    _fake_cache(hub_cache, HUB_ID, json.loads(_preset_text(HUB_ID)))
    console = Console(record=True, width=300)
    print_estimate(plan_run(load_spec(HUB_ID), {"method": "lora"}), console)
    assert "HF cache: " + HUB_ID in console.export_text()


def _preset_text(hub_id: str) -> str:
    from importlib import resources

    preset, _ = resolve_preset(hub_id)
    return (resources.files("profiles") / "models" / preset.file).read_text()


# ---------------------------------------------------------------- pre-quantized checkpoints


def _spec(quantization_config: dict, **extra):
    return spec_from_config({**TINY, **extra, "quantization_config": quantization_config}, source="q.json")


def _linears(spec):
    return [lin for g in spec.blocks for lin in g.block.linears for _ in range(g.count)]


def test_gptq_bytes_follow_the_packed_layout() -> None:
    q = Quantization(method="gptq", bits=4, group_size=128)
    # qweight int32 (512*4/32, 1024) + qzeros int32 (4, 1024*4/32) + scales fp16 (4, 1024) + g_idx int32 (512)
    assert checkpoint_weight_bytes(q, 512, 1024) == 64 * 1024 * 4 + 4 * 128 * 4 + 4 * 1024 * 2 + 512 * 4
    per_row = Quantization(method="gptq", bits=4, group_size=None)
    assert checkpoint_weight_bytes(per_row, 512, 1024) == 64 * 1024 * 4 + 128 * 4 + 1024 * 2 + 512 * 4


def test_awq_and_fp8_bytes() -> None:
    awq = Quantization(method="awq", bits=4, group_size=128)
    assert checkpoint_weight_bytes(awq, 512, 1024) == 512 * 128 * 4 + 4 * 128 * 4 + 4 * 1024 * 2
    no_zero = awq.model_copy(update={"zero_point": False})
    assert checkpoint_weight_bytes(no_zero, 512, 1024) == 512 * 128 * 4 + 4 * 1024 * 2
    fp8 = Quantization(method="fp8", bits=8, block_size=(128, 128))
    assert checkpoint_weight_bytes(fp8, 300, 200) == 300 * 200 + 4 * 2 * 3  # ceil(200/128) x ceil(300/128)


def test_lora_on_a_gptq_checkpoint_keeps_its_bytes_and_says_so() -> None:
    spec = _spec({"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False})
    assert spec.quantization.method == "gptq" and any("pre-quantized GPTQ 4-bit" in w for w in spec.warnings)
    counts = count_params(spec)
    train = layout(spec, counts, Plan.build(method="lora", precision="bf16-mixed"))
    quantized = next(g for g in train.groups if g.name.startswith("quantized linears"))
    lins = _linears(spec)
    assert quantized.params == sum(lin.in_features * lin.out_features for lin in lins)
    assert quantized.nbytes == sum(checkpoint_weight_bytes(spec.quantization, lin.in_features, lin.out_features)
                                   for lin in lins)
    rest = next(g for g in train.groups if g.name.startswith("embeddings"))
    assert rest.params == counts.total - quantized.params and rest.nbytes == 2 * rest.params
    assert train.checkpoint_quantized and any("pre-quantized checkpoint" in n for n in train.notes)
    plain = layout(spec_from_config(TINY, source="p"), counts, Plan.build(method="lora", precision="bf16-mixed"))
    assert train.weight_bytes < plain.weight_bytes


def test_excluded_modules_stay_in_the_compute_dtype() -> None:
    spec = _spec({"quant_method": "awq", "bits": 4, "group_size": 128,
                  "modules_to_not_convert": ["model.layers.0.mlp", "v_proj"]})
    train = layout(spec, count_params(spec), Plan.build(method="lora", precision="bf16"))
    quantized = next(g for g in train.groups if g.name.startswith("quantized linears"))
    expected = sum(lin.in_features * lin.out_features for g in spec.blocks for i in range(g.start, g.start + g.count)
                   for lin in g.block.linears
                   if not (i == 0 and lin.component == "mlp") and lin.name != "v_proj")
    assert quantized.params == expected


def test_bitsandbytes_checkpoint_wins_over_the_plans_quantization() -> None:
    spec = _spec({"quant_method": "bitsandbytes", "load_in_8bit": True, "llm_int8_skip_modules": ["lm_head"]})
    train = layout(spec, count_params(spec), Plan.build(method="qlora"))
    quantized = next(g for g in train.groups if g.name.startswith("quantized linears"))
    assert "bitsandbytes 8-bit" in quantized.name
    assert quantized.nbytes == sum(lin.in_features * lin.out_features + 4 * lin.out_features
                                   for lin in _linears(spec))


@pytest.mark.parametrize("method", ["full", "freeze"])
def test_full_fine_tuning_of_a_gptq_checkpoint_is_refused(method) -> None:
    spec = _spec({"quant_method": "gptq", "bits": 4, "group_size": 128})
    with pytest.raises(FtplanError, match="purely quantized") as info:
        layout(spec, count_params(spec), Plan.build(method=method))
    assert info.value.field == "method"


def test_fp8_full_is_planned_dequantized_lora_keeps_fp8() -> None:
    spec = load_spec("deepseek-v3")
    assert spec.quantization.method == "fp8" and spec.quantization.block_size == (128, 128)
    counts = count_params(spec)
    full = layout(spec, counts, Plan.build(method="full", precision="bf16"))
    assert full.weight_bytes == 2 * counts.total and any("dequantized" in n for n in full.notes)
    lora = layout(spec, counts, Plan.build(method="lora", precision="bf16"))
    quantized = next(g for g in lora.groups if g.name.startswith("quantized linears"))
    # every block linear and the fused experts, at 1 byte plus fp32 128x128 block scales
    assert counts.experts < quantized.params < counts.total
    assert quantized.params < quantized.nbytes < quantized.params * 1.001


def test_mxfp4_and_dequantize_are_planned_in_the_compute_dtype() -> None:
    for qc in ({"quant_method": "mxfp4"}, {"quant_method": "fp8", "weight_block_size": [128, 128],
                                           "dequantize": True}):
        spec = _spec(qc)
        train = layout(spec, count_params(spec), Plan.build(method="lora", precision="bf16"))
        assert not train.checkpoint_quantized and spec.warnings


def test_unknown_quant_method_is_a_warning() -> None:
    spec = _spec({"quant_method": "hqq"})
    assert spec.quantization is None and any("'hqq' is not modelled" in w for w in spec.warnings)
