"""The `ftplan estimate` / `ftplan models` contract: flags, JSON keys, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from planner.plan import Plan
from planner.service import plan_run as estimate
from planner.spec import load_spec
from tui.cli import ExitCode, main


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tui", *args], capture_output=True, text=True, timeout=60)


def test_json_has_the_contract_keys_and_equals_the_api(capsys) -> None:
    code = main(["estimate", "--model", "7b", "--method", "full", "--json"])
    assert code == ExitCode.OK
    data = json.loads(capsys.readouterr().out)
    memory = data["memory"]
    for key in ("weights", "gradients", "optimizer", "master_weights", "activations", "logits", "temporaries"):
        assert isinstance(memory["peak"][key], int) and isinstance(memory["largest"][key], int)
    # the parts at the peak add up: a script summing them gets the total, not more
    assert sum(memory["peak"].values()) == memory["peak_allocated"]
    assert memory["peak_allocated"] + memory["overhead"] == memory["total"]
    assert memory["overhead"] == memory["details"]["cuda_context"] + memory["details"]["fragmentation"]
    assert data["params"]["total"] == 6_738_415_616
    assert data["params"]["trainable"] == data["params"]["total"]
    assert data["fit"] is None and data["suggestions"] == [] and data["assumptions"]
    expected = estimate(load_spec("7b"), Plan(method="full"))
    assert data["memory"]["total"] == expected.memory.total


def test_fit_verdict_sets_the_exit_code(capsys) -> None:
    assert main(["estimate", "--model", "7b", "--method", "qlora", "--gpu", "RTX 4090", "--json"]) == ExitCode.OK
    fits = json.loads(capsys.readouterr().out)
    assert fits["fit"]["fits"] and fits["fit"]["gpu"] == "RTX-4090"
    assert main(["estimate", "--model", "7b", "--method", "full", "--gpu", "4090", "--json"]) == ExitCode.CHECK_FAILED
    too_big = json.loads(capsys.readouterr().out)
    assert not too_big["fit"]["fits"] and too_big["suggestions"]
    savings = [s["saved"] for s in too_big["suggestions"] if not s["title"].startswith("Combine")]
    assert savings == sorted(savings, reverse=True)
    for s in too_big["suggestions"]:
        assert s["new_total"] == too_big["memory"]["total"] - s["saved"]


def test_max_batch_is_the_largest_that_fits(capsys) -> None:
    main(["estimate", "--model", "7b", "--method", "lora", "--gpu-memory", "24GiB", "--max-batch", "--json"])
    best = json.loads(capsys.readouterr().out)["fit"]["max_batch"]
    assert best >= 1
    for batch, should_fit in ((best, True), (best + 1, False)):
        code = main(["estimate", "--model", "7b", "--method", "lora", "--gpu-memory", "24GiB",
                     "--batch-size", str(batch), "--json"])
        capsys.readouterr()
        assert (code == ExitCode.OK) is should_fit


def test_longest_sequence_stops_at_the_models_context(capsys) -> None:
    spec = load_spec("tiny-llama")
    main(["estimate", "--model", "tiny-llama", "--method", "lora", "--gpu", "H100", "--max-seq-len",
          "--max-batch", "--json"])
    fit = json.loads(capsys.readouterr().out)["fit"]
    assert fit["max_seq_len"] == spec.max_position_embeddings and fit["max_seq_len_capped"]
    assert not fit["max_batch_capped"]
    main(["estimate", "--model", "7b", "--method", "qlora", "--gpu-memory", "8GiB", "--max-seq-len", "--json"])
    fit = json.loads(capsys.readouterr().out)["fit"]
    assert 0 < fit["max_seq_len"] < 4096 and not fit["max_seq_len_capped"]


def test_a_sequence_past_the_context_is_warned_about(capsys) -> None:
    main(["estimate", "--model", "7b", "--seq-len", "8192", "--json"])
    warnings = json.loads(capsys.readouterr().out)["warnings"]
    assert any("--seq-len 8,192" in w["message"] and "4,096" in w["message"] and w["field"] == "seq_len"
               and w["change"]["changes"] == {"seq_len": 4096} for w in warnings)
    main(["estimate", "--model", "7b", "--seq-len", "4096", "--json"])
    assert not any(w["field"] == "seq_len" for w in json.loads(capsys.readouterr().out)["warnings"])


@pytest.mark.parametrize(("args", "needle"), [
    (["--model", "no-such-preset"], "no-such-preset"),
    (["--model", "7b", "--batch-size", "-2"], "--batch-size"),
    (["--model", "7b", "--optimizer-in-backward", "--grad-accum", "4"], "--optimizer-in-backward"),
    (["--model", "7b", "--gpu", "GTX 9999"], "--gpu GTX 9999"),
    (["--model", "7b", "--gpu-memory", "lots"], "--gpu-memory"),
    (["--model", "7b", "--method", "lora", "--lora-target", "nothing_here"], "--lora-target"),
    (["--model", "7b", "--offload-optimizer"], "--offload-optimizer"),
    (["--model", "7b", "--method", "sideways"], "--method"),
])
def test_bad_input_is_one_line_and_exit_2(args: list[str], needle: str) -> None:
    result = run("estimate", *args)
    assert result.returncode == ExitCode.BAD_INPUT, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in result.stderr


def test_broken_config_file_is_one_line(tmp_path) -> None:
    path = tmp_path / "config.json"
    path.write_text("{ not json")
    result = run("estimate", "--model", str(path))
    assert result.returncode == ExitCode.BAD_INPUT
    assert len(result.stderr.strip().splitlines()) == 1 and str(path) in result.stderr


def test_four_bit_full_fine_tune_is_rejected() -> None:
    """Quantized weights cannot be trained: a 4-bit *full* fine-tune is bad input, named as such."""
    result = run("estimate", "--model", "7b", "--method", "full", "--quant-bits", "4")
    assert result.returncode == ExitCode.BAD_INPUT
    assert "--quant-bits: 4-bit weights cannot be trained with --method full" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_lora_on_a_quantized_base_is_qlora(capsys) -> None:
    main(["estimate", "--model", "7b", "--method", "lora", "--quant-bits", "4", "--json"])
    assert json.loads(capsys.readouterr().out)["plan"]["method"] == "qlora"


def test_gpu_auto_without_a_probe_is_environment_missing() -> None:
    result = run("estimate", "--model", "7b", "--gpu", "auto")
    assert result.returncode == ExitCode.ENVIRONMENT and "--gpu auto" in result.stderr


def test_help_documents_exit_codes() -> None:
    result = run("estimate", "--help")
    assert result.returncode == 0 and "exit codes" in result.stdout and "does not fit" in result.stdout


def test_models_lists_presets_with_aliases(capsys) -> None:
    assert main(["models", "--json"]) == ExitCode.OK
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert "7b" in rows["llama-2-7b"]["aliases"] and rows["qwen2.5-7b-instruct"]["params"] == 7_615_616_512


def test_readable_table_output() -> None:
    result = run("estimate", "--model", "7b", "--method", "full", "--gpu", "H100")
    assert result.returncode == ExitCode.CHECK_FAILED
    assert "does NOT fit" in result.stdout and "what to change" in result.stdout and "GiB" in result.stdout
