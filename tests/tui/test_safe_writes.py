"""The commands that write (`diagnose --out`, `preflight --fix`, the TUI's save and export) go through
planner.files: a bad path fails before any run starts, inputs and unrelated files stay byte-identical, and
a write that fails at the end still prints the report. Every file is built in tmp_path."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

import diagnostics.loop
import diagnostics.preflight
import diagnostics.runner
import planner.spec
from diagnostics.report import DiagnosticReport
from tui.cli import ExitCode, main

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "tests" / "data" / "seed_llamafactory.yaml"
TINY = ROOT / "profiles" / "models" / "tiny-llama.json"


def _the_run_started(*args, **kwargs):
    raise AssertionError("the run started before the output path was checked")


@pytest.fixture
def no_run(monkeypatch):
    """Anything that loads the model or trains fails the test: the path check must come first."""
    for module, name in ((diagnostics.runner, "run_isolated"), (diagnostics.loop, "run"),
                         (planner.spec, "load_spec"), (diagnostics.preflight, "plan_run")):
        monkeypatch.setattr(module, name, _the_run_started)


@pytest.fixture
def canned_run(monkeypatch):
    """A diagnose run that completes at once with an empty report (the writing is what is tested)."""
    def run_isolated(settings, on_step=None):
        return DiagnosticReport(status="completed", settings=settings)

    monkeypatch.setattr(diagnostics.runner, "run_isolated", run_isolated)


def full_disk(src, dst):
    raise OSError(28, "No space left on device")


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.is_symlink()}


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ftplan: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def workspace(tmp_path) -> Path:
    """A run's files: data, a local model, a folder, a symlink to it, a FIFO and someone else's file."""
    (tmp_path / "train.jsonl").write_text('{"text": "the data of this run"}\n')
    (tmp_path / "model").mkdir()
    shutil.copy(TINY, tmp_path / "model" / "config.json")
    (tmp_path / "reports").mkdir()
    (tmp_path / "latest").symlink_to(tmp_path / "reports")
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "notes.txt").write_text("someone's notes\n")
    return tmp_path


BAD_OUT = [
    ("reports", [], "reports: is a folder"),
    ("latest", ["--force"], "latest: is a symlink to a folder"),
    ("pipe", ["--force"], "pipe: is a FIFO (named pipe)"),
    ("train.jsonl/report.json", [], "train.jsonl is a file, not a folder"),
    ("r" * 300 + ".json", [], "is too long (305 bytes"),
    ("notes.txt", [], "notes.txt: the file exists; add --force to replace it"),
    ("train.jsonl", ["--force"], "that is the input file (--data) of this run"),
    ("model/config.json", ["--force"], "that is the input file (the --model config.json) of this run"),
]


@pytest.mark.parametrize(("out", "extra", "needle"), BAD_OUT, ids=[case[0][:20] for case in BAD_OUT])
def test_diagnose_refuses_a_bad_out_before_the_run_starts(workspace, no_run, capsys, out, extra, needle) -> None:
    before = files(workspace)
    start = time.perf_counter()
    code = main(["diagnose", "--model", str(workspace / "model"), "--data", str(workspace / "train.jsonl"),
                 "--out", str(workspace / out), *extra])
    elapsed = time.perf_counter() - start
    assert code == ExitCode.BAD_INPUT
    line = one_line(capsys.readouterr().err)
    assert line.startswith("ftplan: --out ") and needle in line
    assert elapsed < 1.0  # no model was built, no worker spawned (no_run would have failed the test)
    assert files(workspace) == before and os.path.isfile(workspace / "notes.txt")
    assert (workspace / "latest").is_symlink() and os.path.exists(workspace / "pipe")


def test_diagnose_force_replaces_an_unrelated_file(workspace, canned_run, capsys) -> None:
    out = workspace / "notes.txt"
    code = main(["diagnose", "--model", "tiny-llama", "--method", "lora", "--json", "--out", str(out), "--force"])
    assert code == ExitCode.OK
    assert DiagnosticReport.model_validate_json(out.read_text()).status == "completed"
    assert json.loads(capsys.readouterr().out)["status"] == "completed"


def test_diagnose_writes_through_a_symlink_to_a_file(workspace, canned_run) -> None:
    (workspace / "link.json").symlink_to(workspace / "notes.txt")
    assert main(["diagnose", "--model", "tiny-llama", "--json", "--out", str(workspace / "link.json"),
                 "--force"]) == ExitCode.OK
    assert (workspace / "link.json").is_symlink() and (workspace / "notes.txt").read_text().startswith("{")


def test_diagnose_write_failure_still_prints_the_report(workspace, canned_run, monkeypatch, capsys) -> None:
    out = workspace / "new" / "report.json"
    monkeypatch.setattr(os, "replace", full_disk)
    code = main(["diagnose", "--model", "tiny-llama", "--method", "lora", "--json", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == ExitCode.BAD_INPUT
    assert json.loads(captured.out)["status"] == "completed"  # the report is not lost
    assert "could not write it (No space left on device)" in one_line(captured.err)
    assert not out.exists() and os.listdir(out.parent) == []  # no temporary left behind


@pytest.fixture
def config(tmp_path) -> Path:
    """The seed's LLaMA-Factory config with its dataset found through data/dataset_info.json."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "dataset_info.json").write_text('{"identity": {"file_name": "identity.json"}}\n')
    (tmp_path / "data" / "identity.json").write_text('[{"instruction": "hi", "input": "", "output": "hello"}]\n')
    path = tmp_path / "train.yaml"
    path.write_text(SEED.read_text() + "dataset_dir: data\n")
    (tmp_path / "notes.txt").write_text("someone's notes\n")
    return path


BAD_FIX = [
    ("train.yaml", ["--force"], "that is the input file (the config) of this run"),
    ("data/identity.json", ["--force"], "that is the input file (the config's data file) of this run"),
    ("data/dataset_info.json", ["--force"], "that is the input file (the config's dataset_info.json)"),
    ("notes.txt", [], "notes.txt: the file exists; add --force to replace it"),
    ("data", [], "data: is a folder"),
]


@pytest.mark.parametrize(("fix", "extra", "needle"), BAD_FIX, ids=[case[0] for case in BAD_FIX])
def test_preflight_refuses_a_bad_fix_before_the_checks(config, no_run, capsys, fix, extra, needle) -> None:
    before = files(config.parent)
    code = main(["preflight", str(config), "--gpu", "H100", "--fix", str(config.parent / fix), *extra])
    assert code == ExitCode.BAD_INPUT
    line = one_line(capsys.readouterr().err)
    assert line.startswith("ftplan: --fix ") and needle in line
    assert files(config.parent) == before


def test_preflight_force_replaces_an_unrelated_file(config, capsys) -> None:
    before = config.read_bytes()
    out = config.parent / "notes.txt"
    code = main(["preflight", str(config), "--gpu", "H100", "--fix", str(out), "--force", "--json"])
    assert code in (ExitCode.OK, ExitCode.CHECK_FAILED)
    assert json.loads(capsys.readouterr().out)["fixed"] == str(out)
    assert out.read_text().startswith("# The LLaMA-Factory config") and config.read_bytes() == before


def test_preflight_write_failure_still_prints_the_report(config, monkeypatch, capsys) -> None:
    out = config.parent / "fixed.yaml"
    monkeypatch.setattr(os, "replace", full_disk)
    code = main(["preflight", str(config), "--gpu", "H100", "--fix", str(out), "--json"])
    captured = capsys.readouterr()
    assert code == ExitCode.BAD_INPUT
    report = json.loads(captured.out)
    assert report["verdict"] and report["fixed"] is None and "No space left" in report["fix_error"]
    assert "--fix" in one_line(captured.err) and not out.exists()


@pytest.mark.asyncio
async def test_the_tui_refuses_a_folder_and_never_overwrites(tmp_path, monkeypatch) -> None:
    """Saving to a folder (the issue's `/`) crashed the app; saving over a file picks a free name."""
    from tests.tui.test_app import running

    (tmp_path / "plan.json").write_text("mine\n")
    async with running() as (app, _pilot):
        notes: list[tuple[str, str]] = []
        monkeypatch.setattr(app, "notify", lambda message, **kw: notes.append((message, kw.get("severity"))))
        assert app.save_json(str(tmp_path)) is None and app.export_yaml(str(tmp_path)) is None
        assert [severity for _, severity in notes] == ["error", "error"] and "is a folder" in notes[0][0]
        assert app.save_json(str(tmp_path / "plan.json")).name == "plan-1.json"
        assert app.is_running and (tmp_path / "plan.json").read_text() == "mine\n"


def test_calibrate_checks_its_cache_before_measuring(tmp_path, monkeypatch, capsys) -> None:
    import diagnostics.calibrate

    (tmp_path / "calibration.json").mkdir()
    monkeypatch.setenv("FTPLAN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(diagnostics.calibrate, "calibrate", _the_run_started)
    assert main(["gpus", "--calibrate"]) == ExitCode.BAD_INPUT
    assert "the calibration cache" in one_line(capsys.readouterr().err) and (tmp_path / "calibration.json").is_dir()
