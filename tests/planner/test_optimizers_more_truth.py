"""The optimizers issue 11 added, beyond those the HF Trainer builds here (tests/planner/test_optimizer_truth.py).

Truth: Muon as LLaMA-Factory's `_create_muon_optimizer` splits the parameters (train/trainer_utils.py: 2-D
parameters that are neither embeddings nor `lm_head` take Muon, the rest AdamW), stepped with torch 2.13's own
`torch.optim.Muon` (its `momentum_buffer` is LLaMA-Factory's `zeros_like(g)`) and `torch.optim.AdamW`. GaLore:
galore-torch's own `GaLoreAdamW` as the HF Trainer builds it for `galore_adamw` (tests/planner/truth_optimizers.py;
the other packaged optimizers are in tests/planner/test_optimizer_packages_truth.py). The readers and exports
are checked against the frameworks' key names.
"""

from __future__ import annotations

import pytest
import yaml

from planner.configs import read_run_config
from planner.configs.common import llamafactory_optim_keys, trainer_optim_keys
from planner.errors import FtplanError
from planner.memory import optimizer_state_bytes
from planner.methods import layout
from planner.params import count_params
from planner.plan import Plan
from planner.spec import spec_from_config
from tests.planner.truth import build_model, random_ids
from tests.planner.truth_optimizers import kept_storages
from tests.planner.truth_optimizers import step as truth_step
from tests.planner.truth_optimizers import trainer_optimizer as galore_trainer_optimizer

CONFIG = {
    "model_type": "llama", "vocab_size": 512, "hidden_size": 256, "intermediate_size": 512,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": False,
    "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
}
RANK = 16


def _ours(optimizer: str, method: str, precision: str, **extra) -> int:
    spec = spec_from_config(CONFIG, source="test")
    plan = Plan(method=method, precision=precision, optimizer=optimizer, lora_rank=RANK, lora_target="all", **extra)
    return optimizer_state_bytes(layout(spec, count_params(spec), plan), plan, spec)


def _backward(model) -> None:
    ids = random_ids(1, 8, CONFIG["vocab_size"])
    model(input_ids=ids, labels=ids).loss.backward()


def _storages(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in seen:
            seen.add(ptr)
            total += t.untyped_storage().nbytes()
    return total


@pytest.mark.parametrize(("method", "precision"), [("full", "bf16"), ("full", "bf16-mixed"), ("lora", "bf16")])
def test_muon_state_matches_torch_muon_with_llamafactorys_split(method: str, precision: str) -> None:
    import torch

    model = build_model(CONFIG, method=method, precision=precision, lora_rank=RANK, lora_target="all")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    muon = [p for n, p in named if p.ndim == 2 and "embed" not in n and "lm_head" not in n]
    rest = [p for n, p in named if not (p.ndim == 2 and "embed" not in n and "lm_head" not in n)]
    optimizers = [torch.optim.Muon(muon, lr=1e-3)] + ([torch.optim.AdamW(rest, lr=1e-3)] if rest else [])
    _backward(model)
    for optim in optimizers:
        optim.step()
    real = _storages(t for optim in optimizers for state in optim.state.values() for t in state.values()
                     if isinstance(t, torch.Tensor) and t.dim() > 0)
    assert _ours("muon", method, precision) == real


@pytest.mark.parametrize("precision", ["bf16", "bf16-mixed"])
def test_galore_state_matches_galore_torch(precision: str, tmp_path) -> None:
    """GaLoreAdamW after two steps: Adam's moments of the rank-16 projected gradients for every decoder
    nn.Linear, the projector's SVD factor (fp32 whole when the weight is fp32, a copy of the slice in bf16),
    AdamW's moments for the embedding, the head and the norms."""
    pytest.importorskip("galore_torch")
    model = build_model(CONFIG, method="full", precision=precision)
    optim = galore_trainer_optimizer(model, "galore_adamw", tmp_path, f"rank={RANK}")
    truth_step(model, optim, CONFIG["vocab_size"])
    kept = kept_storages(optim, include_scalars=False)
    assert _ours("galore-adamw", "full", precision, projection_rank=RANK) == sum(kept.values()), kept


def test_low_bit_and_low_rank_states_are_smaller_than_adamw() -> None:
    """Orders the implementations' allocations imply, at real sizes' ratios (1 byte < 0.5 byte ...)."""
    adamw = _ours("adamw", "full", "bf16-mixed")
    assert _ours("adamw-torch-4bit", "full", "bf16-mixed") < _ours("adamw-torch-8bit", "full", "bf16-mixed") < adamw
    assert _ours("lion-8bit", "full", "bf16-mixed") < _ours("adamw-8bit", "full", "bf16-mixed")
    assert _ours("lomo", "full", "bf16-mixed") == 0 < _ours("adalomo", "full", "bf16-mixed") < adamw // 10


def _read(tmp_path, name: str, keys: dict):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(keys, sort_keys=False))
    return read_run_config(path)


@pytest.mark.parametrize(("optim", "optimizer", "layerwise"), [
    ("paged_adamw_32bit", "paged-adamw", False), ("lion_8bit", "lion-8bit", False),
    ("adamw_torch_4bit", "adamw-torch-4bit", False), ("galore_adamw_layerwise", "galore-adamw", True),
    ("adalomo", "adalomo", False)])
def test_training_arguments_optim_names(tmp_path, optim: str, optimizer: str, layerwise: bool) -> None:
    run = _read(tmp_path, "train.yaml", {"model_name_or_path": "Qwen/Qwen2.5-7B-Instruct", "output_dir": "o",
                                         "optim": optim, "optim_args": "rank=64, update_proj_gap=50"})
    assert (run.plan.optimizer, run.plan.optimizer_in_backward) == (optimizer, layerwise)
    assert not [w for w in run.warnings if w.code == "optimizer_nearest"]
    if optimizer.startswith("galore"):
        assert (run.plan.projection_rank, run.plan.projection_update_interval) == (64, 50)


def test_bad_optim_args_name_the_key(tmp_path) -> None:
    with pytest.raises(FtplanError, match="key 'optim_args': rank=x must be a whole number"):
        _read(tmp_path, "train.yaml", {"model_name_or_path": "m/m", "output_dir": "o", "optim": "apollo_adamw",
                                       "optim_args": "rank=x"})


def test_llamafactory_switches(tmp_path) -> None:
    base = {"model_name_or_path": "Qwen/Qwen2.5-7B-Instruct", "stage": "sft", "do_train": True,
            "finetuning_type": "full", "dataset": "alpaca_en_demo", "output_dir": "o"}
    run = _read(tmp_path, "a.yaml", {**base, "use_galore": True, "optim": "adamw_bnb_8bit", "galore_layerwise": True})
    assert (run.plan.optimizer, run.plan.projection_rank, run.plan.optimizer_in_backward) == \
        ("galore-adamw-8bit", 16, True)  # finetuning_args.py: galore_rank 16
    assert _read(tmp_path, "b.yaml", {**base, "use_badam": True}).plan.optimizer == "badam"
    assert _read(tmp_path, "c.yaml", {**base, "use_muon": True}).plan.optimizer == "muon"
    with pytest.raises(FtplanError, match="use_apollo runs with optim adamw_torch"):
        _read(tmp_path, "d.yaml", {**base, "use_apollo": True, "optim": "adafactor"})


def test_exports_write_each_frameworks_name() -> None:
    plan = Plan(optimizer="galore-adamw", optimizer_in_backward=True, projection_rank=32)
    assert llamafactory_optim_keys(plan) == {
        "optim": "adamw_torch", "use_galore": True, "galore_target": "all", "galore_rank": 32,
        "galore_update_interval": 200, "galore_layerwise": True}
    keys = trainer_optim_keys(plan, "TRL")
    assert keys["optim"] == "galore_adamw_layerwise" and keys["optim_args"] == "rank=32,update_proj_gap=200"
    assert trainer_optim_keys(Plan(optimizer="paged-lion-8bit"), "TRL") == {"optim": "paged_lion_8bit"}
    assert llamafactory_optim_keys(Plan(optimizer="adam-mini")) == {"optim": "adamw_torch", "use_adam_mini": True}
    with pytest.raises(FtplanError, match="LLaMA-Factory's"):
        trainer_optim_keys(Plan(optimizer="badam"), "axolotl")
