"""`ftplan diagnose` from the command line: isolation, reports, exit codes, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from diagnostics.report import DiagnoseSettings, DiagnosticReport
from diagnostics.runner import run_isolated
from planner.plan import Plan
from tui.cli import ExitCode


def ftplan(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tui", *args], capture_output=True, text=True, timeout=timeout)


def test_tiny_llama_out_of_the_box_in_a_child_process(tmp_path) -> None:
    """The default run needs nothing but the install: the preset, the sample data, the byte tokenizer."""
    out = tmp_path / "reports" / "report.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "tui", "diagnose", "--model", "tiny-llama", "--steps", "5",
                             "--method", "lora", "--out", str(out)], capture_output=True, text=True, timeout=300,
                            env=env)
    assert result.returncode == ExitCode.OK, result.stderr
    assert "loss" in result.stdout and "block.3" in result.stdout  # the plot and the heatmap
    report = DiagnosticReport.model_validate_json(out.read_text())
    assert report.status == "completed" and len(report.records) == 5
    assert not list(out.parent.glob(".*.tmp"))  # written atomically


def test_json_output_is_the_report() -> None:
    result = ftplan("diagnose", "--model", "tiny-llama", "--steps", "3", "--method", "lora", "--json", "--in-process")
    data = json.loads(result.stdout)
    assert data["status"] == "completed" and data["settings"]["plan"]["method"] == "lora"


def test_an_error_finding_exits_1() -> None:
    result = ftplan("diagnose", "--model", "tiny-llama", "--steps", "12", "--method", "full", "--lr", "3",
                    "--max-grad-norm", "0", "--precision", "fp32", "--grad-accum", "1", "--json")
    assert result.returncode == ExitCode.CHECK_FAILED
    data = json.loads(result.stdout)
    assert any(f["severity"] == "error" for f in data["findings"])
    assert all(f["code"] and f["message"] for f in data["findings"])
    assert data["advice"] and all(a["title"] and a["changes"] for a in data["advice"])


@pytest.mark.parametrize(("args", "needle"), [
    (["--model", "no-such-model"], "no-such-model"),
    (["--model", "tiny-llama", "--steps", "0"], "--steps"),
    (["--model", "tiny-llama", "--data", "/nonexistent/data.json"], "--data"),
    (["--model", "tiny-llama", "--lr", "-1"], "--lr"),
])
def test_bad_input_is_one_line_exit_2(args, needle) -> None:
    result = ftplan("diagnose", *args, timeout=60)
    assert result.returncode == ExitCode.BAD_INPUT, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in result.stderr


def test_a_dead_child_still_yields_a_report(tmp_path) -> None:
    """Stand-in for a worker killed mid-run (the OOM killer): two steps stream out, then SIGKILL."""
    import signal

    settings = DiagnoseSettings(model="tiny-llama", steps=10, plan=Plan(method="lora"))
    step = {"step": 1, "loss": 6.2, "lr": 1e-4, "grad_norm": 1.0, "clipped": False,
            "layer_norms": {"block.0": 0.5}, "kind_norms": {}}
    fake = tmp_path / "fake_python"
    lines = [json.dumps({"event": "step", "record": {**step, "step": i}}) for i in (1, 2)]
    fake.write_text("#!/bin/sh\ncat > /dev/null\n" + "".join(f"echo '{line}'\n" for line in lines)
                    + f"kill -{int(signal.SIGKILL)} $$\n")
    fake.chmod(0o755)
    seen = []
    report = run_isolated(settings, on_step=seen.append, python=str(fake))
    assert [r.step for r in seen] == [1, 2] and [r.step for r in report.records] == [1, 2]
    assert report.status == "crashed" and report.findings[0].code == "killed"
    assert "OOM killer" in report.findings[0].message


def test_ctrl_c_in_the_parent_reaches_the_child_and_keeps_a_partial_report() -> None:
    settings = DiagnoseSettings(model="tiny-llama", steps=50, plan=Plan(method="lora", seq_len=64))

    def ctrl_c(record):
        if record.step == 2:
            raise KeyboardInterrupt

    report = run_isolated(settings, on_step=ctrl_c)
    assert report.status == "interrupted"
    assert 2 <= len(report.records) < 50
    assert DiagnosticReport.model_validate_json(report.model_dump_json()).records[1].step == 2
