"""benchmarks/configs_corpus.py on a small folder of its own configs: every outcome counted, keys classified."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "configs_corpus.py"


def load():
    spec = importlib.util.spec_from_file_location("configs_corpus", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_corpus_runner_counts_each_outcome(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache: hub ids are unavailable
    folder = tmp_path / "examples"
    (folder / "train").mkdir(parents=True)
    (folder / "train" / "ok.yaml").write_text(
        "model_name_or_path: qwen2.5-0.5b-instruct\nstage: sft\ndo_train: true\nfinetuning_type: oft\n"
        "dataset: identity\ncutoff_len: 256\nper_device_train_batch_size: 1\nlogging_steps: 5\nmystery_key: 1\n"
        "mixture_of_depths: convert\n")
    (folder / "train" / "hub.yaml").write_text(
        "model_name_or_path: someone/not-cached-anywhere\nstage: sft\ndo_train: true\ndataset: identity\n")
    (folder / "train" / "zero3.yaml").write_text(
        "model_name_or_path: qwen2.5-0.5b-instruct\nstage: sft\ndo_train: true\nfinetuning_type: full\n"
        "dataset: identity\ncutoff_len: 256\nper_device_train_batch_size: 1\nbf16: true\nwarmup_ratio: 0.1\n"
        "deepspeed: ds_z3.json\n")
    (folder / "train" / "ds_z3.json").write_text('{"zero_optimization": {"stage": 3}}')
    (folder / "accelerate.yaml").write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: FSDP\n")
    corpus = load()
    outcomes = {Path(o.path).name: o for o in corpus.run_corpus(folder, "H100", None)}
    assert outcomes["ok.yaml"].kind == "planned" and outcomes["ok.yaml"].verdict == "ready_with_warnings"
    assert outcomes["ok.yaml"].treatment == {
        "model_name_or_path": "modelled", "stage": "modelled", "do_train": "modelled", "finetuning_type": "modelled",
        "dataset": "modelled", "cutoff_len": "modelled", "per_device_train_batch_size": "modelled",
        "logging_steps": "irrelevant", "mystery_key": "unknown", "mixture_of_depths": "warned"}
    assert outcomes["hub.yaml"].kind == "model_unavailable"
    assert outcomes["accelerate.yaml"].kind == "exit2" and "not a training config" in outcomes["accelerate.yaml"].message
    (folder / "moe.yaml").write_text(
        "base_model: someone/moe-not-cached\nadapter: lora\nlora_r: 8\nlora_target_parameters:\n"
        "  - mlp.experts.gate_up_proj\nmicro_batch_size: 1\nsequence_len: 512\nbf16: true\n")
    stood_in = {Path(o.path).name: o for o in corpus.run_corpus(folder, "H100", None, stand_in="tiny-llama")}
    assert stood_in["hub.yaml"].kind == "planned" and stood_in["hub.yaml"].stand_in == "tiny-llama"
    # expert targets mean nothing on a dense stand-in: a MoE preset stands in
    assert stood_in["moe.yaml"].kind == "planned" and stood_in["moe.yaml"].stand_in == corpus.MOE_STAND_IN
    (folder / "moe.yaml").unlink()
    # planned on the 1 GPU --gpu names, ZeRO-3 is warned; planned again over a node as its launcher runs it
    zero3 = outcomes["zero3.yaml"]
    assert "sharding_on_one_gpu" in zero3.warnings and zero3.sharded is not None
    assert "sharding_on_one_gpu" not in zero3.sharded[1]
    text = corpus.report({"mine": list(outcomes.values())}, "H100")
    assert "planned again with `--gpus`" in text
    assert "5 files: 2 planned, 1 model config unavailable, 2 exit 2" in text and "## Tracebacks\n\nNone." in text
