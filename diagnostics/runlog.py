"""A run's log: one JSON object a line, the events of the child process's stream (diagnostics.worker) and a
header, so a log read back makes the same report whether the run finished or died half way.

    {"event": "run", "settings": {...}, "environment": {...}}   first: what the run is
    {"event": "step", "record": {...}}                          after every optimizer step
    {"event": "finding", "step": N, "finding": {...}}           a finding as it first appears (informative)
    {"event": "report", "report": {...}}                        once, at the end

`FtplanMonitor` (diagnostics.callback) writes it during a Trainer run; `ftplan report` reads it, or a report
JSON (`ftplan diagnose --out`). Reading needs neither torch nor transformers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TextIO

from pydantic import ValidationError

from diagnostics.report import DiagnoseSettings, DiagnosticReport, StepRecord
from planner.errors import FtplanError
from planner.findings import Finding

EVENTS = ("run", "step", "finding", "report")


class RunLog:
    """Appends events to an open log, a line each, flushed, so a run killed mid-way leaves every step it took."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._file: TextIO = self.path.open("w", encoding="utf-8")

    def _write(self, event: str, key: str, payload: str, **extra) -> None:
        # the models dump themselves: a non-finite float is written "NaN" (StepRecord's config), still JSON
        head = json.dumps({"event": event, **extra})[:-1]
        self._file.write(f'{head}, "{key}": {payload}}}\n')
        self._file.flush()

    def start(self, settings: DiagnoseSettings, environment: dict) -> None:
        self._write("run", "settings", settings.model_dump_json(), environment=environment)

    def step(self, record: StepRecord) -> None:
        self._write("step", "record", record.model_dump_json())

    def finding(self, step: int, finding: Finding) -> None:
        self._write("finding", "finding", finding.model_dump_json(), step=step)

    def report(self, report: DiagnosticReport) -> None:
        self._write("report", "report", report.model_dump_json())

    def close(self) -> None:
        self._file.close()


def read_run(path: str | Path) -> DiagnosticReport:
    """The report of a run log (its final report, or one made from its steps when the run died before writing
    it), or of a report JSON. Anything else is an FtplanError naming the file and the line."""
    source = Path(path)
    shown = str(path)
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FtplanError(f"{shown}: no such file; give the run log FtplanMonitor wrote (run.jsonl) or a "
                          "report JSON from ftplan diagnose --out") from None
    except IsADirectoryError:
        raise FtplanError(f"{shown}: a folder, not a run log; give the .jsonl file FtplanMonitor wrote") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FtplanError(f"{shown}: cannot be read as text ({type(exc).__name__}); give a run log (.jsonl)") \
            from None
    if not text.strip():
        raise FtplanError(f"{shown}: empty; the run wrote nothing (did it start?)")
    whole = _report_json(text)
    if whole is not None:
        return _validated(DiagnosticReport, whole, f"{shown}: not a valid ftplan report")
    return _from_events(text, shown)


def _report_json(text: str) -> dict | None:
    """The object of a whole-file report JSON (several lines, indented); None for a one-event-a-line log."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    # a report has these; any other lone object is read as a log line, and refused as one
    return value if isinstance(value, dict) and "event" not in value and {"status", "settings"} & set(value) \
        else None


def read_steps(path: str | Path) -> tuple[dict, list[StepRecord]]:
    """The header and the step records of a run log (the final report, if any, left aside)."""
    header, records, _report = _events(Path(path).read_text(encoding="utf-8"), str(path))
    if header is None:
        raise FtplanError(f"{path}: no run header (the first line, event \"run\"); is this an ftplan run log?")
    return header, records


def _events(text: str, shown: str) -> tuple[dict | None, list[StepRecord], DiagnosticReport | None]:
    header: dict | None = None
    records: list[StepRecord] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{shown} line {number}"
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            raise FtplanError(f"{where}: not JSON; a run log has one JSON object a line (FtplanMonitor's "
                              "run.jsonl)") from None
        kind = event.get("event") if isinstance(event, dict) else None
        if kind not in EVENTS:
            raise FtplanError(f"{where}: not an ftplan run event (expected an object whose \"event\" is one of "
                              f"{', '.join(EVENTS)})")
        if kind == "report":  # the run finished: its own report is the answer
            return header, records, _validated(DiagnosticReport, event.get("report"),
                                               f"{where}: not a valid ftplan report")
        if kind == "run":
            header = event
        elif kind == "step":
            records.append(_validated(StepRecord, event.get("record"), f"{where}: not a valid step record"))
    return header, records, None


def _from_events(text: str, shown: str) -> DiagnosticReport:
    from diagnostics.rules import conclude

    header, records, report = _events(text, shown)
    if report is not None:
        return report
    if header is None:
        raise FtplanError(f"{shown}: no run header (the first line, event \"run\"); is this an ftplan run log?")
    settings = _validated(DiagnoseSettings, header.get("settings"), f"{shown}: the run header's settings are "
                                                                     "not valid")
    report = DiagnosticReport(status="interrupted", settings=settings, records=records,
                              environment=header.get("environment") or {},
                              message=f"the log ends after {len(records)} step(s) without a final report: the run "
                                      "died or is still running; the report covers those steps")
    return conclude(report, int(report.environment.get("world_size", 1)))


def _validated(model, value, what: str):
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        at = ".".join(str(part) for part in first["loc"]) or "the object"
        raise FtplanError(f"{what} ({at}: {first['msg']})") from None
