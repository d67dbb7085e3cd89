"""The load phase: a QLoRA base that bitsandbytes quantizes while transformers loads it.

The truth is a real load on CPU: transformers' own loader (from_pretrained with a BitsAndBytesConfig) on a tiny
checkpoint, with its bitsandbytes conversion wrapped so that, as each weight is quantized, every live tensor
storage is counted (gc). What is alive then beyond the weights already loaded and what outlives the load
(bitsandbytes' cached code tables) is the loader's transient; what the model holds afterwards is the weights.
bitsandbytes' CUDA kernel also holds the fp32 absmax and its offset copy while it double-quantizes them, which the
CPU backend does otherwise: that part is taken from the real quant_state's absmax count."""

from __future__ import annotations

import gc

import pytest

from planner.memory import PHASES, estimate_memory
from planner.plan import Plan
from planner.service import plan_run
from planner.spec import load_spec, spec_from_config
from planner.target import Machine
from tests.planner.configs import random_config
from tests.planner.truth import hf_config

CPU = Machine(device="cpu")


def _storages(tensors) -> dict[int, int]:
    import torch

    return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors
            if isinstance(t, torch.Tensor) and t.device.type != "meta"}


def _live() -> dict[int, int]:
    import torch

    return _storages(o for o in gc.get_objects() if isinstance(o, torch.Tensor))


def _model_tensors(params):
    """Parameters and buffers with their bitsandbytes quantization constants."""
    import torch

    for t in params:
        yield t
        state = getattr(t, "quant_state", None)
        for obj in (state, getattr(state, "state2", None)):
            for value in vars(obj).values() if obj is not None else ():
                if isinstance(value, torch.Tensor):
                    yield value


def _load(folder, double_quant: bool, monkeypatch):
    """(weights after the load, the largest transient while quantizing, the largest weight's absmax count)."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    from transformers.integrations import bitsandbytes as hf_bnb

    before = set(_live())
    moments: list[dict[int, int]] = []
    original = hf_bnb.Bnb4bitQuantize.convert

    def convert(self, input_dict, *args, model=None, **kwargs):
        out = original(self, input_dict, *args, model=model, **kwargs)
        loaded = _storages(_model_tensors([*model.parameters(), *model.buffers(), *out.values()]))
        moments.append({p: n for p, n in _live().items() if p not in before and p not in loaded})
        return out

    monkeypatch.setattr(hf_bnb.Bnb4bitQuantize, "convert", convert)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_quant_type="nf4",
                               bnb_4bit_use_double_quant=double_quant, bnb_4bit_quant_storage=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=quant, dtype="auto",
                                                 device_map={"": "cpu"})
    after = set(_live())  # what outlives the load is not its transient
    transient = max(sum(n for p, n in m.items() if p not in after) for m in moments)
    weights = sum(_storages(_model_tensors([*model.parameters(), *model.buffers()])).values())
    largest = max((p for p in model.parameters() if hasattr(p, "quant_state")),
                  key=lambda p: p.quant_state.shape.numel())
    return weights, transient, largest.quant_state.absmax.numel()


@pytest.mark.parametrize("double_quant", [True, False])
def test_the_load_phase_holds_what_quantizing_on_load_holds(tmp_path, monkeypatch, double_quant: bool) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    config = random_config("llama", 0, layers=1)  # each conversion scans the heap: few conversions
    AutoModelForCausalLM.from_config(hf_config(config), dtype=torch.bfloat16).save_pretrained(tmp_path)
    weights, transient, absmax = _load(tmp_path, double_quant, monkeypatch)
    # bitsandbytes/functional.py quantize_4bit: the fp32 absmax and `_absmax - offset` live while double-quantizing
    cuda_absmax = 2 * 4 * absmax if double_quant else 0

    est = estimate_memory(spec_from_config(config, source="test"),
                          Plan(method="qlora", precision="bf16", double_quant=double_quant, lora_rank=4), machine=CPU)
    load = est.phases[0]
    assert load.name == "load" == PHASES[0]
    assert abs(load.parts["weights"] - weights) <= 0.001 * weights, (load.parts["weights"], weights)
    assert load.parts["temporaries"] == transient + cuda_absmax
    assert load.allocated == sum(load.parts.values())


def test_no_load_phase_without_quantizing_on_load() -> None:
    spec = load_spec("8b")
    for plan in (Plan(method="lora"), Plan(method="full"), Plan(method="freeze")):
        assert "load" not in [p.name for p in estimate_memory(spec, plan, machine=CPU).phases]


def test_an_8b_qlora_load_stays_below_training() -> None:
    """The loader holds one 16-bit weight beside the quantized model: Llama-3.1-8B's largest linear (14336 x 4096 in
    bf16, 112 MiB, and a sixteenth of that in fp32 absmax while double-quantizing), so the load phase sits under
    the training step's peak."""
    est = plan_run(load_spec("8b"), Plan(method="qlora", batch_size=1, seq_len=512), CPU).memory
    load = next(p for p in est.phases if p.name == "load")
    assert load.parts["temporaries"] >= 14336 * 4096 * 2
    assert load.parts["temporaries"] < 14336 * 4096 * 2 * 1.1
    assert est.peak_phase != "load" and load.allocated < est.peak_allocated
