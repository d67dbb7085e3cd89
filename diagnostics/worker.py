"""Child-process entry of a diagnostics run: settings on stdin, one JSON line per event on stdout.

    {"event": "step", "record": {...}}      after every optimizer step
    {"event": "report", "report": {...}}    once, at the end (also after Ctrl-C)

Anything libraries print goes to stderr: stdout carries nothing but events. The
parent (diagnostics.runner) survives whatever kills this process (an OOM, a CUDA
fault) and holds no CUDA context of its own. This process, in turn, never outlives
the parent: `--parent PID` arms Linux's parent-death signal, and `--watch FD` is the
read end of a pipe whose only writer is the parent, so EOF on it means the parent is
gone (the fallback where prctl does not exist, and for a parent that died before
prctl ran).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import signal
import sys
import threading

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent: int | None, watch: int | None) -> None:
    """SIGKILL, not SIGTERM: a child stuck in a CUDA call must still let go of the GPU."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # no libc to ask: the watchdog below still holds
    if parent is not None and os.getppid() != parent:  # it died before prctl: nobody would signal us
        os._exit(1)
    if watch is not None:
        threading.Thread(target=_watchdog, args=(watch,), daemon=True, name="ftplan-parent-watchdog").start()


def _watchdog(fd: int) -> None:
    try:
        while os.read(fd, 1):
            pass
    except OSError:
        pass
    os._exit(1)  # no cleanup: the point is to release the GPU and the memory now


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="diagnostics.worker")
    parser.add_argument("--parent", type=int)
    parser.add_argument("--watch", type=int)
    args = parser.parse_args(argv)
    die_with_parent(args.parent, args.watch)  # first: importing torch takes seconds
    events = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints from libraries land on stderr, not in the event stream
    sys.stdout = sys.stderr

    from diagnostics.loop import run
    from diagnostics.report import DiagnoseSettings, DiagnosticReport
    from planner.errors import EnvironmentMissing, FtplanError
    from planner.fields import worded

    def emit(event: dict) -> None:
        events.write(json.dumps(event) + "\n")
        events.flush()

    settings = DiagnoseSettings.model_validate_json(sys.stdin.read())
    try:
        report = run(settings, on_step=lambda r: emit({"event": "step", "record": r.model_dump(mode="json")}))
    except FtplanError as exc:
        kind = "environment" if isinstance(exc, EnvironmentMissing) else "input"
        report = DiagnosticReport(status="failed", settings=settings, message=worded(exc, "cli"), error_kind=kind)
    emit({"event": "report", "report": report.model_dump(mode="json")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
