"""Per-layer gradient norms under FSDP2 and DeepSpeed ZeRO-1/2/3, two CPU processes (gloo), each on one row of
the batch, equal one process's on the whole batch.

The truth is plain torch: the same tiny Llama (the worker's literal config and seed) on the whole batch,
`loss.backward()`, and the parameters' gradient norms grouped by their names' decoder-layer number; nothing from
`diagnostics` is imported for it. Each rank's loss is the mean over its row's 15 label tokens and the engines
average the ranks' gradients, so the gradient is the whole batch's mean-loss gradient.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("dist_grads_worker.py")


def _launch(mode: str, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(WORKER), mode, str(out)], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def _group(name: str) -> str:
    match = re.search(r"\.layers\.(\d+)\.", name)
    if match:
        return f"block.{match.group(1)}"
    return {"model.embed_tokens.weight": "embeddings", "model.norm.weight": "final_norm",
            "lm_head.weight": "head"}[name]


def _truth() -> tuple[dict[str, float], float, dict[str, float]]:
    """Layer norms and total of the whole batch's gradient, and the layer update ratios of one AdamW step."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(WORKER.parent))
    try:
        from dist_grads_worker import BATCH, CONFIG, LR  # literal constants, shared so both build one model
    finally:
        sys.path.pop(0)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**CONFIG))
    ids = torch.randint(0, CONFIG["vocab_size"], BATCH, generator=torch.Generator().manual_seed(1))
    model(input_ids=ids, labels=ids).loss.backward()
    sq: dict[str, float] = {}
    for name, p in model.named_parameters():
        sq[_group(name)] = sq.get(_group(name), 0.0) + p.grad.double().square().sum().item()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch.optim.AdamW(model.parameters(), lr=LR).step()
    d_sq: dict[str, float] = {}
    w_sq: dict[str, float] = {}
    for name, p in model.named_parameters():
        key = _group(name)
        d_sq[key] = d_sq.get(key, 0.0) + (before[name] - p.detach()).double().square().sum().item()
        w_sq[key] = w_sq.get(key, 0.0) + p.detach().double().square().sum().item()
    ratios = {k: math.sqrt(d_sq[k]) / math.sqrt(w_sq[k]) for k in d_sq}
    return {k: math.sqrt(v) for k, v in sq.items()}, math.sqrt(sum(sq.values())), ratios


def _assert_norms(measured: dict, layers: dict[str, float], total: float) -> None:
    assert measured["layer_norms"].keys() == layers.keys()
    for layer, value in layers.items():
        assert measured["layer_norms"][layer] == pytest.approx(value, rel=1e-4), layer
    assert measured["total"] == pytest.approx(total, rel=1e-4)


@pytest.mark.slow
def test_fsdp2_norms_and_update_ratios_match_one_process(tmp_path) -> None:
    measured = _launch("fsdp2", tmp_path / "fsdp2.json")["fsdp2"]
    layers, total, ratios = _truth()
    assert measured["access"] == "fsdp2"
    _assert_norms(measured, layers, total)
    for layer, value in ratios.items():
        assert measured["update_ratio"][layer] == pytest.approx(value, rel=1e-3), layer


@pytest.mark.slow
def test_deepspeed_zero_norms_match_one_process(tmp_path) -> None:
    pytest.importorskip("deepspeed")
    measured = _launch("zero", tmp_path / "zero.json")
    layers, total, _ = _truth()
    for stage in (1, 2, 3):
        result = measured[f"zero{stage}"]
        assert result["access"] == f"zero{stage}"
        # DeepSpeed clips to 1e-3 inside engine.step(), after the monitor read: the pre-clip norm, untouched
        _assert_norms(result, layers, total)
