"""Child-process entry of a diagnostics run: settings on stdin, one JSON line per event on stdout.

    {"event": "step", "record": {...}}      after every optimizer step
    {"event": "report", "report": {...}}    once, at the end (also after Ctrl-C)

Anything libraries print goes to stderr: stdout carries nothing but events. The
parent (diagnostics.runner) survives whatever kills this process (an OOM, a CUDA
fault) and holds no CUDA context of its own.
"""

from __future__ import annotations

import json
import os
import sys


def main() -> int:
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
