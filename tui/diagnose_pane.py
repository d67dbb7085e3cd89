"""The Diagnose tab: a short instrumented run of the current plan, drawn live.

The run has its own micro-batch, accumulation, sequence and steps (blank: the plan's on a GPU, a small run on
the CPU, tui.diagnose_run), runs as one process, and is refused with a reason when the CPU would take more than a
few minutes. The run happens in a child process (diagnostics.runner), driven from a thread worker;
steps arrive as messages. Cancel, and quitting the app (which cancels the worker), stop
the child within about two seconds (diagnostics.runner: the step's end, else SIGTERM,
then SIGKILL) and keep the partial report.
"""

from __future__ import annotations

import time

from rich.markup import escape
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.validation import Integer, Number
from textual.widgets import Button, DataTable, Input, Label, ProgressBar, Static
from textual.worker import get_current_worker

from diagnostics.report import DiagnoseSettings, DiagnosticReport, StepRecord
from planner.errors import FtplanError
from planner.fields import worded
from tui import diagnose_run
from tui.diagnose_run import config_only, cpu_refusal, not_used, run_defaults, run_plan, weights_banner
from tui.diagnose_view import advice_rows, memory_line
from tui.plan_pane import PlanState
from tui.plot_widgets import LossPlot
from tui.plots import norm_heatmap
from tui.views import duration, finding_line

_STYLE = {"error": "b red", "warning": "yellow", "info": "dim"}


class StepArrived(Message):
    def __init__(self, record: StepRecord) -> None:
        super().__init__()
        self.record = record


class RunFinished(Message):
    def __init__(self, report: DiagnosticReport) -> None:
        super().__init__()
        self.report = report


# the run's size fields: (field id, label, Plan field); blank takes diagnose_run.run_defaults
SIZES = (("diag-batch", "batch", "batch_size"), ("diag-accum", "accum", "grad_accum"), ("diag-seq", "seq", "seq_len"))
NAMES = {"batch": "micro-batch", "accum": "gradient accumulation", "seq": "sequence length", "steps": "steps"}


def _positive(label: str, most: int) -> Integer:
    return Integer(minimum=1, maximum=most,
                   failure_description=f"{NAMES[label]} ({label}): a whole number from 1 to {most:,}")


class DiagnosePane(VerticalScroll):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.can_focus = False  # no tab stop of its own: it scrolls (by mouse) to show the advice and memory below
        self.state: PlanState | None = None
        self.records: list[StepRecord] = []
        self.report: DiagnosticReport | None = None
        self.on_gpu = False  # until NVML says otherwise: CPU-sized defaults are the safe side
        self._cancel = False
        self._running = False
        self._started = 0.0
        self._step_times: list[float] = []  # when each step arrived (monotonic): the ETA counts down between them
        self._line = ""

    def compose(self) -> ComposeResult:
        with Horizontal(id="diag-controls", classes="diag-row"):
            for widget_id, label, _ in SIZES:
                yield Label(label, classes="field-label")
                yield Input("", id=widget_id, compact=True, type="integer", valid_empty=True,
                            validators=[_positive(label, 1_000_000)])
            yield Label("steps", classes="field-label")
            yield Input(str(diagnose_run.STEPS), id="diag-steps", compact=True, type="integer",
                        validators=[_positive("steps", 500)])
        with Horizontal(classes="diag-row"):
            yield Label("lr", classes="field-label")
            yield Input("", id="diag-lr", compact=True, placeholder="auto",
                        validators=[Number(minimum=1e-9, failure_description="lr: a positive learning rate")],
                        valid_empty=True)
            yield Button("Run", id="diag-run", variant="primary", compact=True)
            yield Button("Cancel", id="diag-cancel", variant="error", compact=True, disabled=True)
        yield Static("", id="diag-scope")
        yield Static("", id="diag-banner")
        yield Static("Runs the Plan tab's model and method on ftplan's sample data (press r).", id="diag-status")
        yield ProgressBar(total=20, id="diag-progress", show_eta=False)  # the status line has its own ETA
        with Horizontal(id="diag-plots"):
            yield LossPlot(id="diag-loss")
            yield Static("", id="diag-heatmap")
        yield Static("", id="diag-findings")
        advice = DataTable(id="diag-advice", zebra_stripes=True, cursor_type="none")
        advice.can_focus = False
        yield advice
        yield Static("", id="diag-memory")

    def on_mount(self) -> None:
        self.state = self.state or getattr(self.app, "state", None)
        self.query_one("#diag-advice", DataTable).add_columns("setting", "now", "suggest", "why")
        self.query_one("#diag-advice", DataTable).display = False
        self.set_interval(1.0, self._tick)
        self.show_plan()
        self._probe()

    @work(exclusive=True, thread=True, group="diagnose-device")
    def _probe(self) -> None:
        """Whether the child will find a GPU (it runs on CUDA when one is visible); NVML, not torch."""
        from diagnostics.nvml import probe

        result = probe()
        on_gpu = result.status == "ok" and bool(result.visible)
        self.app.call_from_thread(self._device_known, on_gpu)

    def _device_known(self, on_gpu: bool) -> None:
        self.on_gpu = on_gpu
        self.show_plan()

    def show_plan(self, state: PlanState | None = None) -> None:
        """The run's defaults, the settings it drops and the weights it runs on, for the plan now on the form."""
        self.state = state or self.state
        if self.state is None:
            return
        plan = self.state.plan
        defaults = run_defaults(plan, self.on_gpu)
        where = "the plan's" if self.on_gpu else "CPU"
        for widget_id, _, field in SIZES:
            self.query_one(f"#{widget_id}", Input).placeholder = f"{defaults[field]} ({where})"
        scope = not_used(plan)
        self.query_one("#diag-scope", Static).update(f"[dim]{scope}[/]" if scope else "")
        self._banner(weights_banner(True, "byte") if config_only(self.state.spec.source) else None)

    def _banner(self, text: str | None) -> None:
        banner = self.query_one("#diag-banner", Static)
        banner.update(f"[b $warning]{text}[/]" if text else "")
        banner.display = bool(text)

    def settings(self) -> DiagnoseSettings:
        assert self.state is not None
        values: dict[str, int] = {}
        defaults = run_defaults(self.state.plan, self.on_gpu)
        for widget_id, _, field in (*SIZES, ("diag-steps", "steps", "steps"), ("diag-lr", "lr", "lr")):
            widget = self.query_one(f"#{widget_id}", Input)
            check = widget.validate(widget.value)
            if check is not None and not check.is_valid:
                raise ValueError(check.failure_descriptions[0])
            if field in defaults:
                values[field] = int(widget.value) if widget.value.strip() else defaults[field]
        steps, lr = self.query_one("#diag-steps", Input).value, self.query_one("#diag-lr", Input).value
        return DiagnoseSettings(model=self.state.model, steps=int(steps), lr=float(lr) if lr.strip() else None,
                                plan=run_plan(self.state.plan, values))

    @on(Button.Pressed, "#diag-run")
    def start(self) -> None:
        if self.state is None or self.query_one("#diag-run", Button).disabled:
            return  # no plan yet, or a run is going (`r` reaches here even while the button is disabled)
        status = self.query_one("#diag-status", Static)
        try:
            settings = self.settings()
            refusal = None if self.on_gpu else cpu_refusal(self.state.spec, settings.plan, settings.steps)
        except ValueError as exc:
            message = worded(exc, "tui") if isinstance(exc, FtplanError) else str(exc)
            status.update(f"[b red]{message}[/]")
            return
        if refusal is not None:
            status.update(f"[b red]{refusal}[/]")
            return
        self.records, self.report, self._cancel, self._running = [], None, False, True
        self._started, self._step_times = time.monotonic(), []
        self.query_one("#diag-run", Button).disabled = True
        self.query_one("#diag-cancel", Button).disabled = False
        self.query_one("#diag-progress", ProgressBar).update(total=settings.steps, progress=0)
        p = settings.plan
        self._line = (f"running {settings.steps} steps of {settings.model} ({p.method}, micro-batch {p.batch_size} "
                      f"x {p.grad_accum}, sequence {p.seq_len}) in a child process")
        status.update(self._line + ": loading the model…")
        for widget_id in ("#diag-findings", "#diag-memory"):
            self.query_one(widget_id, Static).update("")
        self.query_one("#diag-advice", DataTable).display = False
        self._run(settings)

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

    def eta(self, now: float | None = None) -> float | None:
        """Seconds left: the mean step time so far times the steps left, less the time into the current step."""
        if len(self._step_times) < 2 or not self.records:
            return None
        now = time.monotonic() if now is None else now
        done, total = self.records[-1].step, self.query_one("#diag-progress", ProgressBar).total or 0
        per_step = (self._step_times[-1] - self._step_times[0]) / (len(self._step_times) - 1)
        return max(0.0, (total - done) * per_step - (now - self._step_times[-1]))

    def _tick(self) -> None:
        """The ETA counts down every second, between steps too."""
        if self._running and self.records:
            left = self.eta()
            self.query_one("#diag-status", Static).update(
                self._line + (f" · about {duration(left)} left" if left is not None else ""))

    @on(StepArrived)
    def _step(self, message: StepArrived) -> None:
        if not self._running:
            return  # a step that arrives after the report changes nothing the report does not already show
        self.records.append(message.record)
        self._step_times.append(time.monotonic())
        r = message.record
        elapsed = time.monotonic() - self._started
        self.query_one("#diag-progress", ProgressBar).update(progress=r.step)
        pairs = (f", margin {r.preference.margin:+.3g}, accuracy {r.preference.accuracy:.0%}"
                 if r.preference is not None else "")
        self._line = (f"step {r.step}: loss {r.loss:.4f}{pairs}, grad norm {r.grad_norm:.3g}, "
                      f"{r.step / elapsed:.2f} steps/s, {r.tokens_per_s:,.0f} tokens/s")
        self._tick()
        self.query_one("#diag-loss", LossPlot).show(self.records)
        self.query_one("#diag-heatmap", Static).update(norm_heatmap(self.records, max_columns=40))

    @on(Button.Pressed, "#diag-cancel")
    def _cancel_pressed(self) -> None:
        self.cancel()

    @on(RunFinished)
    def _finished(self, message: RunFinished) -> None:
        self.report = report = message.report
        self._running = False
        run, cancel = self.query_one("#diag-run", Button), self.query_one("#diag-cancel", Button)
        run.disabled = False
        if cancel.has_focus:  # a disabled Cancel would pass the focus on to a text field, which types `r`
            run.focus()
        cancel.disabled = True
        if report.records:
            self.records = report.records
            self.query_one("#diag-loss", LossPlot).show(self.records)
            self.query_one("#diag-heatmap", Static).update(norm_heatmap(self.records, max_columns=40))
        self.query_one("#diag-status", Static).update(
            f"[b]{report.status}[/] after {len(report.records)} step(s)" + (f": {report.message}" if report.message
                                                                           else ""))
        env = report.environment
        if env:  # what the run really used replaces the guess from the model's source
            self._banner(weights_banner(bool(env.get("random_init")), env.get("tokenizer")))
        lines = [f"[{_STYLE[f.severity]}]{f.severity}[/] {escape(finding_line(f))}" for f in report.findings]
        self.query_one("#diag-findings", Static).update(
            "\n".join(lines) or "no findings: the gradients, loss and updates look healthy")
        table = self.query_one("#diag-advice", DataTable)
        table.clear()
        for row in advice_rows(report, "tui"):
            table.add_row(*row)
        table.display = bool(report.advice)
        self.query_one("#diag-memory", Static).update(memory_line(report) or "")
