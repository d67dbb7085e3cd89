"""Activation offloading: what stays on the device and what goes to host memory, against a real forward.

Two truths, each a real transformers model's forward on CPU with saved-tensor hooks that sort every saved
storage (parameters and buffers left out, each storage counted once) into "device" and "host":

* "saved": the policy of trl's `OffloadActivations` (trl/models/activation_offloading.py `pack_tensor`, which
  torchtune and axolotl share), written here from its rules: a saved tensor goes to the host unless it is a
  parameter or buffer, under `min_offload_size` (1024 bytes), or saved while the LM head runs (the
  `NoOpManager` that `get_act_offloading_ctx_manager` installs around `lm_head`). The loss runs after the
  hooks, as the planner keeps the loss's tensors on the device (the offloader's stash holds them).
* "checkpoint": transformers' own `activation_checkpointing_enable(offload=True)`, which wraps each layer's
  checkpoint in `torch.autograd.graph.save_on_cpu`; that name is swapped for a recorder, so whatever the real
  code path hands to it is "host" and whatever the outer hook sees is "device".

Shapes use 2 x 128 tokens so per-token tensors pass the 1 KiB threshold, as they do at real sizes.
"""

from __future__ import annotations

import os

import pytest

from planner.memory import estimate_memory
from planner.plan import Plan
from planner.spec import spec_from_config
from planner.target import Machine
from tests.planner.configs import random_config
from tests.planner.truth import build_model, model_storages, random_ids

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")

CPU = Machine(device="cpu")
BATCH, SEQ = 2, 128
MIN_OFFLOAD = 1024  # trl OffloadActivations(min_offload_size=1024), get_act_offloading_ctx_manager's default
TOLERANCE = 0.03
RANK = 16  # every LoRA matrix (and its autocast copy) passes the 1 KiB threshold, as at real sizes


class _Sorter:
    """Storages saved for backward, by where they would live: {data_ptr: tensor} for "device" and "host"."""

    def __init__(self, model):
        self.exclude = model_storages(model)
        self.device: dict[int, object] = {}
        self.host: dict[int, object] = {}

    def put(self, t, where: str) -> None:
        ptr = t.untyped_storage().data_ptr()
        if ptr in self.exclude or ptr in self.device or ptr in self.host:
            return  # a parameter, or a storage already placed (trl offloads a storage once)
        (self.host if where == "host" else self.device)[ptr] = t  # holding it keeps the storage from reuse

    def nbytes(self, where: str) -> int:
        return sum(t.untyped_storage().nbytes() for t in (self.host if where == "host" else self.device).values())


def _trl_policy_forward(model, ids, autocast: bool) -> _Sorter:
    sorter = _Sorter(model)
    in_head = []
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hooks = [base.lm_head.register_forward_pre_hook(lambda *a: in_head.append(True)),
             base.lm_head.register_forward_hook(lambda *a: in_head.pop(), always_call=True)]

    def pack(t):
        small = t.element_size() * t.nelement() < MIN_OFFLOAD
        sorter.put(t, "device" if small or in_head else "host")
        return t

    cast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), cast:
            logits = model(input_ids=ids).logits
    finally:
        for h in hooks:
            h.remove()
    del logits
    return sorter


def _transformers_offload_forward(model, ids, monkeypatch) -> _Sorter:
    import transformers.modeling_utils as modeling_utils

    sorter = _Sorter(model)

    class Recorder(torch.autograd.graph.saved_tensors_hooks):
        def __init__(self, **_):
            def pack(t):
                sorter.put(t, "host")
                return t

            super().__init__(pack, lambda t: t)

    monkeypatch.setattr(modeling_utils, "save_on_cpu", Recorder)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.activation_checkpointing_enable(offload=True)

    def pack(t):
        sorter.put(t, "device")
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(input_ids=ids).logits
    del logits
    return sorter


def _planned(config: dict, method: str, precision: str, **kw):
    plan = Plan(method=method, precision=precision, batch_size=BATCH, seq_len=SEQ, lora_rank=RANK,
                lora_target="all-linear", **kw)
    est = estimate_memory(spec_from_config(config, source="test"), plan, machine=CPU)
    forward = next(p for p in est.phases if p.name == "forward")
    return forward.parts["activations"], est.host_activations


def _check(ours: int, real: int, what: str) -> None:
    assert abs(ours - real) <= TOLERANCE * max(real, 1) + MIN_OFFLOAD, f"{what}: ours {ours} vs real {real}"


@pytest.mark.parametrize(("model_type", "method", "precision"), [
    ("llama", "full", "bf16"), ("llama", "lora", "bf16"), ("qwen2", "full", "fp32"), ("gemma", "lora", "fp32"),
    ("llama", "full", "bf16-mixed"), ("qwen2", "lora", "bf16-mixed"),
])
def test_saved_offload_keeps_only_the_head_on_the_device(model_type: str, method: str, precision: str) -> None:
    config = random_config(model_type, 0, layers=2)
    model = build_model(config, method=method, precision=precision, lora_rank=RANK, lora_target="all-linear")
    real = _trl_policy_forward(model, random_ids(BATCH, SEQ, config["vocab_size"]), precision.endswith("-mixed"))
    device, host = _planned(config, method, precision, activation_offload="saved")
    _check(device, real.nbytes("device"), "on the device")
    _check(host, real.nbytes("host"), "in host memory")
    assert real.nbytes("host") > 10 * real.nbytes("device"), "the truth offloaded almost nothing"


@pytest.mark.parametrize(("model_type", "method", "precision"), [
    ("llama", "full", "bf16"), ("llama", "lora", "bf16"), ("mistral", "full", "fp32"),
])
def test_checkpoint_offload_moves_the_layer_inputs(model_type: str, method: str, precision: str,
                                                   monkeypatch) -> None:
    config = random_config(model_type, 0, layers=3)
    model = build_model(config, method=method, precision=precision, lora_rank=RANK, lora_target="all-linear")
    real = _transformers_offload_forward(model, random_ids(BATCH, SEQ, config["vocab_size"]), monkeypatch)
    device, host = _planned(config, method, precision, gradient_checkpointing=True,
                            activation_offload="checkpoint")
    _check(device, real.nbytes("device"), "on the device")
    _check(host, real.nbytes("host"), "in host memory")
    hidden = BATCH * SEQ * config["hidden_size"] * (2 if precision == "bf16" else 4)
    assert real.nbytes("host") == 3 * hidden, "the truth should offload one hidden-states input per layer"


def test_checkpoint_offload_needs_checkpointing() -> None:
    from planner.errors import FtplanError

    with pytest.raises(FtplanError) as err:
        Plan.build(activation_offload="checkpoint")
    assert err.value.field == "activation_offload"
