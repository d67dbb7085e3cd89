"""No diagnose run outlives what stopped it (issue 16): Ctrl-C, a second Ctrl-C, SIGTERM, SIGHUP, a killed
parent (`timeout -s KILL`, a closed terminal), the TUI's Cancel and quit. Every test names the worker by its PID
and polls /proc with a deadline; the stand-in worker is a script that ignores Ctrl-C, so only the runner's own
escalation can end it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import diagnostics.runner
from diagnostics.report import DiagnoseSettings, DiagnosticReport
from diagnostics.runner import run_isolated
from planner.plan import Plan

SETTINGS = DiagnoseSettings(model="tiny-llama", steps=1000, plan=Plan(method="lora", seq_len=32))
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}

# a worker that streams one step, records its PID, ignores Ctrl-C and never ends by itself
STUBBORN = textwrap.dedent("""
    import json, os, signal, sys, time
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.stdin.read()
    with open(os.environ["FTPLAN_TEST_PIDFILE"], "w") as fh:
        fh.write(str(os.getpid()))
    step = {"step": 1, "loss": 6.0, "lr": 1e-4, "grad_norm": 1.0, "clipped": False,
            "layer_norms": {"block.0": 0.5}, "kind_norms": {}}
    print(json.dumps({"event": "step", "record": step}), flush=True)
    while True:
        time.sleep(0.05)
""")


def alive(pid: int) -> bool:
    """A zombie is dead: it holds no memory and no GPU, only its exit status for a parent that is gone."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.02)
    return not alive(pid)


def wait_for(condition, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"no {what} within {seconds} s")


@pytest.fixture
def stubborn(tmp_path, monkeypatch) -> Path:
    """Point the runner at the stand-in worker; the returned path holds its PID once it runs."""
    script = tmp_path / "stubborn.py"
    script.write_text(STUBBORN)
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{script}" "$@"\n')
    python.chmod(0o755)
    pidfile = tmp_path / "worker.pid"
    monkeypatch.setenv("FTPLAN_TEST_PIDFILE", str(pidfile))
    monkeypatch.setattr(diagnostics.runner, "PYTHON", str(python))
    return pidfile


def pid_of(pidfile: Path) -> int:
    return int(wait_for(lambda: pidfile.exists() and pidfile.read_text(), 30, "worker PID"))


def test_should_stop_ends_a_child_that_ignores_ctrl_c_within_two_seconds(stubborn) -> None:
    stop_asked: list[float] = []

    def should_stop() -> bool:
        if not stop_asked and stubborn.exists():
            stop_asked.append(time.monotonic())
        return bool(stop_asked)

    report = run_isolated(SETTINGS, should_stop=should_stop)
    took = time.monotonic() - stop_asked[0]
    assert took < 2.0, took
    assert not alive(pid_of(stubborn))
    assert report.status == "interrupted" and "stopped on request" in report.message
    assert not any(f.code in ("killed", "crashed") for f in report.findings)  # ftplan stopped it: no crash


def test_a_second_ctrl_c_ends_the_child_and_keeps_its_steps(stubborn) -> None:
    """The first Ctrl-C is forwarded (and ignored by this worker); the second one ends it."""
    started = time.monotonic()

    def ctrl_c(record) -> None:
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()  # the second, through the handler
        raise KeyboardInterrupt  # the first

    report = run_isolated(SETTINGS, on_step=ctrl_c)
    assert time.monotonic() - started < 30
    assert gone_within(pid_of(stubborn), 0.1)
    assert report.status == "interrupted" and [r.step for r in report.records] == [1]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_end_the_child_and_keep_its_steps(stubborn, signum) -> None:
    sent: list[float] = []
    before = signal.getsignal(signum)

    def on_step(record) -> None:  # the handlers are in place once a step arrives
        sent.append(time.monotonic())
        os.kill(os.getpid(), signum)

    report = run_isolated(SETTINGS, on_step=on_step)
    assert time.monotonic() - sent[0] < 2.0
    assert gone_within(pid_of(stubborn), 0.1)
    assert report.status == "interrupted" and signal.Signals(signum).name in report.message
    assert [r.step for r in report.records] == [1]
    assert signal.getsignal(signum) == before  # the run's handlers leave with it


def test_the_watchdog_ends_the_worker_when_the_pipe_closes() -> None:
    """Where prctl is missing (or the parent died before it ran): EOF on the watch pipe ends the worker."""
    read, write = os.pipe()
    worker = subprocess.Popen([sys.executable, "-m", "diagnostics.worker", "--watch", str(read)],
                              stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              pass_fds=(read,), env=ENV)
    os.close(read)
    try:
        time.sleep(0.3)
        assert worker.poll() is None  # waiting for its settings, as long as the pipe is open
        os.close(write)
        assert worker.wait(timeout=5) != 0
    finally:
        worker.kill()
        worker.wait()


def ftplan(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tui", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV)


def worker_of(parent: int) -> int:
    def find() -> int | None:
        for children in Path(f"/proc/{parent}/task").glob("*/children"):
            for pid in children.read_text().split():
                with_args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if b"diagnostics.worker" in with_args:
                    return int(pid)
        return None

    return wait_for(find, 60, f"diagnostics.worker under {parent}")


@pytest.mark.parametrize("command", [
    ["diagnose", "--model", "tiny-llama", "--method", "lora", "--seq-len", "32", "--steps", "1000", "--json"],
    ["preflight", "CONFIG", "--gpu", "H100", "--diagnose", "1000"],
])
def test_a_killed_parent_takes_its_worker_along(tmp_path, command) -> None:
    """`timeout -s KILL`, the OOM killer, a crash: the parent cannot clean up, the parent-death signal does."""
    config = tmp_path / "train.yaml"
    config.write_text("model_name_or_path: tiny-llama\nstage: sft\ndo_train: true\nfinetuning_type: lora\n"
                      "dataset: identity\ncutoff_len: 32\n")
    parent = ftplan(*[str(config) if a == "CONFIG" else a for a in command])
    try:
        worker = worker_of(parent.pid)
        parent.kill()
        parent.wait()
        assert gone_within(worker, 3.0), f"worker {worker} outlived its parent"
    finally:
        parent.kill()
        parent.communicate()


def test_sigterm_to_diagnose_writes_the_partial_report_and_ends_the_worker(tmp_path) -> None:
    """`timeout 60 ftplan diagnose ... --out r.json`: the report is written, the worker is gone, exit 130."""
    out = tmp_path / "report.json"
    parent = ftplan("diagnose", "--model", "tiny-llama", "--method", "lora", "--seq-len", "32", "--steps", "1000",
                    "--json", "--out", str(out))
    try:
        worker = worker_of(parent.pid)
        time.sleep(0.5)  # the worker is running; the parent waits on it with its handlers in place
        parent.send_signal(signal.SIGTERM)
        stdout, stderr = parent.communicate(timeout=15)
        assert gone_within(worker, 1.0)
    finally:
        parent.kill()
        parent.communicate()
    assert parent.returncode == 130, stderr
    assert "Traceback" not in stderr
    report = DiagnosticReport.model_validate_json(out.read_text())
    assert report.status == "interrupted" and "SIGTERM" in report.message
    assert json.loads(stdout)["status"] == "interrupted"


async def start_run(app, pilot, pidfile: Path) -> int:
    pidfile.unlink(missing_ok=True)
    await pilot.click("#diag-run")
    deadline = time.monotonic() + 30
    while not pidfile.exists() and time.monotonic() < deadline:
        await pilot.pause(0.05)
    return pid_of(pidfile)


@pytest.mark.asyncio
async def test_the_tui_stops_its_worker_within_two_seconds_on_cancel_and_on_quit(stubborn, monkeypatch) -> None:
    from tui.app import FtplanApp

    # the stand-in worker takes no time: the default 7b plan's CPU run is not refused as too long
    monkeypatch.setattr("tui.diagnose_run.CPU_LIMIT_S", float("inf"))

    app = FtplanApp()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        await app.workers.wait_for_complete()
        await pilot.press("4")
        await pilot.pause()
        pid = await start_run(app, pilot, stubborn)
        asked = time.monotonic()
        await pilot.click("#diag-cancel")
        while alive(pid) and time.monotonic() - asked < 2.0:
            await pilot.pause(0.05)
        assert not alive(pid), "the worker outlived Cancel by 2 s"
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert app.query_one("#diagnose-pane").report.status == "interrupted"

        pid = await start_run(app, pilot, stubborn)  # a second run, then quit while it runs
        asked = time.monotonic()
        await pilot.press("q")
    assert gone_within(pid, 2.0 - (time.monotonic() - asked)), "the worker outlived quitting by 2 s"


def test_the_parent_death_signal_ends_the_worker_without_a_watchdog() -> None:
    """prctl alone (no --watch): the worker's parent is killed, the kernel ends the worker."""
    middle = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import os, subprocess, sys, time
        worker = subprocess.Popen([sys.executable, "-m", "diagnostics.worker", "--parent", str(os.getpid())],
                                  stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(worker.pid, flush=True)
        time.sleep(300)
    """)], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        worker = int(middle.stdout.readline())
        time.sleep(0.3)
        assert alive(worker)  # waiting for settings on a stdin that never closes
        middle.kill()
        middle.wait()
        assert gone_within(worker, 3.0), f"worker {worker} outlived its parent"
    finally:
        middle.kill()
        middle.wait()
