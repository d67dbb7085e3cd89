"""Exit-code discipline of the command line (issue 16): a reader that quits early (`| head -1`) is success, an
ASCII-only terminal gets ASCII stand-ins, a full disk is one line and exit 3, and the flag combinations the
issue names are refused in one line with exit 2 before anything runs."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

import diagnostics.runner
from diagnostics.report import DiagnoseSettings, DiagnosticReport
from tui.cli import ExitCode, main

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ("model_name_or_path: tiny-llama\nstage: sft\ndo_train: true\nfinetuning_type: lora\ndataset: identity\n"
          "cutoff_len: 128\n")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "train.yaml"
    path.write_text(CONFIG)
    return path


COMMANDS = {
    "estimate": ["estimate", "--model", "7b", "--gpu", "4090"],  # does not fit: exit 1 unless the pipe breaks
    "estimate --json": ["estimate", "--model", "7b", "--json"],
    "fits": ["fits", "--model", "tiny-llama"],
    "preflight": ["preflight", "CONFIG", "--gpu", "H100"],
    "models": ["models"],
}


def args_for(name: str, config: Path) -> list[str]:
    return [str(config) if a == "CONFIG" else a for a in COMMANDS[name]]


@contextlib.contextmanager
def stdout_to(stream):
    """Swap sys.stdout for `stream` (rich's consoles are made per call, so they write to it too)."""
    saved = sys.stdout
    sys.stdout = stream
    try:
        yield stream
    finally:
        sys.stdout = saved


@pytest.mark.parametrize("name", COMMANDS)
def test_a_reader_that_quits_early_is_success(config, capsys, name) -> None:
    read, write = os.pipe()
    os.close(read)  # `| head -1` that has already gone
    with stdout_to(open(write, "w", encoding="utf-8")) as stream:
        code = main(args_for(name, config))
        stream.close()  # the last flush goes to /dev/null now: nothing is left to fail at exit
    assert code == ExitCode.OK
    assert capsys.readouterr().err == ""


def test_head_minus_one_exits_0_and_prints_nothing_at_exit() -> None:
    """The real pipe: the interpreter's own last flush must not print 'Exception ignored' either."""
    proc = subprocess.Popen([sys.executable, "-m", "tui", "estimate", "--model", "7b", "--gpu", "4090"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    proc.stdout.close()  # the reader is gone before the first line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == ExitCode.OK, err
    assert err == ""


@pytest.mark.parametrize("name", ["estimate", "fits", "preflight"])
def test_an_ascii_terminal_gets_ascii_stand_ins(config, capsys, name) -> None:
    raw = io.BytesIO()
    with stdout_to(io.TextIOWrapper(raw, encoding="ascii", newline="\n")) as stream:
        code = main(args_for(name, config))
        stream.flush()
    assert code in (ExitCode.OK, ExitCode.CHECK_FAILED)
    text = raw.getvalue().decode("ascii")  # would raise on anything else
    assert "Traceback" not in capsys.readouterr().err
    if name == "estimate":
        assert "7b (-> meta-llama/Llama-2-7b-hf)" in text and "micro-batch 1 x 1024" in text


def test_an_ascii_stderr_gets_stand_ins_too(capsys, monkeypatch) -> None:
    raw = io.BytesIO()
    monkeypatch.setattr(sys, "stderr", io.TextIOWrapper(raw, encoding="ascii", newline="\n"))
    assert main(["estimate", "--model", "no-such-model→"]) == ExitCode.BAD_INPUT
    sys.stderr.flush()
    assert "no-such-model->" in raw.getvalue().decode("ascii")


@pytest.mark.parametrize("name", ["estimate", "estimate --json", "models"])
def test_a_full_disk_is_one_line_and_exit_3(config, capsys, name) -> None:
    with stdout_to(open("/dev/full", "w", encoding="utf-8")) as stream:
        code = main(args_for(name, config))
        stream.close()
    err = capsys.readouterr().err
    assert code == ExitCode.ENVIRONMENT
    assert err.count("\n") == 1 and err.startswith("ftplan: cannot write the output (No space left on device)")


def one_line(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        code = main(argv)
        raise SystemExit(code)
    err = capsys.readouterr().err
    assert exc.value.code == ExitCode.BAD_INPUT, err
    assert err.count("\n") == 1 and err.startswith("ftplan: ") and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("argv", [
    ["estimate", "--model", "7b", "--gpu", "H100", "--gpu-memory", "24GiB"],
    ["preflight", "CONFIG", "--gpu", "H100", "--gpu-memory", "24GiB"],
    ["export", "--model", "7b", "--format", "trl", "-o", "OUT", "--gpu", "H100", "--gpu-memory", "24GiB"],
])
def test_gpu_and_gpu_memory_together_are_refused(config, capsys, argv) -> None:
    out = config.parent / "export.yaml"
    argv = [str(config) if a == "CONFIG" else str(out) if a == "OUT" else a for a in argv]
    err = one_line(capsys, argv)
    assert "--gpu" in err and "--gpu-memory" in err and "not both" in err
    assert not out.exists()


@pytest.mark.parametrize(("argv", "words"), [
    (["estimate", "--model", "7b", "--gpu-memory", "-1GiB"], ["--gpu-memory", "-1GiB", "negative"]),
    (["estimate", "--model", "7b", "--epochs", "1e308", "--samples", "1000"], ["--epochs", "at most"]),
    (["estimate", "--model", "7b", "--samples", str(10**15)], ["--samples"]),
    (["diagnose", "--model", "tiny-llama", "--max-grad-norm", "-1"], ["--max-grad-norm", "at least 0"]),
    (["diagnose", "--model", "tiny-llama", "--max-grad-norm", "nan"], ["--max-grad-norm"]),
])
def test_bad_flag_values_name_the_flag(capsys, monkeypatch, argv, words) -> None:
    monkeypatch.setattr(diagnostics.runner, "run_isolated", lambda *a, **k: pytest.fail("the run started"))
    err = one_line(capsys, argv)
    assert all(w in err for w in words), err


def test_a_bad_world_size_is_one_line(capsys, monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "abc")
    monkeypatch.setattr(diagnostics.runner, "run_isolated", lambda *a, **k: pytest.fail("the run started"))
    err = one_line(capsys, ["diagnose", "--model", "tiny-llama", "--steps", "1"])
    assert "WORLD_SIZE" in err and "'abc'" in err


@pytest.mark.parametrize("data", [b'{"text": "ok"}\n\xff\xfe\x00binary\n', bytes(range(256)) * 4])
def test_non_utf8_data_is_one_line_before_the_run(tmp_path, capsys, monkeypatch, data) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(data)
    monkeypatch.setattr(diagnostics.runner, "run_isolated", lambda *a, **k: pytest.fail("the run started"))
    err = one_line(capsys, ["diagnose", "--model", "tiny-llama", "--data", str(path)])
    assert "--data" in err and "UTF-8" in err
    assert path.read_bytes() == data


@pytest.mark.parametrize(("kind", "code"), [("input", ExitCode.BAD_INPUT), ("environment", ExitCode.ENVIRONMENT)])
def test_preflight_diagnose_that_fails_on_its_input_exits_as_diagnose_does(config, capsys, monkeypatch, kind,
                                                                           code) -> None:
    """The worker reports an error of the input (its data, the model) before training: 2 (or 3), not 1."""
    def failed(settings: DiagnoseSettings, **_):
        return DiagnosticReport(status="failed", settings=settings, error_kind=kind,
                                message="--data x.jsonl: not UTF-8 text (offset 15)")

    monkeypatch.setattr(diagnostics.runner, "run_isolated", failed)
    assert main(["preflight", str(config), "--gpu", "H100", "--diagnose", "2"]) == code
    err = capsys.readouterr().err
    assert err == "ftplan: --data x.jsonl: not UTF-8 text (offset 15)\n"
