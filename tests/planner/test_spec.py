"""Loading model specs: presets, aliases, local files, hub ids, and errors users can cause."""

from __future__ import annotations

import json

import pytest

from planner.errors import EnvironmentMissing, FtplanError
from planner.params import count_params
from planner.spec import load_spec, preset_index, spec_from_config
from tests.planner.configs import EXACT_TYPES, random_config
from tests.planner.truth import meta_model

PRESETS = sorted(preset_index().presets)


@pytest.mark.slow
@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_counts_like_transformers(name: str) -> None:
    """Real configs (not only random ones): our count equals the meta-device model's, and the
    model card's published count where the index records one."""
    preset = preset_index().presets[name]
    spec = load_spec(name)
    with open(_preset_file(preset.file), encoding="utf-8") as fh:
        config = json.load(fh)
    config.pop("auto_map", None)
    config.pop("quantization_config", None)  # DeepSeek-V3 ships fp8 settings; the shapes are what we count
    total = count_params(spec).total
    assert total == sum(p.numel() for p in meta_model(config).parameters())
    if preset.published_params:
        assert total == preset.published_params


def _preset_file(file: str):
    from importlib import resources

    return resources.files("profiles") / "models" / file


def test_size_alias_says_which_model_it_stands_for() -> None:
    spec = load_spec("7b")
    assert spec.stands_for == "meta-llama/Llama-2-7b-hf"
    assert count_params(spec).total == 6_738_415_616


def test_hub_id_of_a_preset_resolves_offline(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = load_spec("Qwen/Qwen2.5-7B-Instruct")
    assert spec.source == "preset: qwen2.5-7b-instruct"
    assert count_params(spec).total == 7_615_616_512


def test_local_directory_and_json_file(tmp_path) -> None:
    config = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "intermediate_size": 128, "vocab_size": 100}
    (tmp_path / "config.json").write_text(json.dumps(config))
    by_dir = load_spec(str(tmp_path))
    by_file = load_spec(str(tmp_path / "config.json"))
    assert count_params(by_dir).total == count_params(by_file).total == sum(
        p.numel() for p in meta_model(config).parameters())


def test_uncached_hub_id_offline_is_a_clear_environment_error(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(EnvironmentMissing, match=r"some-org/some-model: config.json is not in the local cache"):
        load_spec("some-org/some-model")


def test_cached_hub_config_is_used_without_network(monkeypatch, tmp_path) -> None:
    """A config.json already in the HF cache is read from there (cache first)."""
    import huggingface_hub.constants as c

    snapshot = tmp_path / "models--acme--tiny" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (tmp_path / "models--acme--tiny" / "refs").mkdir()
    (tmp_path / "models--acme--tiny" / "refs" / "main").write_text("0" * 40)
    (snapshot / "config.json").write_text(json.dumps(
        {"model_type": "qwen2", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4,
         "num_key_value_heads": 2, "intermediate_size": 64, "vocab_size": 50}))
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    spec = load_spec("acme/tiny")
    assert spec.model_type == "qwen2" and spec.source.startswith("HF cache: acme/tiny (")


@pytest.mark.parametrize(("config", "message"), [
    ({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 8,
      "vocab_size": 10}, "missing key 'num_hidden_layers'"),
    ({"model_type": "llama", "hidden_size": "64", "num_hidden_layers": 1, "num_attention_heads": 4,
      "intermediate_size": 8, "vocab_size": 10}, "key 'hidden_size' must be an integer"),
    ({"hidden_size": 64}, "missing key 'model_type'"),
])
def test_malformed_configs_name_file_and_key(tmp_path, config, message) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    with pytest.raises(FtplanError, match=message) as info:
        load_spec(str(path))
    assert str(path) in str(info.value)


def test_broken_json_names_the_line(tmp_path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"model_type": "llama",\n "hidden_size": }')
    with pytest.raises(FtplanError, match=r"not valid JSON \(line 2"):
        load_spec(str(path))


def test_unknown_model_type_gets_a_generic_estimate_with_a_warning() -> None:
    config = {"model_type": "brand_new_lm", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "intermediate_size": 128, "vocab_size": 100, "hidden_act": "silu"}
    spec = spec_from_config(config, source="x.json")
    assert spec.warnings and "generic" in spec.warnings[0]
    llama_like = dict(config, model_type="llama")
    assert count_params(spec).total == count_params(spec_from_config(llama_like, source="y")).total


def test_multimodal_wrapper_plans_its_text_model() -> None:
    text = {"model_type": "gemma3_text", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 128, "vocab_size": 100}
    spec = spec_from_config({"model_type": "gemma3", "text_config": text}, source="c.json")
    assert spec.model_type == "gemma3_text"
    assert any("vision tower is not counted" in w for w in spec.warnings)


def test_unknown_preset_is_bad_input() -> None:
    with pytest.raises(FtplanError, match="not a preset"):
        load_spec("8x-nonsense")


@pytest.mark.parametrize("model_type", EXACT_TYPES)
def test_the_default_attention_is_the_one_transformers_picks(model_type: str) -> None:
    """transformers' default attention (sdpa, or eager for a model without SDPA) is the kernel ftplan plans."""
    from planner.memory import attention_run
    from planner.plan import Plan

    config = random_config(model_type, 0, layers=1)
    truth = meta_model(config).config._attn_implementation
    planned = attention_run(spec_from_config(config, source="test"), Plan()).attention
    assert planned == truth
