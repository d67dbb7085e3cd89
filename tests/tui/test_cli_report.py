"""`ftplan report`: a saved run rendered as `ftplan diagnose` prints one; bad input is one line and exit 2.

The logs here are written by hand, line by line, in the documented event format (diagnostics.runlog's
docstring), not by the code that reads them. The round trip from a real Trainer run is in
tests/diagnostics/test_callback.py.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tui.cli import main

SETTINGS = {"model": "tiny-llama", "steps": 6, "lr": 1e-4}
ENVIRONMENT = {"device": "cpu", "world_size": 1, "tokenizer": "byte-level", "examples": 12, "data": "train.jsonl"}


def record(step: int, loss: float, norm: float = 0.5) -> dict:
    layers = {"embeddings": norm / 2, "block.0": norm, "block.1": norm * 0.8, "head": norm * 2}
    return {"step": step, "loss": loss, "lr": 1e-4, "grad_norm": norm, "clipped": False, "layer_norms": layers,
            "kind_norms": {"block.0.mlp": norm, "block.1.mlp": norm * 0.8}, "tokens": 64}


def write_log(path, steps: list[dict], report: dict | None = None, header: bool = True) -> str:
    lines = [{"event": "run", "settings": SETTINGS, "environment": ENVIRONMENT}] if header else []
    lines += [{"event": "step", "record": r} for r in steps]
    if report is not None:
        lines.append({"event": "report", "report": report})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return str(path)


def healthy_steps() -> list[dict]:
    return [record(s, loss) for s, loss in enumerate([4.2, 4.1, 4.0, 3.95, 3.9, 3.85], 1)]


@pytest.fixture(autouse=True)
def wide_console(monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps at the console width; the checks read whole lines


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_a_finished_run_renders_with_its_plots(tmp_path, capsys) -> None:
    report = {"status": "completed", "settings": SETTINGS, "environment": ENVIRONMENT, "records": healthy_steps(),
              "findings": []}
    code, out, _ = run(["report", write_log(tmp_path / "run.jsonl", healthy_steps(), report)], capsys)
    assert code == 0
    assert "status: completed after 6 step(s)" in out
    assert "findings: none" in out
    assert "loss" in out and "step" in out  # the plotext loss plot's title and axis
    assert "gradient norm per layer" in out and "block.1" in out and "steps 1..6" in out  # the heatmap


def test_a_log_cut_short_is_reported_from_its_steps(tmp_path, capsys) -> None:
    """No final report (the run died): the rules run on the steps the log holds; the NaN step is an error."""
    steps = [*healthy_steps()[:4], record(5, float("nan"), float("nan"))]
    text = write_log(tmp_path / "run.jsonl", steps)
    code, out, _ = run(["report", text, "--no-plots"], capsys)
    assert code == 1
    assert "status: interrupted after 5 step(s)" in out and "without a final report" in out
    assert "NaN/Inf in training" in out and "step 5" in out


def test_json_output_holds_every_step(tmp_path, capsys) -> None:
    code, out, _ = run(["report", write_log(tmp_path / "run.jsonl", healthy_steps()), "--json"], capsys)
    data = json.loads(out)
    assert [r["step"] for r in data["records"]] == [1, 2, 3, 4, 5, 6]
    assert data["records"][2]["loss"] == 4.0 and code == 1  # interrupted: no final report


def test_a_diagnose_out_report_renders(tmp_path, capsys) -> None:
    path = tmp_path / "report.json"
    path.write_text(json.dumps({"status": "completed", "settings": SETTINGS, "records": healthy_steps()}, indent=2))
    code, out, _ = run(["report", str(path), "--no-plots"], capsys)
    assert code == 0 and "status: completed after 6 step(s)" in out


def _bad_files(tmp_path) -> dict[str, tuple[str, str]]:
    """name -> (path, what the one-line error must say)."""
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "binary.jsonl").write_bytes(b"\xff\xfe\x00\x81garbage")
    (tmp_path / "text.jsonl").write_text("step 1 loss 4.2\n")
    (tmp_path / "array.jsonl").write_text("[1, 2, 3]\n")
    (tmp_path / "foreign.jsonl").write_text('{"loss": 4.2, "step": 1}\n')
    broken = healthy_steps()
    del broken[1]["loss"]
    write_log(tmp_path / "no_loss.jsonl", broken)
    write_log(tmp_path / "headless.jsonl", healthy_steps(), header=False)
    (tmp_path / "bad_report.json").write_text(json.dumps({"status": "finished", "settings": SETTINGS}))
    return {
        "missing": (str(tmp_path / "nope.jsonl"), "no such file"),
        "folder": (str(tmp_path), "a folder"),
        "empty": (str(tmp_path / "empty.jsonl"), "empty"),
        "binary": (str(tmp_path / "binary.jsonl"), "cannot be read as text"),
        "text": (str(tmp_path / "text.jsonl"), "line 1: not JSON"),
        "array": (str(tmp_path / "array.jsonl"), "line 1: not an ftplan run event"),
        "foreign": (str(tmp_path / "foreign.jsonl"), "line 1: not an ftplan run event"),
        "no_loss": (str(tmp_path / "no_loss.jsonl"), "line 3: not a valid step record (loss: Field required)"),
        "headless": (str(tmp_path / "headless.jsonl"), "no run header"),
        "bad_report": (str(tmp_path / "bad_report.json"), "not a valid ftplan report (status:"),
    }


@pytest.mark.parametrize("case", ["missing", "folder", "empty", "binary", "text", "array", "foreign", "no_loss",
                                  "headless", "bad_report"])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, case: str) -> None:
    path, says = _bad_files(tmp_path)[case]
    code, out, err = run(["report", path], capsys)
    assert code == 2 and out == ""
    assert err.startswith("ftplan: ") and err.count("\n") == 1 and "Traceback" not in err
    assert says in err


def test_report_loads_no_torch(tmp_path) -> None:
    """Rendering a saved run is for any machine: no torch, transformers or textual."""
    path = write_log(tmp_path / "run.jsonl", healthy_steps())
    probe = (f"import contextlib, io, sys\nfrom tui.cli import main\nwith contextlib.redirect_stdout(io.StringIO()):"
             f"\n    main(['report', {path!r}])\nprint(sorted({{m.split('.')[0] for m in sys.modules}} & "
             "{'torch', 'transformers', 'textual', 'accelerate'}))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip().splitlines()[-1] == "[]"
