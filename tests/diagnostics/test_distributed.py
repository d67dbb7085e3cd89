"""Two CPU processes under `accelerate launch` (gloo) see the gradients one process sees with twice the batch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1] / "data" / "plain_text.jsonl"
COMMON = ["diagnose", "--model", "tiny-llama", "--method", "full", "--precision", "fp32", "--data", str(DATA),
          "--steps", "3", "--grad-accum", "1", "--seq-len", "64", "--device", "cpu", "--in-process", "--json"]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path) -> None:
    if shutil.which("accelerate") is None:
        pytest.skip("accelerate's launcher is not on PATH")
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    subprocess.run([sys.executable, "-m", "tui", *COMMON, "--batch-size", "2", "--out", str(one)],
                   check=True, capture_output=True, timeout=300)
    # On a machine without GPUs `--multi_gpu` makes accelerate start torchrun; each process then
    # builds a CPU Accelerator, which uses gloo (DistributedType.MULTI_CPU).
    subprocess.run(["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                    "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "tui", *COMMON,
                    "--batch-size", "1", "--out", str(two)], check=True, capture_output=True, timeout=300)
    single, double = json.loads(one.read_text()), json.loads(two.read_text())
    assert double["environment"]["world_size"] == 2 and single["environment"]["world_size"] == 1
    for a, b in zip(single["records"], double["records"], strict=True):
        assert a["tokens"] == b["tokens"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["layer_norms"].keys() == b["layer_norms"].keys()
        for layer, value in a["layer_norms"].items():
            assert b["layer_norms"][layer] == pytest.approx(value, rel=1e-4), layer
