"""Run diagnostics in a child process and survive whatever happens to it.

The child (diagnostics.worker) streams one JSON line per step; the parent rebuilds
the report from them. If the child dies (the kernel's OOM killer, a CUDA fault, a
segfault in a kernel library) the steps it finished still make a report, with a
finding that says how it died.

Stopping, in the parent's main thread (`ftplan diagnose`, `preflight --diagnose`):
the first Ctrl-C is forwarded, so the child ends its current step and reports what it
has; a second Ctrl-C, SIGTERM or SIGHUP (`timeout`, a closed terminal) ends the child
at once (SIGTERM, then SIGKILL) and the steps it streamed make the report. From any
thread, `should_stop` (a TUI's Cancel or quit) gives the child STOP_GRACE_S to finish
its step, then ends it the same way. The child never outlives the parent: it runs in
its own session (the terminal's Ctrl-C reaches the parent alone) and dies with it
(diagnostics.worker: a parent-death signal, and a watchdog on a pipe only the parent
holds open).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable

from diagnostics.report import DiagnoseSettings, DiagnosticReport, StepRecord
from diagnostics.rules import conclude
from planner.findings import Finding

POLL_S = 0.1  # how often should_stop and the stop deadlines are looked at
STOP_GRACE_S = 1.0  # should_stop: time to finish the step and report before the child is terminated
KILL_GRACE_S = 0.5  # after SIGTERM, before SIGKILL
# signals that end the run (after SIGINT's graceful first chance); the report is still made and written
# the interpreter the worker runs in; a test points it at a stand-in worker
PYTHON = sys.executable
ENDING = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)


class _Child:
    """The worker process and the deadlines of its stopping."""

    def __init__(self, python: str) -> None:
        # the watchdog pipe: the child sees EOF on it when this process is gone, whoever killed it
        self.watch_r, self.watch_w = os.pipe()
        self.proc = subprocess.Popen([python, "-m", "diagnostics.worker", "--parent", str(os.getpid()),
                                      "--watch", str(self.watch_r)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, start_new_session=True, pass_fds=(self.watch_r,))
        os.close(self.watch_r)
        self.term_at: float | None = None
        self.kill_at: float | None = None
        self.signum: int | None = None  # the signal that stopped the run, if one did
        self.asked = False  # a graceful stop (SIGINT) was sent

    def ask(self, signum: int, grace: float | None) -> None:
        """Let the child finish its step (SIGINT); end it after `grace` seconds (None: wait for it)."""
        self.signum = self.signum or signum
        if not self.asked:
            self.asked = True
            self._send(signal.SIGINT)
        if grace is not None:
            self.end(signum, grace)

    def end(self, signum: int, delay: float = 0.0) -> None:
        self.signum = signum
        at = time.monotonic() + delay
        self.term_at = at if self.term_at is None else min(self.term_at, at)

    def tick(self) -> None:
        now = time.monotonic()
        if self.term_at is not None and now >= self.term_at:
            self.term_at, self.kill_at = None, now + KILL_GRACE_S
            self._send(signal.SIGTERM)
        if self.kill_at is not None and now >= self.kill_at:
            self.kill_at = None
            self._send(signal.SIGKILL)

    def _send(self, signum: int) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # it ended between poll and kill
                self.proc.send_signal(signum)

    def close(self) -> int:
        """Wait for the child, ending it when it does not end by itself; its exit code."""
        try:
            code = self.proc.wait(timeout=KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            self._send(signal.SIGKILL)
            code = self.proc.wait()
        os.close(self.watch_w)
        return code


class _Signals:
    """In the main thread: SIGINT, SIGTERM and SIGHUP are noted rather than raised, and handled by the loop
    between two events, so no event is half-read when one arrives. Elsewhere (a TUI worker thread) nothing is
    installed: `should_stop` is the way in."""

    def __init__(self) -> None:
        self.pending: deque[int] = deque()
        self.previous: dict[int, object] = {}

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            for signum in ENDING:
                self.previous[signum] = signal.signal(signum, lambda s, _frame: self.pending.append(s))
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def run_isolated(settings: DiagnoseSettings, on_step: Callable[[StepRecord], None] | None = None,
                 python: str | None = None, should_stop: Callable[[], bool] | None = None) -> DiagnosticReport:
    """`should_stop`, polled every POLL_S, stops the run as the TUI's Cancel does: the child ends within
    STOP_GRACE_S + KILL_GRACE_S of it turning true."""
    child = _Child(python or PYTHON)
    proc = child.proc
    errors: deque[str] = deque(maxlen=200)  # the tail is what explains a crash; libraries can print a lot
    reader = threading.Thread(target=lambda: errors.extend(proc.stderr), daemon=True)
    reader.start()
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
    try:
        proc.stdin.write(settings.model_dump_json())
        proc.stdin.close()
    except BrokenPipeError:  # the child died at once; its stderr says why
        pass
    records: list[StepRecord] = []
    report: DiagnosticReport | None = None
    ctrl_c, exited_at = 0, None
    with _Signals() as signals:
        while True:
            try:
                while signals.pending:
                    signum = signals.pending.popleft()
                    ctrl_c += signum == signal.SIGINT
                    if signum == signal.SIGINT and ctrl_c == 1:
                        child.ask(signum, grace=None)
                    else:  # a second Ctrl-C, SIGTERM, SIGHUP: end it now, report what exists
                        child.end(signum)
                if should_stop is not None and not child.asked and should_stop():
                    child.ask(signal.SIGINT, grace=STOP_GRACE_S)
                child.tick()
                try:
                    line = lines.get(timeout=POLL_S)
                except queue.Empty:
                    # a grandchild that inherited the child's stdout would keep the stream open forever
                    if proc.poll() is not None:
                        exited_at = exited_at or time.monotonic()
                        if time.monotonic() - exited_at > 1.0:
                            break
                    continue
                if line is None:
                    break
                event = json.loads(line)
                if event["event"] == "step":
                    record = StepRecord.model_validate(event["record"])
                    records.append(record)
                    if on_step is not None:
                        on_step(record)
                elif event["event"] == "report":
                    report = DiagnosticReport.model_validate(event["report"])
            except KeyboardInterrupt:  # raised by on_step or before the handlers were in place: a Ctrl-C all the same
                signals.pending.append(signal.SIGINT)
        code = child.close()
    reader.join(timeout=5)
    if report is not None:
        return report
    if child.signum is not None:
        return _stopped_report(settings, records, child.signum)
    return _crash_report(settings, records, code, "".join(errors))


def _pump(stream, lines: queue.Queue) -> None:
    """The child's event lines into a queue, then None: the main loop waits on the queue with a timeout, so it
    can stop the child while no line comes (a model loading, a long step)."""
    for line in stream:
        lines.put(line)
    lines.put(None)


def _stopped_report(settings: DiagnoseSettings, records: list[StepRecord], signum: int) -> DiagnosticReport:
    why = "stopped on request (Ctrl-C or Cancel)" if signum == signal.SIGINT else f"stopped by {_signal_name(signum)}"
    report = DiagnosticReport(status="interrupted", settings=settings, records=records,
                              message=f"{why}; the report covers the steps before it")
    return conclude(report)


def _crash_report(settings: DiagnoseSettings, records: list[StepRecord], exit_code: int,
                  stderr: str) -> DiagnosticReport:
    tail = " | ".join(line.strip() for line in stderr.strip().splitlines()[-3:])
    if "out of memory" in stderr.lower():
        code, title = "out_of_memory", "Out of memory"
        fix = "lower per_device_train_batch_size or cutoff_len, enable gradient checkpointing (see ftplan estimate)"
    elif exit_code == -signal.SIGKILL:
        # not ftplan (that is _stopped_report): the kernel, most likely, or a person; whatever the child printed
        # last is unrelated to the kill, so it is no evidence
        code, title, tail = "killed", "The run was killed (SIGKILL), most likely by the kernel's OOM killer", ""
        fix = ("if the host ran out of RAM (dmesg says 'Out of memory: Killed process'), load fewer weights on "
               "the CPU or use a machine with more memory; else see who killed it")
    elif exit_code < 0:
        code, title, tail = "killed", f"The run was killed by {_signal_name(-exit_code)}", ""
        fix = "see who sent the signal, then run it again"
    else:
        code, title = "crashed", f"The run died with exit code {exit_code}"
        fix = "see the error above; rerun with --in-process to get the full traceback"
    status = "oom" if code == "out_of_memory" else "crashed"
    report = DiagnosticReport(status=status, settings=settings, records=records,
                              message=f"{title} after {len(records)} step(s): {tail}" if tail else title)
    report.findings.append(Finding(code=code, severity="error", message=title,
                                   evidence=tail or f"exit code {exit_code}", data={"exit_code": exit_code}, fix=fix))
    return conclude(report)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
