"""A healthy short run of every family the planner models exactly raises no warning, with LoRA and with full
fine-tuning: the rules are meant to be conservative (diagnostics.rules), and each family is a chance for a
false alarm (tied embeddings, softcapping, MoE routers, MLA, parallel blocks, multipliers).

Healthy means what a user who follows LLaMA-Factory's own examples would run (examples/train_lora/
qwen3_lora_sft.yaml, examples/train_full/qwen3_full_sft.yaml: learning rate 1e-4 for LoRA, 1e-5 for full,
cosine schedule, warmup over a tenth of the run, gradient clipping at 1.0 as the HF Trainer defaults), on the
sample data ftplan ships, with the model initialised the way transformers initialises that family
(`from_config`: each family's own `_init_weights` at its config's `initializer_range`). The configs are the
planner tests' small ones (tests.planner.configs), 4 blocks, well under a million parameters.

Speed: a run is a few seconds of CPU. Two settings keep it there on a shared CI runner: one intra-op thread
(a model this small gains nothing from two, and two threads contending with other processes for two cores
spin-wait: a 192x192 matmul ran 10x slower), and fp32 (CPUs without bf16 matrix units emulate bf16, about
4.5x slower per matmul here). The default bf16-mixed keeps its own healthy-run test (test_loop.py, Llama
with LoRA).
"""

from __future__ import annotations

import json

import pytest

from tests.planner.configs import EXACT_TYPES, random_config

# learning rates of LLaMA-Factory's SFT examples (see the module docstring)
LEARNING_RATES = {"lora": 1e-4, "full": 1e-5}
SEQ_LEN = 96  # keeps an answer token of all but 3 of the 48 sample records (test_loop.py counts them)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def family_config(model_type: str) -> dict:
    config = random_config(model_type, 0, layers=4)
    # the fallback byte tokenizer (a config has no tokenizer) needs 259 ids: UTF-8 bytes + 3 special ones
    config["vocab_size"] = max(config["vocab_size"], 259)
    if model_type == "gpt2":  # learned absolute positions: one row per position, so a sequence needs as many
        config["n_positions"] = max(config["n_positions"], SEQ_LEN)
    return config


@pytest.mark.parametrize("method", ["lora", "full"])
@pytest.mark.parametrize("model_type", EXACT_TYPES)
def test_healthy_run_raises_no_warning(tmp_path, model_type: str, method: str) -> None:
    from diagnostics.loop import run
    from diagnostics.report import DiagnoseSettings
    from planner.plan import Plan

    (tmp_path / "config.json").write_text(json.dumps(family_config(model_type)))
    # the default attention (sdpa) for every family: Gemma 2, which has none, falls back to eager as in transformers
    plan = Plan(method=method, precision="fp32", batch_size=2, grad_accum=2, seq_len=SEQ_LEN,
                lora_rank=4, lora_target="all-linear")
    settings = DiagnoseSettings(model=str(tmp_path), steps=20, lr=LEARNING_RATES[method], warmup_ratio=0.1,
                                lr_scheduler="cosine", max_grad_norm=1.0, device="cpu", plan=plan)
    report = run(settings)
    shown = "\n".join(f"{f.severity} {f.code}: {f.evidence}" for f in report.findings)
    assert report.status == "completed", f"{report.status}: {report.message}"
    assert len(report.records) == 20
    assert report.warnings == [], f"{model_type} {method}:\n{shown}"
