"""Trainable parameters of the PEFT methods beyond LoRA against peft's own count (`get_peft_model` on the meta
device), on a random config of every family; where peft refuses a method, ftplan refuses it too."""

from __future__ import annotations

import warnings

import pytest

from planner.errors import FtplanError
from planner.methods import layout
from planner.params import count_params
from planner.plan import Plan
from planner.spec import spec_from_config
from tests.planner.configs import EXACT_TYPES, random_config
from tests.planner.truth import meta_model, peft_method_config

CASES = [
    ("prefix", {"num_virtual_tokens": 7}),
    ("prefix", {"num_virtual_tokens": 7, "prefix_projection": True, "encoder_hidden_size": 24}),
    ("prompt", {"num_virtual_tokens": 5}),
    ("ptuning", {"num_virtual_tokens": 5, "encoder_hidden_size": 16}),
    ("ptuning", {"num_virtual_tokens": 5, "encoder_hidden_size": 16, "encoder_type": "lstm"}),
    ("ia3", {}),
    ("oft", {"lora_target": "all-linear", "oft_block_size": 4}),
    ("oft", {"lora_target": "all-linear", "oft_blocks": 3}),
    ("lora", {"lora_target": "all-linear", "lora_rank": 4, "use_dora": True}),
]
# peft builds a prefix for DeepSeek-V3's latent attention, but its cache holds keys and values of different widths
# that one prefix shape cannot serve: ftplan refuses it rather than plan a run that cannot start
REFUSED_ONLY_BY_FTPLAN = {("deepseek_v3", "prefix")}


def _peft_trainable(config: dict, method: str, kw: dict) -> int:
    from peft import get_peft_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(meta_model(config), peft_method_config(method, kw))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize(("method", "kw"), CASES, ids=[f"{m}-{i}" for i, (m, _) in enumerate(CASES)])
@pytest.mark.parametrize("model_type", EXACT_TYPES)
def test_trainable_counts_match_peft(model_type: str, method: str, kw: dict) -> None:
    config = random_config(model_type, 1, layers=2)
    spec = spec_from_config(config, source="test")
    plan = Plan(method=method, **kw)
    try:
        ours = layout(spec, count_params(spec), plan).trainable_params
    except FtplanError:
        ours = None
    if (model_type, method) in REFUSED_ONLY_BY_FTPLAN:
        assert ours is None
        return
    try:
        real = _peft_trainable(config, method, kw)
    except (ValueError, TypeError) as exc:  # peft refuses the method on this model
        assert ours is None, f"peft refuses ({exc}) but ftplan planned {ours}"
        return
    assert ours == real


@pytest.mark.parametrize("model_type", ["phi3", "starcoder2"])
def test_ia3_named_targets_without_peft_defaults(model_type: str) -> None:
    """Model types peft has no IA3 defaults for: ftplan asks for --ia3-target, and the named targets then match
    peft's count with no feed-forward module (IA3Config(feedforward_modules=[]))."""
    from peft import IA3Config, get_peft_model

    config = random_config(model_type, 2, layers=2)
    spec = spec_from_config(config, source="test")
    with pytest.raises(FtplanError, match="ia3_target"):
        layout(spec, count_params(spec), Plan(method="ia3"))
    target = "o_proj,down_proj" if model_type == "phi3" else "o_proj,c_proj"
    ours = layout(spec, count_params(spec), Plan(method="ia3", ia3_target=target)).trainable_params
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(meta_model(config), IA3Config(target_modules=target.split(","), feedforward_modules=[]))
    assert ours == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_oft_block_size_adjusts_as_peft_does() -> None:
    """A block size that does not divide a layer's width is moved to the nearest divisor (peft warns and adjusts)."""
    config = random_config("llama", 3, layers=1)
    config["hidden_size"] = 72  # 7 divides neither 72 nor q_proj's 4 x 18 inputs: peft moves it to 6 and 8
    config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"] = 4, 2, 18
    spec = spec_from_config(config, source="test")
    kw = {"lora_target": "q_proj,o_proj", "oft_block_size": 7}
    assert layout(spec, count_params(spec), Plan(method="oft", **kw)).trainable_params == \
        _peft_trainable(config, "oft", kw)


@pytest.mark.parametrize("reduction", [4, 16])
@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "mixtral",
                                        "olmo2", "granite", "starcoder2"])
def test_adapter_counts_match_the_papers_construction(model_type: str, reduction: int) -> None:
    """Houlsby adapters as tests/planner/truth.py builds them from the paper (two bottlenecks per layer, with
    biases); the `adapters` library's DoubleSeqBnConfig is checked in benchmarks/adapters_counts.py."""
    from tests.planner.truth import Houlsby

    config = random_config(model_type, 4, layers=2)
    spec = spec_from_config(config, source="test")
    model = meta_model(config)
    Houlsby.attach(model, reduction)
    real = sum(p.numel() for p in model.parameters() if p.requires_grad)
    ours = layout(spec, count_params(spec), Plan(method="adapter", adapter_reduction=reduction)).trainable_params
    assert ours == real


@pytest.mark.parametrize(("method", "flags", "kw"), [
    ("prefix", ["--num-virtual-tokens", "16"], {"num_virtual_tokens": 16}),
    ("ptuning", ["--num-virtual-tokens", "8", "--encoder-hidden-size", "64", "--encoder-type", "lstm"],
     {"num_virtual_tokens": 8, "encoder_hidden_size": 64, "encoder_type": "lstm"}),
    ("ia3", [], {}),
    ("oft", ["--lora-target", "all-linear", "--oft-blocks", "8"], {"lora_target": "all-linear", "oft_blocks": 8}),
])
def test_json_trainable_is_peft_count_for_a_preset(method: str, flags: list[str], kw: dict, capsys) -> None:
    """`ftplan estimate --json` carries the count peft makes for the preset's own config.json."""
    import json
    from pathlib import Path

    from tui.cli import main

    config = json.loads((Path(__file__).parents[2] / "profiles" / "models" / "llama-3.2-1b.json").read_text())
    main(["estimate", "--model", "llama-3.2-1b", "--method", method, *flags, "--json"])
    trainable = json.loads(capsys.readouterr().out)["params"]["trainable"]
    assert trainable == _peft_trainable(config, method, kw)
