"""Parameter counts, to the parameter, against transformers' own models on the meta device."""

from __future__ import annotations

import pytest

from planner.params import count_params, llamafactory_all
from planner.spec import spec_from_config
from tests.planner.configs import EXACT_TYPES, random_config
from tests.planner.truth import meta_model

SEEDS = [0, 1, 2, 3]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("model_type", EXACT_TYPES)
def test_total_and_per_layer_counts_match_transformers(model_type: str, seed: int) -> None:
    config = random_config(model_type, seed)
    model = meta_model(config)
    spec = spec_from_config(config, source="test")
    counts = count_params(spec)
    assert not spec.warnings or model_type == "deepseek_v3"
    assert counts.total == sum(p.numel() for p in model.parameters()), config
    by_layer = [0] * spec.num_layers
    for name, p in model.named_parameters():
        parts = name.split(".")
        for i, part in enumerate(parts[:-1]):
            if part in ("layers", "h") and parts[i + 1].isdigit():
                by_layer[int(parts[i + 1])] += p.numel()
                break
    assert counts.per_layer == by_layer, config


@pytest.mark.parametrize("model_type", EXACT_TYPES)
def test_linears_are_the_modules_transformers_builds(model_type: str) -> None:
    """Every Linear ftplan lists exists in the real block with that shape (LoRA relies on it)."""
    import torch

    from tests.planner.truth import linear_like_types

    config = random_config(model_type, 7, layers=2)
    model = meta_model(config)
    spec = spec_from_config(config, source="test")
    real = {}
    for name, module in model.named_modules():
        if isinstance(module, linear_like_types()) and "lm_head" not in name:
            parts = name.split(".")
            idx = next(i for i, p in enumerate(parts) if p.isdigit())
            if int(parts[idx]) == spec.num_layers - 1:
                w = module.weight
                shape = tuple(w.shape) if isinstance(module, torch.nn.Linear) else tuple(w.shape[::-1])
                real[".".join(parts[idx + 1:])] = shape
    last_block = spec.blocks[-1].block
    ours = {lin.path: (lin.out_features, lin.in_features) for lin in last_block.linears}
    assert ours == real


@pytest.mark.parametrize("model_type", EXACT_TYPES)
def test_llamafactory_all_names_what_find_all_linear_modules_finds(model_type: str) -> None:
    """LLaMA-Factory's `lora_target: all`: the names of the modules whose class name has "Linear" (GPT-2's
    Conv1D, transformers 5's routers and fused experts are not among them)."""
    from tests.planner.truth import find_all_linear_modules

    config = random_config(model_type, 7, layers=2)
    assert llamafactory_all(spec_from_config(config, source="test")) == find_all_linear_modules(meta_model(config))
