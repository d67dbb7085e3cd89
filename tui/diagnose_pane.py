"""The Diagnose tab: a short instrumented run of the current plan, drawn live.

The run happens in a child process (diagnostics.runner), driven from a thread worker;
steps arrive as messages. Cancel, and quitting the app (which cancels the worker), stop
the child within about two seconds (diagnostics.runner: the step's end, else SIGTERM,
then SIGKILL) and keep the partial report.
"""

from __future__ import annotations

import time

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.validation import Integer, Number
from textual.widgets import Button, Input, Label, ProgressBar, Static
from textual.worker import get_current_worker

from diagnostics.report import DiagnoseSettings, DiagnosticReport, StepRecord
from planner.errors import FtplanError
from planner.fields import worded
from tui.diagnose_view import change_settings
from tui.plan_pane import PlanState
from tui.plot_widgets import LossPlot
from tui.plots import norm_heatmap
from tui.views import finding_line

_STYLE = {"error": "b red", "warning": "yellow", "info": "dim"}


class StepArrived(Message):
    def __init__(self, record: StepRecord) -> None:
        super().__init__()
        self.record = record


class RunFinished(Message):
    def __init__(self, report: DiagnosticReport) -> None:
        super().__init__()
        self.report = report


class DiagnosePane(Vertical):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.state: PlanState | None = None
        self.records: list[StepRecord] = []
        self.report: DiagnosticReport | None = None
        self._cancel = False
        self._started = 0.0

    def compose(self) -> ComposeResult:
        with Horizontal(id="diag-controls"):
            yield Label("steps", classes="field-label")
            yield Input("20", id="diag-steps", compact=True, type="integer",
                        validators=[Integer(minimum=1, maximum=500, failure_description="steps: 1 to 500")])
            yield Label("lr", classes="field-label")
            yield Input("", id="diag-lr", compact=True, placeholder="auto",
                        validators=[Number(minimum=1e-9, failure_description="a positive learning rate")],
                        valid_empty=True)
            yield Button("Run", id="diag-run", variant="primary", compact=True)
            yield Button("Cancel", id="diag-cancel", variant="error", compact=True, disabled=True)
        yield Static("Runs the Plan tab's model and settings on ftplan's sample data (press r).", id="diag-status")
        yield ProgressBar(total=20, id="diag-progress", show_eta=True)  # determinate: no idle animation
        with Horizontal(id="diag-plots"):
            yield LossPlot(id="diag-loss")
            yield Static("", id="diag-heatmap")
        yield Static("", id="diag-findings")

    def on_mount(self) -> None:
        self.state = self.state or getattr(self.app, "state", None)

    def settings(self) -> DiagnoseSettings:
        assert self.state is not None
        steps = self.query_one("#diag-steps", Input)
        lr = self.query_one("#diag-lr", Input)
        for widget in (steps, lr):
            check = widget.validate(widget.value)
            if check is not None and not check.is_valid:
                raise ValueError(check.failure_descriptions[0])
        plan = self.state.plan.with_(gpus=1, zero=0, offload_optimizer=False)
        return DiagnoseSettings(model=self.state.model, steps=int(steps.value),
                                lr=float(lr.value) if lr.value else None, plan=plan)

    @on(Button.Pressed, "#diag-run")
    def start(self) -> None:
        if self.state is None or self.query_one("#diag-run", Button).disabled:
            return  # no plan yet, or a run is going (`r` reaches here even while the button is disabled)
        try:
            settings = self.settings()
        except ValueError as exc:
            message = worded(exc, "tui") if isinstance(exc, FtplanError) else str(exc)
            self.query_one("#diag-status", Static).update(f"[b red]{message}[/]")
            return
        self.records, self.report, self._cancel = [], None, False
        self._started = time.monotonic()
        self.query_one("#diag-run", Button).disabled = True
        self.query_one("#diag-cancel", Button).disabled = False
        self.query_one("#diag-progress", ProgressBar).update(total=settings.steps, progress=0)
        self.query_one("#diag-status", Static).update(f"running {settings.steps} steps of {settings.model} "
                                                      f"({settings.plan.method}) in a child process…")
        self.query_one("#diag-findings", Static).update("")
        self._run(settings)

    @on(Button.Pressed, "#diag-cancel")
    def cancel(self) -> None:
        self._cancel = True
        self.query_one("#diag-status", Static).update("cancelling: stopping the run…")

    @work(exclusive=True, thread=True, group="diagnose")
    def _run(self, settings: DiagnoseSettings) -> None:
        from diagnostics.runner import run_isolated

        worker = get_current_worker()  # cancelled when the app quits or the pane goes: the child must go too
        report = run_isolated(settings, on_step=lambda r: self.post_message(StepArrived(r)),
                              should_stop=lambda: self._cancel or worker.is_cancelled)
        self.post_message(RunFinished(report))

    @on(StepArrived)
    def _step(self, message: StepArrived) -> None:
        self.records.append(message.record)
        r = message.record
        elapsed = time.monotonic() - self._started
        self.query_one("#diag-progress", ProgressBar).update(progress=r.step)
        pairs = (f", margin {r.preference.margin:+.3g}, accuracy {r.preference.accuracy:.0%}"
                 if r.preference is not None else "")
        self.query_one("#diag-status", Static).update(
            f"step {r.step}: loss {r.loss:.4f}{pairs}, grad norm {r.grad_norm:.3g}, {r.step / elapsed:.2f} steps/s, "
            f"{r.tokens_per_s:,.0f} tokens/s")
        self.query_one("#diag-loss", LossPlot).show(self.records)
        self.query_one("#diag-heatmap", Static).update(norm_heatmap(self.records, max_columns=40))

    @on(RunFinished)
    def _finished(self, message: RunFinished) -> None:
        self.report = report = message.report
        self.query_one("#diag-run", Button).disabled = False
        self.query_one("#diag-cancel", Button).disabled = True
        if report.records:
            self.records = report.records
            self.query_one("#diag-loss", LossPlot).show(self.records)
            self.query_one("#diag-heatmap", Static).update(norm_heatmap(self.records, max_columns=40))
        self.query_one("#diag-status", Static).update(
            f"[b]{report.status}[/] after {len(report.records)} step(s)" + (f": {report.message}" if report.message
                                                                           else ""))
        lines = [f"[{_STYLE[f.severity]}]{f.severity}[/] {finding_line(f)}" for f in report.findings]
        lines += [f"advice: {a.title} ({change_settings(a, 'tui')}) — {a.reason}" for a in report.advice]
        self.query_one("#diag-findings", Static).update(
            "\n".join(lines) or "no findings: the gradients, loss and updates look healthy")
