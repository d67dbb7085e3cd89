"""`ftplan` with no arguments: the Textual app.

Four tabs over one plan: Plan (form + live breakdown), What fits, GPUs, Diagnose.
The app only displays planner and diagnostics results; it imports no torch (a test checks).
"""

from __future__ import annotations

from pathlib import Path

from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.command import Hit, Hits, Provider
from textual.lazy import Lazy
from textual.widgets import Footer, Header, Input, TabbedContent, TabPane

from planner.errors import FtplanError
from planner.files import write_output
from planner.units import gib
from tui.diagnose_pane import DiagnosePane
from tui.fits_pane import FitsPane
from tui.gpus_pane import GpusPane
from tui.plan_pane import PlanChanged, PlanPane, PlanState
from tui.screens import ExportScreen, HelpScreen, PresetPicker

NARROW = 110  # below this width the Plan tab stacks its form above the results


class FtplanCommands(Provider):
    """Command-palette actions: exports and the equivalent command line."""

    async def search(self, query: str) -> Hits:
        app = self.app
        assert isinstance(app, FtplanApp)
        actions = [
            ("Export the plan as LLaMA-Factory YAML", app.action_export_yaml),
            ("Save the plan (and the last diagnostics report) as JSON", app.action_save_json),
            ("Copy the equivalent `ftplan estimate` command", app.action_copy_command),
            ("Pick a model preset", app.action_pick_preset),
            ("Run diagnostics on the current plan", app.action_diagnose),
            ("Toggle dark / light theme", app.action_toggle_dark),
        ]
        matcher = self.matcher(query)
        for text, action in actions:
            score = matcher.match(text)
            if score > 0:
                yield Hit(score, matcher.highlight(text), action, help=None)


class FtplanApp(App):
    TITLE = "ftplan"
    SUB_TITLE = "fine-tuning planner"
    CSS_PATH = Path(__file__).with_name("app.tcss")  # absolute: subclasses may live elsewhere
    COMMANDS = App.COMMANDS | {FtplanCommands}
    BINDINGS = [
        Binding("1", "tab('plan')", "plan", show=False),
        Binding("2", "tab('fits')", "what fits", show=False),
        Binding("3", "tab('gpus')", "GPUs", show=False),
        Binding("4", "tab('diagnose')", "diagnose", show=False),
        Binding("p", "pick_preset", "preset"),
        Binding("r", "diagnose", "diagnose"),
        Binding("e", "export_yaml", "export YAML"),
        Binding("s", "save_json", "save JSON"),
        Binding("d", "toggle_dark", "theme"),
        Binding("question_mark", "help", "help"),
        Binding("q", "quit", "quit"),
    ]

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.state: PlanState | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        with TabbedContent(id="tabs", initial="plan"):
            with TabPane("Plan", id="plan"):
                yield PlanPane(id="plan-pane")
            # the other tabs mount after the first frame: the Plan tab is what people see first
            with TabPane("What fits", id="fits"):
                yield Lazy(FitsPane(id="fits-pane"))
            with TabPane("GPUs", id="gpus"):
                yield Lazy(GpusPane(id="gpus-pane"))
            with TabPane("Diagnose", id="diagnose"):
                yield Lazy(DiagnosePane(id="diagnose-pane"))
        yield Footer()

    def on_resize(self, event) -> None:
        self.query_one("#plan-pane").set_class(event.size.width < NARROW, "-narrow")

    # ------------------------------------------------------------ keeping the tabs in step

    @on(PlanChanged)
    def _plan_changed(self, message: PlanChanged) -> None:
        self.state = message.state
        for pane in self.query(DiagnosePane):  # lazily mounted: may not exist yet (it reads app.state then)
            pane.state = message.state
        fits = self.query(FitsPane)
        if fits and self.query_one("#tabs", TabbedContent).active == "fits":
            fits.first().show(message.state)
        else:
            self._fits_stale = True

    @on(TabbedContent.TabActivated)
    def _tab_shown(self, event: TabbedContent.TabActivated) -> None:
        if event.pane.id == "gpus":  # its refresh pauses while hidden: show fresh numbers at once
            for pane in self.query(GpusPane):
                pane.refresh_gpus()
        if event.pane.id == "fits" and self.state is not None and getattr(self, "_fits_stale", True):
            self._fits_stale = False
            self.call_after_refresh(lambda: [pane.show(self.state) for pane in self.query(FitsPane)])

    # ------------------------------------------------------------ actions

    def action_tab(self, tab: str) -> None:
        self.query_one("#tabs", TabbedContent).active = tab

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_toggle_dark(self) -> None:
        self.theme = "textual-light" if self.theme == "textual-dark" else "textual-dark"

    def action_pick_preset(self) -> None:
        def chosen(name: str | None) -> None:
            if name:
                self.action_tab("plan")
                self.query_one("#model", Input).value = name

        self.push_screen(PresetPicker(), chosen)

    def action_diagnose(self) -> None:
        self.action_tab("diagnose")
        self.query_one("#diagnose-pane", DiagnosePane).start()

    def action_copy_command(self) -> None:
        if self.state is None:
            return
        command = estimate_command(self.state)
        self.copy_to_clipboard(command)
        self.notify(command, title="copied")

    def action_export_yaml(self) -> None:
        if self.state is None:
            return
        self.push_screen(ExportScreen("write the plan as a LLaMA-Factory config", "train.yaml"), self.export_yaml)

    def export_yaml(self, path: str | None) -> Path | None:
        if not path or self.state is None:
            return None
        from planner.configs import write_export
        from planner.files import model_input
        from planner.target import GpuTarget

        target = self.state.target
        gpu = (target.gpu.name if isinstance(target, GpuTarget) and target.source == "catalog" and target.gpu
               else None)
        # the plan as estimated (the service sets its GPU count from the target), with the same writer as
        # `ftplan export`; the TUI never overwrites: a taken name gets -1, -2, ...
        try:
            exported = write_export("llamafactory", self.state.model, self.state.result.plan, path,
                                    spec=self.state.spec, gpu=gpu, existing="rename",
                                    inputs={"the model's config.json": model_input(self.state.model)})
        except FtplanError as exc:
            self._write_failed(exc)
            return None
        also = f" and {exported.deepspeed.name}" if exported.deepspeed else ""
        self.notify(f"wrote {exported.path}{also}; launch: {exported.launch}", title="exported")
        return exported.path

    def action_save_json(self) -> None:
        if self.state is None:
            return
        self.push_screen(ExportScreen("save the plan (and the last report) as JSON", "ftplan-plan.json"),
                         self.save_json)

    def save_json(self, path: str | None) -> Path | None:
        if not path or self.state is None:
            return None
        from diagnostics.report import write_report

        report = self.query_one("#diagnose-pane", DiagnosePane).report
        note = ""
        try:
            target = write_output(path, self.state.result.model_dump_json(indent=2) + "\n", existing="rename")
            if report is not None:
                report_path = write_report(report, target.with_name(target.stem + "-report.json"), existing="rename")
                note = f" and {report_path.name}"
        except FtplanError as exc:
            self._write_failed(exc)
            return None
        self.notify(f"wrote {target}{note}", title="saved")
        return target

    def _write_failed(self, exc: FtplanError) -> None:
        self.notify(f"not written: {exc}", title="not written", severity="error")


def estimate_command(state: PlanState) -> str:
    """The `ftplan estimate` command line that plans the same run (generated from the field table)."""
    import shlex

    from planner.fields import cli_value, plan_flags
    from planner.target import GpuTarget

    parts = [f"ftplan estimate --model {shlex.quote(state.model)}", *plan_flags(state.plan)]
    target = state.target
    if isinstance(target, GpuTarget):
        if target.source == "given":
            parts.append(cli_value("gpu_memory", f"{gib(target.capacity):.2f}GiB"))
        else:
            parts.append(cli_value("gpu", target.gpu.name if target.source == "catalog" and target.gpu else "auto"))
    if target.cuda_context_source == "given":
        parts.append(cli_value("cuda_context", f"{target.cuda_context}B"))
    return " ".join(parts)


def run() -> None:
    FtplanApp().run()
