"""`ftplan diagnose` with the PEFT family on tiny-llama (CPU, a few steps each): per-layer norms of exactly the
trainable parameters, as many of them as the planner counts (tests/planner/test_peft_methods_truth.py proves the
planner equals peft), no warning on a healthy run, gradient checkpointing with the prompt methods, and Houlsby
adapters where the paper puts them."""

from __future__ import annotations

import json
import re
import warnings
from importlib import resources

import pytest

from diagnostics.loop import run
from diagnostics.report import DiagnoseSettings
from planner.methods import layout
from planner.params import count_params
from planner.plan import Plan
from planner.spec import load_spec

BLOCKS = {f"block.{i}" for i in range(4)}  # tiny-llama has 4 decoder layers
SMALL = {"batch_size": 1, "grad_accum": 1, "seq_len": 96, "num_virtual_tokens": 4, "lr": 1e-3}

# method, its Plan fields, the layer groups its trainable tensors fall in, and the kinds inside each block
CASES = [
    ("prefix", {}, {"prompt_encoder"}, set()),
    ("prefix", {"prefix_projection": True, "encoder_hidden_size": 16}, {"prompt_encoder"}, set()),
    ("prompt", {}, {"prompt_encoder"}, set()),
    ("ptuning", {"encoder_hidden_size": 16}, {"prompt_encoder"}, set()),
    ("ptuning", {"encoder_hidden_size": 8, "encoder_type": "lstm"}, {"prompt_encoder"}, set()),
    ("ia3", {}, BLOCKS, {"ia3"}),
    ("oft", {"oft_block_size": 16, "lora_target": "q_proj,v_proj"}, BLOCKS, {"oft"}),
    ("adapter", {"adapter_reduction": 8}, BLOCKS, {"adapter"}),
    ("lora", {"use_dora": True, "lora_rank": 4, "lora_target": "q_proj,v_proj"}, BLOCKS,
     {"lora_A", "lora_B", "dora_magnitude"}),
]


def settings(method: str, steps: int = 3, **fields) -> DiagnoseSettings:
    kw = {**SMALL, **fields}
    lr = kw.pop("lr")
    return DiagnoseSettings(model="tiny-llama", steps=steps, lr=lr, plan=Plan(method=method, **kw))


def planned_trainable(plan: Plan) -> int:
    spec = load_spec("tiny-llama")
    return layout(spec, count_params(spec), plan).trainable_params


@pytest.mark.parametrize(("method", "fields", "layers", "kinds"), CASES,
                         ids=[f"{m}-{'-'.join(f'{k}={v}' for k, v in f.items())}" for m, f, _, _ in CASES])
def test_each_method_reports_its_trainable_parameters_by_layer(method, fields, layers, kinds) -> None:
    s = settings(method, **fields)
    report = run(s)
    assert report.status == "completed" and len(report.records) == 3, report.message
    assert report.environment["trainable_params"] == planned_trainable(s.plan)
    last = report.records[-1]
    # only the trainable parameters' groups: no embeddings, head or norms of the frozen base
    assert set(last.layer_norms) == layers
    assert {k.split(".", 2)[2] for k in last.kind_norms} == kinds
    assert {k.rsplit(".", 1)[0] for k in last.kind_norms} == (layers if kinds else set())
    # by the last step every trainable tensor has a gradient (DoRA's lora_A is zero only at the first step)
    assert all(v > 0 for v in last.layer_norms.values()) and last.zero_params == []
    assert report.warnings == [], [f"{f.code}: {f.evidence}" for f in report.warnings]


def _layer_mlps(model) -> list:
    return [m for name, m in model.named_modules() if re.search(r"\.layers\.\d+\.mlp$", name)]


@pytest.mark.parametrize("method", ["prompt", "ptuning", "adapter"])
def test_gradient_checkpointing_recomputes_every_layer_and_reaches_the_trained_tensors(method) -> None:
    """Checkpointing runs each checkpointed layer's forward a second time in backward (seen from its MLP: the
    layer's own hooks sit outside what transformers checkpoints): with prompt methods (no trainable tensor inside
    the layers) every layer must still be checkpointed, and the gradient must still reach the virtual tokens."""
    calls: dict[int, int] = {}

    def count_forwards(model) -> None:
        for i, mlp in enumerate(_layer_mlps(model)):
            mlp.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls.get(i, 0) + 1))

    report = run(settings(method, steps=1, gradient_checkpointing=True), prepare_model=count_forwards)
    assert report.status == "completed", report.message
    assert calls == dict.fromkeys(range(4), 2)  # one forward, one recompute, per layer
    assert all(v > 0 for v in report.records[0].layer_norms.values())
    assert report.records[0].zero_params == []


def test_prefix_with_gradient_checkpointing_is_refused_in_one_line(capsys) -> None:
    """peft raises "does not work with gradient checkpointing" for prefix tuning; the CLI says which flag."""
    from tui.cli import main

    code = main(["diagnose", "--model", "tiny-llama", "--method", "prefix", "--gradient-checkpointing",
                 "--steps", "1", "--in-process"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "--gradient-checkpointing" in err and "Traceback" not in err


def test_houlsby_adapters_follow_attention_and_mlp_as_in_the_paper() -> None:
    """Truth: a plain transformers tiny-llama with the base weights copied over and hand-written Houlsby
    adapters (Houlsby et al. 2019, fig. 2: a bottleneck added to each sublayer's output, before the residual sum)
    after self-attention and after the MLP, reading the same adapter weights, gives the same logits."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from diagnostics.models import build_model

    config = json.loads((resources.files("profiles") / "models" / "tiny-llama.json").read_text())
    ours = build_model(config, Plan(method="adapter", precision="fp32", adapter_reduction=8, attention="eager"),
                       seed=1)
    with torch.no_grad():  # non-zero up projections, so that every adapter changes the output
        for name, p in ours.named_parameters():
            if ".up." in name:
                p.normal_(std=0.05)
    trained = {n for n, p in ours.named_parameters() if p.requires_grad}
    assert trained and all("houlsby_adapter" in n for n in trained)
    state = ours.state_dict()

    fields = dict(config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        truth = AutoModelForCausalLM.from_config(AutoConfig.for_model(fields.pop("model_type"), **fields),
                                                 attn_implementation="eager")
    truth.load_state_dict({k: v for k, v in state.items() if "houlsby_adapter" not in k})

    def adapter(prefix: str):
        down_w, down_b = state[f"{prefix}.houlsby_adapter.down.weight"], state[f"{prefix}.houlsby_adapter.down.bias"]
        up_w, up_b = state[f"{prefix}.houlsby_adapter.up.weight"], state[f"{prefix}.houlsby_adapter.up.bias"]

        def hook(module, args, output):
            h = output[0] if isinstance(output, tuple) else output
            h = h + torch.nn.functional.silu(h @ down_w.T + down_b) @ up_w.T + up_b
            return (h, *output[1:]) if isinstance(output, tuple) else h
        return hook

    for i, layer in enumerate(truth.model.layers):
        layer.self_attn.register_forward_hook(adapter(f"model.layers.{i}.self_attn"))
        layer.mlp.register_forward_hook(adapter(f"model.layers.{i}.mlp"))
    ids = torch.randint(3, 500, (2, 12))
    with torch.no_grad():
        expected = truth(input_ids=ids).logits
        got = ours(input_ids=ids).logits
        without = AutoModelForCausalLM.from_config(truth.config, attn_implementation="eager")
        without.load_state_dict(truth.state_dict())
        base = without(input_ids=ids).logits
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, base, atol=1e-4)  # the adapters do change the output


def test_dpo_with_prompt_tuning_scores_the_real_tokens() -> None:
    """The policy's logits carry the virtual tokens' positions, its reference (the adapter off) does not: both
    score the same completion tokens."""
    report = run(settings("prompt", steps=2, stage="dpo"))
    assert report.status == "completed", report.message
    assert all(r.preference is not None and r.loss > 0 for r in report.records)


def test_a_deep_copy_of_an_adapted_model_runs_its_own_adapters() -> None:
    """The DPO reference for Houlsby adapters is a frozen deep copy: training the policy must not move it."""
    import copy

    import torch

    from diagnostics.models import build_model

    config = json.loads((resources.files("profiles") / "models" / "tiny-llama.json").read_text())
    policy = build_model(config, Plan(method="adapter", precision="fp32"))
    reference = copy.deepcopy(policy)
    ids = torch.randint(3, 500, (1, 8))
    with torch.no_grad():
        before = reference(input_ids=ids).logits
        for p in policy.parameters():
            if p.requires_grad:
                p.add_(1.0)
        assert not torch.allclose(policy(input_ids=ids).logits, before)
        torch.testing.assert_close(reference(input_ids=ids).logits, before)
