"""FtplanMonitor inside real Trainer runs: a tiny random Llama built from its config, token data built here, CPU.

The truths are the Trainer's own logs (logging_steps=1: the loss and pre-clip gradient norm of every step), a
second run without the callback (the callback must not change training), and constructions: a forward hook
that writes NaN into one module's output from a known step, one that makes the loss jump from a known step.
"""

from __future__ import annotations

import json
import math
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from diagnostics.callback import FtplanMonitor, StopPolicy, sustained_spike  # noqa: E402
from tests.diagnostics.chat_tokenizer import chat_tokenizer  # noqa: E402
from tui.cli import main  # noqa: E402

VOCAB, LENGTH = 64, 16
DOWN_PROJ = "model.layers.1.mlp.down_proj"


def tiny_llama():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(config)


def token_rows(count: int = 48) -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(2, VOCAB, (LENGTH,), generator=g).tolist() for _ in range(count)]


def plain_data() -> list[dict]:
    return [{"input_ids": ids, "attention_mask": [1] * LENGTH, "labels": ids} for ids in token_rows()]


def arguments(tmp_path, steps: int, **kw):
    defaults = {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 1, "learning_rate": 1e-3,
                "logging_steps": 1, "report_to": [], "save_strategy": "no", "use_cpu": True, "max_grad_norm": 1.0,
                "disable_tqdm": True, "seed": 0}
    return transformers.TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=steps, **{**defaults, **kw})


def train(tmp_path, steps: int, callbacks=(), model=None, **kw):
    model = model or tiny_llama()
    trainer = transformers.Trainer(model=model, args=arguments(tmp_path, steps, **kw), train_dataset=plain_data(),
                                   callbacks=list(callbacks))
    trainer.train()
    return trainer


def logged(trainer) -> list[dict]:
    return [h for h in trainer.state.log_history if "loss" in h]


def events(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_records_are_the_trainers_own_loss_and_pre_clip_norm(tmp_path, capsys) -> None:
    """Clipping at 0.5 acts on every step: the norms must still be the pre-clip ones the Trainer logs."""
    monitor = FtplanMonitor(tmp_path / "run.jsonl")
    trainer = train(tmp_path, 6, [monitor], gradient_accumulation_steps=2, max_grad_norm=0.5)
    truth = logged(trainer)
    records = monitor.report.records
    assert [r.step for r in records] == [1, 2, 3, 4, 5, 6] == [int(h["step"]) for h in truth]
    for record, log in zip(records, truth, strict=True):
        assert record.loss == pytest.approx(log["loss"], rel=1e-6)
        assert record.grad_norm == pytest.approx(log["grad_norm"], rel=1e-5)
        assert record.clipped == (log["grad_norm"] > 0.5)
        assert {"embeddings", "block.0", "block.1", "final_norm", "head"} <= set(record.layer_norms)
        assert record.tokens == 2 * 2 * LENGTH  # micro-batch 2 x accumulation 2 rows, no padding
    assert monitor.report.status == "completed" and not monitor.report.warnings
    assert trainer.args.max_grad_norm == 0.5  # the user's value is back
    kinds = [e["event"] for e in events(tmp_path / "run.jsonl")]
    assert kinds[0] == "run" and kinds.count("step") == 6 and kinds[-1] == "report"
    assert "ftplan report" in capsys.readouterr().out


def test_the_callback_does_not_change_training(tmp_path) -> None:
    """The callback takes the clip over: with clipping on every step, the weights must match a run without it."""
    watched = train(tmp_path / "a", 5, [FtplanMonitor(tmp_path / "run.jsonl", verbose=False)], max_grad_norm=0.3)
    plain = train(tmp_path / "b", 5, max_grad_norm=0.3)
    assert all(h["grad_norm"] > 0.3 for h in logged(plain))  # clipping really acted
    for (name, a), (_, b) in zip(watched.model.named_parameters(), plain.model.named_parameters(), strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7), name


@pytest.mark.parametrize("lora", [False, True])
def test_sft_trainer_healthy_run_reads_back_with_ftplan_report(tmp_path, capsys, lora: bool) -> None:
    trl = pytest.importorskip("trl")
    from datasets import Dataset

    extra = {}
    if lora:
        from peft import LoraConfig

        extra["peft_config"] = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                          task_type="CAUSAL_LM")
    tokenizer = chat_tokenizer(["<pad>", "<eos>"] + [f"w{i}" for i in range(VOCAB - 2)])
    args = trl.SFTConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, gradient_accumulation_steps=2,
                         max_steps=5, learning_rate=1e-3, logging_steps=1, report_to=[], save_strategy="no",
                         use_cpu=True, bf16=False, gradient_checkpointing=False, max_length=32, disable_tqdm=True)
    log = tmp_path / "sft.jsonl"
    monitor = FtplanMonitor(log, report_path=tmp_path / "sft.json")
    trainer = trl.SFTTrainer(model=tiny_llama(), args=args, processing_class=tokenizer, callbacks=[monitor],
                             train_dataset=Dataset.from_dict({"input_ids": token_rows()}), **extra)
    trainer.train()
    report = monitor.report
    # rows of equal length, all of them labels: TRL's token-weighted loss is the mean of the micro-batch means
    for record, truth in zip(report.records, logged(trainer), strict=True):
        assert record.loss == pytest.approx(truth["loss"], rel=1e-6)
        assert record.grad_norm == pytest.approx(truth["grad_norm"], rel=1e-5)
    assert report.settings.plan.method == ("lora" if lora else "full")
    if lora:
        assert {"block.0.lora_A", "block.0.lora_B"} <= set(report.records[-1].kind_norms)
    assert report.status == "completed" and report.warnings == []
    capsys.readouterr()
    assert main(["report", str(log)]) == 0
    out = capsys.readouterr().out
    assert "status: completed after 5 step(s)" in out and "findings: none" in out
    assert "gradient norm per layer" in out and "block.1" in out and "step" in out  # the heatmap and the plot
    assert main(["report", str(tmp_path / "sft.json"), "--no-plots"]) == 0  # the report JSON renders too


def _poison_from(module, call: int):
    """From the `call`-th forward of `module` on, its output's first feature is NaN."""
    calls = [0]

    def hook(_module, _args, output):
        calls[0] += 1
        if calls[0] >= call:
            output = output.clone()
            output[..., 0] = float("nan")
            return output
        return None

    return module.register_forward_hook(hook)


def test_injected_nan_stops_the_run_and_names_the_module(tmp_path, capsys) -> None:
    model = tiny_llama()
    _poison_from(model.model.layers[1].mlp.down_proj, call=3)  # one forward a step: step 3
    log = tmp_path / "run.jsonl"
    monitor = FtplanMonitor(log)
    trainer = train(tmp_path, 8, [monitor], model=model)
    assert trainer.state.global_step == 3  # stopped, not run to 8
    report = monitor.report
    assert report.status == "non_finite" and len(report.records) == 3
    finding = next(f for f in report.findings if f.code == "non_finite")
    assert finding.severity == "error"
    assert finding.data.items() >= {"step": 3, "phase": "forward", "module": DOWN_PROJ, "where": "output"}.items()
    # an AdamW step on NaN gradients makes every weight it touches NaN: the failed step was not applied
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert f"ftplan: stopped at step 3: non-finite loss, first in {DOWN_PROJ}" in capsys.readouterr().out
    assert main(["report", str(log), "--no-plots"]) == 1  # an error finding: exit 1, as diagnose
    out = capsys.readouterr().out
    assert "non_finite" in out and DOWN_PROJ in out


def _spike_from(model, call: int):
    """From the `call`-th forward on, token 0's logit is +50: every other target costs about 50 nats."""
    calls = [0]

    def hook(_module, _args, output):
        calls[0] += 1
        if calls[0] >= call:
            output = output.clone()
            output[..., 0] += 50.0
            return output
        return None

    return model.lm_head.register_forward_hook(hook)


def test_sustained_loss_spike_stops_the_run_as_the_policy_says(tmp_path) -> None:
    policy = StopPolicy(on_error=False, spike_factor=2.0, spike_patience=3, min_history=4)
    model = tiny_llama()
    _spike_from(model, call=7)  # steps 7, 8, 9 spike: stopped at step 9
    monitor = FtplanMonitor(tmp_path / "run.jsonl", policy=policy, verbose=False)
    trainer = train(tmp_path, 14, [monitor], model=model, learning_rate=1e-4)
    assert trainer.state.global_step == 9
    finding = next(f for f in monitor.report.findings if f.code == "sustained_loss_spike")
    assert finding.severity == "error" and finding.data["step"] == 9
    assert monitor.report.status == "interrupted" and "sustained loss spike" in monitor.report.message
    # the control: the same spike, with the spike rule off, runs to the end
    model = tiny_llama()
    _spike_from(model, call=7)
    watch_only = FtplanMonitor(tmp_path / "watch.jsonl", policy=StopPolicy(on_error=False, spike_patience=0),
                               verbose=False)
    assert train(tmp_path / "c", 14, [watch_only], model=model, learning_rate=1e-4).state.global_step == 14


def test_sustained_spike_needs_every_step_of_the_streak_above_the_bar() -> None:
    policy = StopPolicy(spike_factor=2.0, spike_patience=3, min_history=4)
    base = [4.0, 4.1, 3.9, 4.0, 4.05]
    assert sustained_spike([*base, 9.0, 9.0, 9.0], policy)["baseline"] == 4.0
    assert sustained_spike([*base, 9.0, 7.9, 9.0], policy) is None  # 7.9 is under 2 x 4.0
    assert sustained_spike([4.0, 4.0, 9.0, 9.0, 9.0], policy) is None  # too little history
    assert sustained_spike(base + [9.0] * 3, StopPolicy(spike_patience=0)) is None  # the rule off


def test_only_rank_zero_writes(tmp_path, monkeypatch) -> None:
    """Every rank monitors (the stop decision must agree); the others neither print nor write."""
    monitor = FtplanMonitor(tmp_path / "run.jsonl")
    trainer = transformers.Trainer(model=tiny_llama(), args=arguments(tmp_path, 2), train_dataset=plain_data(),
                                   callbacks=[monitor])
    monkeypatch.setattr(type(trainer.args), "process_index", property(lambda self: 1))
    trainer.train()
    assert not (tmp_path / "run.jsonl").exists() and monitor.report is None
    assert math.isfinite(trainer.state.log_history[0]["loss"])


def test_the_callback_imports_without_the_tui() -> None:
    """Training scripts import it on machines without a terminal UI: no textual, rich, plotext or tui."""
    import subprocess
    import sys

    probe = ("import sys\nimport diagnostics.callback\n"
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'textual', 'rich', 'plotext', 'tui'}))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_micro_batch_gradient_is_rescaled_to_its_mean(tmp_path) -> None:
    """With every row the same, one micro-batch's mean gradient is the step's: their squared norms agree, which
    holds only if the first micro-batch's share of the step (num_items_in_batch) is undone exactly."""
    monitor = FtplanMonitor(tmp_path / "run.jsonl", verbose=False)
    same = [{"input_ids": token_rows(1)[0], "attention_mask": [1] * LENGTH, "labels": token_rows(1)[0]}] * 16
    trainer = transformers.Trainer(model=tiny_llama(), train_dataset=same, callbacks=[monitor],
                                   args=arguments(tmp_path, 3, gradient_accumulation_steps=2, max_grad_norm=0.0))
    trainer.train()
    for record in monitor.report.records:
        assert record.micro_grad_sq == pytest.approx(record.grad_norm ** 2, rel=1e-5)
