"""Real diagnostics runs on tiny CPU models: each finding where it is real, none where it is not."""

from __future__ import annotations

import math

import pytest

from diagnostics.loop import run
from diagnostics.report import DiagnoseSettings, DiagnosticReport
from planner.plan import Plan

BLOCKS = {f"block.{i}" for i in range(4)}  # tiny-llama has 4 decoder blocks


def settings(method: str = "lora", steps: int = 12, **kw) -> DiagnoseSettings:
    plan_kw = {"batch_size": 2, "grad_accum": 2, "seq_len": 96, "lora_rank": 4}
    plan_kw.update({k: kw.pop(k) for k in list(kw) if k in Plan.model_fields})
    plan = Plan(method=method, **plan_kw)
    return DiagnoseSettings(model="tiny-llama", steps=steps, plan=plan, **kw)


def codes(report: DiagnosticReport) -> set[str]:
    return {f.code for f in report.findings}


def warnings_of(report: DiagnosticReport) -> list[str]:
    return [f"{f.code}: {f.evidence}" for f in report.warnings]


@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_runs_complete_with_a_norm_for_every_block(method: str) -> None:
    report = run(settings(method, steps=4))
    assert report.status == "completed" and len(report.records) == 4
    for record in report.records:
        assert set(record.layer_norms) >= BLOCKS
        assert record.tokens > 0
    # update ratios: every step for adapters, every 4th for full fine-tuning (a weight copy each time)
    sampled = [r.step for r in report.records if r.update_ratio is not None]
    assert sampled == ([1, 2, 3, 4] if method != "full" else [1])
    assert set(report.records[0].update_ratio) >= BLOCKS
    if method == "full":
        assert {"embeddings", "final_norm", "head"} <= set(report.records[0].layer_norms)
    else:
        assert {f"block.{i}.lora_A" for i in range(4)} <= set(report.records[0].kind_norms)
    assert report.environment["random_init"] is True
    assert report.environment["tokenizer"] == "fallback byte tokenizer"


def test_healthy_lora_run_raises_no_warning_and_step_zero_is_not_vanishing() -> None:
    report = run(settings("lora", steps=30))
    first = report.records[0]
    # lora_B starts at zero, so every lora_A gradient is exactly zero at the first step ...
    assert all(v == 0 for k, v in first.kind_norms.items() if k.endswith("lora_A"))
    # ... which is not a finding
    assert warnings_of(report) == []
    assert not codes(report) & {"vanishing_gradients", "dead_parameters"}
    assert report.settings.device == "cpu"  # where it ran, not the "auto" it was asked for


def test_records_left_out_by_the_cutoff_are_reported() -> None:
    """Truth from the tokenizer: the sample records whose first answer token lies past seq_len=96."""
    from diagnostics.data import IGNORE, ByteTokenizer, load_records, sample_path, to_turns

    tok = ByteTokenizer(512)
    records = load_records(sample_path("alpaca"))
    starts = [tok.conversation(to_turns(r, "r"))[1] for r in records]
    starts = [next(i for i, label in enumerate(labels) if label != IGNORE) for labels in starts]
    cut = [n for n, start in enumerate(starts, 1) if start >= 96]
    assert cut  # the sample has prompts longer than 96 tokens
    report = run(settings("lora", steps=1))
    assert report.data.records == len(records) and report.data.dropped == cut
    assert report.data.needed_len == max(starts[n - 1] for n in cut) + 1
    finding = next(f for f in report.findings if f.code == "dropped_records")
    assert finding.severity == "info" and f"{len(cut)} of {len(records)} records" in finding.evidence


def test_very_high_learning_rate_is_exploding_with_a_clip_suggestion() -> None:
    report = run(settings("full", steps=20, lr=1.0, max_grad_norm=None, precision="fp32", grad_accum=1))
    assert "exploding_gradients" in codes(report)
    clip = next(a.changes["max_grad_norm"] for a in report.advice if "max_grad_norm" in a.changes)
    healthy = sorted(r.grad_norm for r in report.records)
    assert healthy[0] <= clip <= healthy[-1]
    assert any(a.changes.get("learning_rate", 1.0) < 1.0 for a in report.advice)


def test_injected_vanishing_blocks_are_named() -> None:
    """Gradients of blocks 1 and 2 scaled down by 1e-6 through hooks: a real vanishing signal."""

    def shrink(model):
        for name, p in model.named_parameters():
            if p.requires_grad and (".layers.1." in name or ".layers.2." in name):
                p.register_hook(lambda g: g * 1e-6)

    report = run(settings("full", steps=6, precision="fp32"), prepare_model=shrink)
    finding = next(f for f in report.findings if f.code == "vanishing_gradients")
    assert set(finding.data["low_blocks"]) == {"block.1", "block.2"}


def test_fp16_without_loss_scaling_flushes_small_gradients_to_zero() -> None:
    report = run(settings("full", steps=4, precision="fp16-mixed", loss_scaling=False, init_std=1e-3,
                          lr=1e-4, grad_accum=1))
    finding = next(f for f in report.findings if f.code == "fp16_underflow")
    assert max(finding.data["zero_share"].values()) > 0.05
    assert any(a.changes == {"precision": "bf16-mixed"} and a.current == {"precision": "fp16-mixed"}
               for a in report.advice)


def test_fp16_with_loss_scaling_keeps_them() -> None:
    report = run(settings("full", steps=4, precision="fp16-mixed", loss_scaling=True, init_std=1e-3,
                          lr=1e-4, grad_accum=1))
    assert "fp16_underflow" not in codes(report)
    assert all(max(r.zero_fraction[f"block.{i}"] for i in range(4)) < 0.01 for r in report.records)
    assert all(r.loss_scale for r in report.records)


def test_small_init_pre_ln_model_is_not_vanishing(tmp_path) -> None:
    """24 pre-LN blocks at init std 1e-4: gradients uniformly small, but no block lags the others."""
    import json

    config = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 24,
              "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 300, "initializer_range": 1e-4}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    s = DiagnoseSettings(model=str(path), steps=8, lr=1e-3,
                         plan=Plan(method="full", precision="fp32", batch_size=2, grad_accum=1, seq_len=64))
    report = run(s)
    medians = [report.records[-1].layer_norms[f"block.{i}"] for i in (0, 23)]
    assert 0.1 < medians[0] / medians[1] < 10
    assert "vanishing_gradients" not in codes(report)


def test_injected_nan_names_its_parameter() -> None:
    target = "model.layers.2.mlp.down_proj.weight"

    def poison(model):
        for name, p in model.named_parameters():
            if name == target:
                p.register_hook(lambda g: g * float("nan"))

    report = run(settings("full", steps=5, precision="fp32"), prepare_model=poison)
    assert report.status == "non_finite" and len(report.records) == 1
    finding = next(f for f in report.findings if f.code == "non_finite")
    assert finding.data["parameter"] == target and finding.data["step"] == 1


def test_interrupt_keeps_a_valid_partial_report(tmp_path) -> None:
    def ctrl_c(record):
        if record.step == 3:
            raise KeyboardInterrupt

    report = run(settings("lora", steps=20), on_step=ctrl_c)
    assert report.status == "interrupted" and len(report.records) == 3
    again = DiagnosticReport.model_validate_json(report.model_dump_json())
    assert again.records[-1].step == 3


def test_pure_bf16_with_a_tiny_learning_rate_rounds_updates_away() -> None:
    report = run(settings("full", steps=6, precision="bf16", lr=1e-6, grad_accum=1, max_grad_norm=None))
    assert "bf16_updates_round_away" in codes(report)
    assert any(a.changes == {"precision": "bf16-mixed"} and a.current == {"precision": "bf16"}
               for a in report.advice)


def test_checkpointing_with_frozen_inputs_blocks_lora_gradients() -> None:
    """Reentrant checkpointing over frozen inputs leaves the adapters inside the blocks without gradients.

    transformers 5 now enables input gradients itself, so the failure (still common with older versions and
    hand-written loops) is reproduced at the gradient: every adapter gradient in the blocks is zero.
    """

    def misconfigure(model):
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.register_hook(lambda g: g * 0)

    report = run(settings("lora", steps=4, gradient_checkpointing=True), prepare_model=misconfigure)
    finding = next(f for f in report.findings if f.code == "dead_parameters")
    assert "enable_input_require_grads" in finding.fix and finding.data["count"] > 0


def test_run_that_does_not_fit_stops_before_loading(monkeypatch) -> None:
    import diagnostics.loop as loop

    monkeypatch.setattr(loop, "available_memory", lambda device: 1 << 20)
    report = run(settings("full", steps=3))
    assert report.status == "does_not_fit" and report.records == []
    assert report.findings[0].code == "does_not_fit" and "--" in report.findings[0].fix


@pytest.mark.parametrize("optimizer", ["adamw-8bit", "adamw-fused", "adafactor", "sgd-momentum"])
def test_every_planner_optimizer_trains(optimizer: str) -> None:
    report = run(settings("full", steps=3, optimizer=optimizer, grad_accum=1))
    assert report.status == "completed"
    assert all(math.isfinite(r.loss) for r in report.records)


def test_a_model_directory_with_weights_loads_them(tmp_path) -> None:
    """Two folders, same config, different saved weights, same seed: a re-initialised model would give the
    same first loss in both; loaded weights do not."""
    import torch
    from transformers import AutoModelForCausalLM

    from diagnostics.models import hf_config
    from planner.spec import resolve_model

    config = dict(resolve_model("tiny-llama").config)
    losses = []
    for weights_seed in (123, 456):
        folder = tmp_path / str(weights_seed)
        torch.manual_seed(weights_seed)
        AutoModelForCausalLM.from_config(hf_config(config)).save_pretrained(folder)
        report = run(DiagnoseSettings(model=str(folder), steps=1, seed=1, plan=Plan(method="lora", seq_len=64)))
        assert report.environment["random_init"] is False
        losses.append(report.records[0].loss)
    assert losses[0] != pytest.approx(losses[1], rel=1e-4)


def test_sequences_longer_than_learned_positions_are_refused_before_loading(tmp_path) -> None:
    """GPT-2's position table (transformers' GPT2Model.wpe) has n_positions rows: position 64 of a 96-token
    sequence would index past it."""
    import json

    from planner.errors import FtplanError

    config = {"model_type": "gpt2", "n_embd": 32, "n_head": 2, "n_layer": 2, "n_positions": 64, "vocab_size": 300}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(FtplanError) as raised:
        run(DiagnoseSettings(model=str(tmp_path), steps=1, plan=Plan(method="lora", seq_len=96)))
    assert raised.value.field == "seq_len" and "64" in raised.value.reason


# healthy runs of every family, LoRA and full: tests/diagnostics/test_healthy_families.py
