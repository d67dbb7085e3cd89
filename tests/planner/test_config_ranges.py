"""Values the frameworks' own code refuses are refused by preflight's readers, in one line naming the key; values
they accept with a meaning (a negative max_grad_norm: no clipping) are read with that meaning."""

from __future__ import annotations

import pytest
import yaml

from planner.configs import read_run_config
from planner.errors import FtplanError

BASES = {
    "llamafactory": {"model_name_or_path": "tiny-llama", "stage": "sft", "finetuning_type": "lora",
                     "dataset": "identity", "template": "llama3", "output_dir": "out"},
    "trl": {"model_name_or_path": "tiny-llama", "dataset_name": "x", "output_dir": "out", "max_length": 512},
    "axolotl": {"base_model": "tiny-llama", "adapter": "lora", "datasets": [{"path": "x", "type": "alpaca"}],
                "micro_batch_size": 1, "sequence_len": 512},
}
EPOCHS = {"llamafactory": "num_train_epochs", "trl": "num_train_epochs", "axolotl": "num_epochs"}


def _read(tmp_path, fmt: str, **keys):
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({**BASES[fmt], **keys}))
    return read_run_config(path)


@pytest.mark.parametrize("fmt", list(BASES))
def test_a_negative_learning_rate_is_refused_as_torch_refuses_it(tmp_path, fmt: str) -> None:
    import torch

    with pytest.raises(ValueError, match="learning rate"):  # the truth: the optimizer every trainer builds
        torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=-1e-4)
    with pytest.raises(FtplanError, match="learning_rate"):
        _read(tmp_path, fmt, learning_rate=-1e-4)


@pytest.mark.parametrize("fmt", list(BASES))
@pytest.mark.parametrize(("key", "value"), [("learning_rate", float("nan")), ("learning_rate", float("inf")),
                                            ("lora_alpha", -16), ("epochs", -1)])
def test_values_that_train_nothing_sane_are_refused(tmp_path, fmt: str, key: str, value) -> None:
    key = EPOCHS[fmt] if key == "epochs" else key
    with pytest.raises(FtplanError, match=key):
        _read(tmp_path, fmt, **{key: value})


def test_negative_epochs_with_max_steps_are_transformers_use_max_steps(tmp_path) -> None:
    run = _read(tmp_path, "trl", num_train_epochs=-1, max_steps=100)
    assert run.hyper.max_steps == 100


@pytest.mark.parametrize("fmt", list(BASES))
def test_a_negative_max_grad_norm_turns_clipping_off_as_the_trainer_does(tmp_path, fmt: str) -> None:
    # transformers' Trainer clips only `if args.max_grad_norm is not None and args.max_grad_norm > 0`
    assert _read(tmp_path, fmt, max_grad_norm=-1).hyper.max_grad_norm == 0.0


@pytest.mark.parametrize(("key", "value"), [("max_samples", -3), ("max_samples", 0), ("val_size", -0.1)])
def test_llamafactory_data_counts(tmp_path, key: str, value) -> None:
    with pytest.raises(FtplanError, match=key):
        _read(tmp_path, "llamafactory", **{key: value})


def test_a_deepspeed_offload_that_is_not_a_mapping_is_refused_as_deepspeed_refuses_it(tmp_path) -> None:
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    with pytest.raises(Exception):  # noqa: B017 - pydantic's ValidationError, whatever its module
        DeepSpeedZeroConfig(stage=2, offload_optimizer="cpu")
    ds = tmp_path / "ds.json"
    ds.write_text('{"zero_optimization": {"stage": 2, "offload_optimizer": "cpu"}}')
    with pytest.raises(FtplanError, match="offload_optimizer"):
        _read(tmp_path, "llamafactory", deepspeed=str(ds))
