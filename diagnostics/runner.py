"""Run diagnostics in a child process and survive whatever happens to it.

The child (diagnostics.worker) streams one JSON line per step; the parent rebuilds
the report from them. If the child dies (the kernel's OOM killer, a CUDA fault, a
segfault in a kernel library) the steps it finished still make a report, with a
finding that says how it died. Ctrl-C is forwarded so the child ends its current
step and writes a partial report.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from collections.abc import Callable

from diagnostics.report import DiagnoseSettings, DiagnosticReport, StepRecord
from diagnostics.rules import conclude
from planner.findings import Finding


def run_isolated(settings: DiagnoseSettings, on_step: Callable[[StepRecord], None] | None = None,
                 python: str = sys.executable, should_stop: Callable[[], bool] | None = None) -> DiagnosticReport:
    """`should_stop` (polled after every step, e.g. a TUI's Cancel button) stops the run as Ctrl-C does."""
    proc = subprocess.Popen([python, "-m", "diagnostics.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    errors: list[str] = []
    reader = threading.Thread(target=lambda: errors.extend(proc.stderr), daemon=True)
    reader.start()
    proc.stdin.write(settings.model_dump_json())
    proc.stdin.close()
    records: list[StepRecord] = []
    report: DiagnosticReport | None = None
    interrupted = False
    while True:
        try:
            for line in proc.stdout:
                event = json.loads(line)
                if event["event"] == "step":
                    record = StepRecord.model_validate(event["record"])
                    records.append(record)
                    if on_step is not None:
                        on_step(record)
                    if should_stop is not None and should_stop() and not interrupted:
                        interrupted = True
                        proc.send_signal(signal.SIGINT)
                elif event["event"] == "report":
                    report = DiagnosticReport.model_validate(event["report"])
            break
        except KeyboardInterrupt:  # forward it: the child finishes its step and reports what it has
            interrupted = True
            proc.send_signal(signal.SIGINT)
    code = proc.wait()
    reader.join(timeout=5)
    if report is not None:
        return report
    return _crash_report(settings, records, code, "".join(errors), interrupted)


def _crash_report(settings: DiagnoseSettings, records: list[StepRecord], exit_code: int, stderr: str,
                  interrupted: bool) -> DiagnosticReport:
    tail = " | ".join(line.strip() for line in stderr.strip().splitlines()[-3:])
    if "out of memory" in stderr.lower():
        code, title = "out_of_memory", "Out of memory"
        fix = "lower per_device_train_batch_size or cutoff_len, enable gradient checkpointing (see ftplan estimate)"
    elif exit_code == -signal.SIGKILL:
        code, title = "killed", "The run was killed (SIGKILL), most likely by the kernel's OOM killer"
        fix = "the host ran out of RAM: load fewer weights on the CPU, or use a machine with more memory"
    else:
        code, title = "crashed", f"The run died with exit code {exit_code}"
        fix = "see the error above; rerun with --in-process to get the full traceback"
    status = "interrupted" if interrupted else ("oom" if code == "out_of_memory" else "crashed")
    report = DiagnosticReport(status=status, settings=settings, records=records,
                              message=f"{title} after {len(records)} step(s): {tail}" if tail else title)
    report.findings.append(Finding(code=code, severity="error", message=title,
                                   evidence=tail or f"exit code {exit_code}", data={"exit_code": exit_code}, fix=fix))
    return conclude(report)
