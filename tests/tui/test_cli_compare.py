"""`ftplan compare`: one row per method, each the service's plan for that method (computed here directly), the reason
where the model cannot take a method, the seed's contrasts in the rows' numbers, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from planner.plan import Plan
from planner.service import plan_run
from planner.spec import load_spec
from planner.target import resolve_target
from tui.cli import ExitCode, main

LABELS = ["full", "freeze", "lora", "lora+DoRA", "qlora", "prefix", "prompt", "ptuning", "ia3", "adapter", "oft"]
PRESETS = Path(__file__).resolve().parents[2] / "profiles" / "models"


def run_json(capsys, *args: str) -> dict:
    assert main(["compare", *args, "--json"]) == ExitCode.OK
    return json.loads(capsys.readouterr().out)


def test_each_row_is_plan_run_for_its_method(capsys) -> None:
    out = run_json(capsys, "--model", "7b", "--gpu", "4090", "--seq-len", "512", "--samples", "10000")
    assert [r["label"] for r in out["rows"]] == LABELS
    spec, target = load_spec("7b"), resolve_target("4090")
    for row in out["rows"]:
        method, _, dora = row["label"].partition("+")
        est = plan_run(spec, Plan(method=method, use_dora=bool(dora), seq_len=512), target, samples=10000)
        assert row["reason"] is None
        assert row["trainable"] == est.params.trainable and row["peak_bytes"] == est.memory.total
        assert row["fits"] == est.fit.fits and row["headroom"] == est.fit.headroom
        assert row["tokens_per_second"] == pytest.approx(est.time.tokens_per_second)
        assert row["epoch_seconds"] == pytest.approx(est.time.total_seconds)
    rows = {r["label"]: r for r in out["rows"]}
    assert rows["full"]["fits"] is False and rows["qlora"]["fits"] is True  # 6.7B full training on 24 GB: no


def test_method_specific_flags_stay_with_their_method(capsys) -> None:
    out = run_json(capsys, "--model", "1b", "--method", "qlora", "--quant-bits", "8", "--gpu-memory", "16GiB")
    rows = {r["label"]: r for r in out["rows"]}
    spec, target = load_spec("1b"), resolve_target(None, "16GiB")
    assert rows["qlora"]["peak_bytes"] == plan_run(spec, Plan(method="qlora", quant_bits=8), target).memory.total
    assert rows["lora"]["peak_bytes"] == plan_run(spec, Plan(method="lora"), target).memory.total
    assert out["gpu"] is not None and rows["lora"]["tokens_per_second"] is None  # a size, not a GPU: no FLOP/s


def test_methods_the_model_cannot_take_give_the_reason(capsys) -> None:
    rows = {r["label"]: r for r in run_json(capsys, "--model", "gpt2")["rows"]}
    assert "Conv1D" in rows["oft"]["reason"] and rows["oft"]["reason"].startswith("--method:")
    assert rows["oft"]["trainable"] is None and rows["oft"]["peak_bytes"] is None
    assert rows["prompt"]["reason"] is None and rows["prompt"]["trainable"] == 20 * 768  # 20 embeddings of 768
    phi = {r["label"]: r for r in run_json(capsys, "--model", "phi-3-mini-4k-instruct")["rows"]}
    assert phi["ia3"]["reason"].startswith("--ia3-target:") and "no default IA3 target" in phi["ia3"]["reason"]
    assert main(["compare", "--model", "gpt2"]) == ExitCode.OK
    printed = capsys.readouterr().out
    assert "oft not planned: --method: peft's OFT supports only" in " ".join(printed.split())


def test_the_table_ends_with_the_seeds_contrasts_in_its_numbers(capsys) -> None:
    assert main(["compare", "--model", "7b", "--gpu", "A100-80GB"]) == ExitCode.OK
    text = " ".join(capsys.readouterr().out.split())
    config = json.loads((PRESETS / "llama-2-7b.json").read_text())
    context, layers = config["max_position_embeddings"], config["num_hidden_layers"]
    assert "LoRA vs Adapter:" in text and f"{2 * layers} extra bottleneck layers" in text
    assert "LoRA vs soft prompts:" in text and f"{context - 20:,} of the model's {context:,} context tokens" in text
    assert "1,044 tokens instead of 1,024" in text  # 20 virtual tokens (peft's default count in ftplan) + 1024
    assert text.index("LoRA vs Adapter") > text.index("oft")  # after the table


@pytest.mark.parametrize("args", [
    ["--samples", "0"], ["--mfu", "2"], ["--gpu", "no-such-gpu"], ["--quant-bits", "8"], ["--seq-len", "0"],
    ["--gpu-memory", "lots"],
])
def test_bad_flags_exit_2_in_one_line(capsys, args) -> None:
    try:
        code = main(["compare", "--model", "7b", *args])
    except SystemExit as exc:  # argparse's own checks
        code = exc.code
    err = capsys.readouterr().err
    assert code == ExitCode.BAD_INPUT and err.count("\n") == 1 and err.startswith("ftplan")
    assert args[0] in err and "Traceback" not in err
