"""`ftplan` with no arguments: the Textual app.

Four tabs over one plan: Plan (form + live breakdown), What fits, GPUs, Diagnose.
The app only displays planner and diagnostics results; it imports no torch (a test checks).

Keys work as in k9s and lazygit: the app's letter and digit keys are priority bindings, so a focused
table, list or dropdown never swallows them, and they stand aside only while a widget types the key
(a text field, an open dropdown's type-to-search, the modal screens). `ctrl+q` quits from anywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import Footer, Header, Input, TabbedContent, TabPane

from planner.errors import FtplanError
from planner.fields import worded
from planner.files import write_output
from planner.units import gib
from tui.plan_pane import PlanChanged, PlanPane, PlanState

if TYPE_CHECKING:  # the config readers load on `o` or `ftplan tui FILE`, not at start-up
    from planner.configs.common import RunConfig

NARROW = 110  # below this width the Plan tab's form narrows
WIDE = 150  # from this width the time, warnings and assumptions sit beside the breakdown

# Tab pane ids are prefixed: a bare "gpus" would also name the GPUs field of the Plan form.
TABS = {"plan": "tab-plan", "fits": "tab-fits", "gpus": "tab-gpus", "diagnose": "tab-diagnose"}
# Where focus lands on a tab (by a digit, or Esc from a text field): never a field that takes the app's keys.
HOME = {"plan": "#results", "fits": "#fits-table", "gpus": "#gpus-table", "diagnose": "#diag-run"}
# Actions bound to printable keys: they give way to a widget that types that key.
# The other tabs' panes (module, class): imported and mounted the first time their tab is shown. Their
# imports (plotext, NVML, the diagnostics report) and widgets were half of the start-up to the first plan.
PANES = {"fits": ("tui.fits_pane", "FitsPane"), "gpus": ("tui.gpus_pane", "GpusPane"),
         "diagnose": ("tui.diagnose_pane", "DiagnosePane")}
KEY_ACTIONS = {"tab", "edit_model", "pick_preset", "diagnose", "export_yaml", "save_json", "toggle_dark", "help",
               "quit_key", "leave_field", "compare", "open_config", "search"}


class FtplanCommands(Provider):
    """Command-palette actions: exports and the equivalent command line."""

    def _actions(self) -> list[tuple[str, object, str]]:
        app = self.app
        assert isinstance(app, FtplanApp)
        return [
            ("Open a LLaMA-Factory / TRL / axolotl config", app.action_open_config, "o"),
            ("Export the plan (into the opened config, or as LLaMA-Factory YAML)", app.action_export_yaml, "e"),
            ("Save the plan (and the last diagnostics report) as JSON", app.action_save_json, "s"),
            ("Copy the equivalent `ftplan estimate` command", app.action_copy_command, ""),
            ("Pick a model preset", app.action_pick_preset, "p"),
            ("Edit the model", app.action_edit_model, "m (or / outside What fits)"),
            ("Run diagnostics on the current plan", app.action_diagnose, "r"),
            ("Show what fits on every GPU", lambda: app.action_tab("fits"), "2"),
            ("Toggle dark / light theme", app.action_toggle_dark, "d"),
            ("Help for this tab", app.action_help, "?"),
        ]

    async def discover(self) -> Hits:
        """The palette lists ftplan's commands as soon as it opens, before anything is typed."""
        for text, action, key in self._actions():
            yield DiscoveryHit(text, action, help=f"key: {key}" if key else None)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for text, action, key in self._actions():
            score = matcher.match(text)
            if score > 0:
                yield Hit(score, matcher.highlight(text), action, help=f"key: {key}" if key else None)


class FtplanApp(App):
    TITLE = "ftplan"
    SUB_TITLE = "fine-tuning planner"
    CSS_PATH = Path(__file__).with_name("app.tcss")  # absolute: subclasses may live elsewhere
    COMMANDS = App.COMMANDS | {FtplanCommands}
    AUTO_FOCUS = "#results"  # the Plan tab's results: every app key works from there
    BINDINGS = [
        Binding("1", "tab('plan')", "plan", show=False, priority=True),
        Binding("2", "tab('fits')", "what fits", show=False, priority=True),
        Binding("3", "tab('gpus')", "GPUs", show=False, priority=True),
        Binding("4", "tab('diagnose')", "diagnose", show=False, priority=True),
        Binding("m", "edit_model", "model", priority=True),
        Binding("slash", "search", "search / model", show=False, priority=True),
        Binding("p", "pick_preset", "preset", priority=True),
        Binding("r", "diagnose", "diagnose", priority=True),
        Binding("o", "open_config", "open config", show=False, priority=True),  # in help and the palette
        Binding("e", "export_yaml", "export", priority=True),
        Binding("c", "compare", "compare methods", priority=True),
        Binding("s", "save_json", "save JSON", show=False, priority=True),
        Binding("d", "toggle_dark", "theme", show=False, priority=True),
        Binding("question_mark", "help", "help", priority=True),
        Binding("q", "quit_key", "quit", show=False, priority=True),
        Binding("escape", "leave_field", "leave field"),
        Binding("ctrl+q", "quit", "quit", priority=True),
    ]

    def __init__(self, config: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.state: PlanState | None = None
        self.opened: RunConfig | None = None  # the config the form came from: `e` writes the changes back into it
        self._config = config
        self._mounting: dict[str, tuple[Widget, Any]] = {}  # tab -> its pane and the pane's mount (see pane())
        self._diagnose_pending = False  # `r` before the Diagnose tab was ever shown

    def on_mount(self) -> None:
        if self._config:
            self.open_config(self._config)

    def compose(self) -> ComposeResult:
        yield Header()
        with TabbedContent(id="tabs", initial=TABS["plan"]):
            with TabPane("1 Plan", id=TABS["plan"]):
                yield PlanPane(id="plan-pane")
            # the other tabs stay empty until shown (see PANES): the Plan tab is what people see first
            yield TabPane("2 What fits", id=TABS["fits"])
            yield TabPane("3 GPUs", id=TABS["gpus"])
            yield TabPane("4 Diagnose", id=TABS["diagnose"])
        yield Footer(compact=True)  # 80 columns hold every key it shows

    def on_resize(self, event) -> None:
        # set here, not in compose: a pane built with its class drew the breakdown table with a different crop
        # depending on timing (the 80x24 snapshot differed in 2 runs of 6)
        pane = self.query_one("#plan-pane")
        pane.set_class(event.size.width < NARROW, "-narrow")
        pane.set_class(event.size.width >= WIDE, "-wide")

    async def pane(self, tab: str) -> Widget:
        """The tab's pane, imported and mounted the first time it is asked for."""
        if tab in self._mounting:  # a second asker (`r` right after `4`) waits for the same mount
            widget, mounted = self._mounting[tab]
            await mounted
            return widget
        import importlib

        module, name = PANES[tab]
        widget = getattr(importlib.import_module(module), name)(id=f"{tab}-pane")
        mounted = self.query_one(f"#{TABS[tab]}", TabPane).mount(widget)
        self._mounting[tab] = (widget, mounted)
        await mounted
        if tab == "diagnose" and self._diagnose_pending:  # before the focus: the run disables its Run button
            self._diagnose_pending = False
            widget.start()
        if self.active_tab == tab:  # the tab's home widget exists only now
            self.focus_home(tab)
        return widget

    # ------------------------------------------------------------ keys

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """A printable key's action gives way to a widget that types it, and to a modal screen's own keys."""
        if action not in KEY_ACTIONS:
            return True
        if isinstance(self.screen, ModalScreen):
            return False
        typing = self._typing()
        return typing if action == "leave_field" else not typing

    def _typing(self) -> bool:
        """Whether the focused widget takes printable keys (a text field, an open dropdown's search)."""
        focused = self.focused
        return focused is not None and focused.check_consume_key("x", "x")

    @property
    def active_tab(self) -> str:
        pane_id = self.query_one("#tabs", TabbedContent).active
        return next((tab for tab, pid in TABS.items() if pid == pane_id), "plan")

    def focus_home(self, tab: str) -> None:
        """Focus the tab's home widget (or nothing, so no hidden widget keeps the focus)."""
        homes = self.query(HOME[tab])
        home: Widget | None = homes.first() if homes else None
        if home is not None and not home.focusable:
            pane = self.query_one(f"#{TABS[tab]}")
            home = next((w for w in self.screen.focus_chain if pane in w.ancestors and not w.check_consume_key(
                "x", "x")), None)
        self.set_focus(home)

    # ------------------------------------------------------------ keeping the tabs in step

    @on(PlanChanged)
    def _plan_changed(self, message: PlanChanged) -> None:
        self.state = message.state
        # the panes mounted so far (a DOM query per plan was a tenth of a redraw); an unmounted one reads
        # app.state when it mounts
        diagnose, fits = self._mounting.get("diagnose"), self._mounting.get("fits")
        if diagnose is not None and diagnose[0].is_mounted:
            diagnose[0].show_plan(message.state)
        if fits is not None and fits[0].is_mounted and self.active_tab == "fits":
            fits[0].show(message.state)
        else:
            self._fits_stale = True

    @on(TabbedContent.TabActivated)
    async def _tab_shown(self, event: TabbedContent.TabActivated) -> None:
        tab = next((t for t, pid in TABS.items() if pid == event.pane.id), "plan")
        if tab == "plan":
            return
        mounted = bool(self.query(f"#{tab}-pane"))
        pane = await self.pane(tab)
        if tab == "gpus" and mounted:  # its refresh pauses while hidden: show fresh numbers at once
            pane.refresh_gpus()
        if tab == "fits" and self.state is not None and getattr(self, "_fits_stale", True):
            self._fits_stale = False
            self.call_after_refresh(pane.show, self.state)

    def on_fits_pane_apply(self, message) -> None:  # FitsPane.Apply (tui.fits_pane loads with its tab)
        changes = {"gpu": message.gpu, "gpu_memory": ""} | ({"method": message.method} if message.method else {}) \
            | ({"gpus": message.gpus} if message.gpus else {})
        self.action_tab("plan")
        self.query_one("#plan-pane", PlanPane).apply(changes)
        self.notify(f"planning {message.method or 'the plan'} on {message.gpu}", title="applied")

    # ------------------------------------------------------------ actions

    def action_tab(self, tab: str) -> None:
        # focus moves with the tab: a widget left focused on a hidden tab would pull the tabs back to it (and
        # hiding it passes the focus to a neighbour on that tab: let go first, as the new tab may still mount)
        if self.active_tab != tab:
            self.set_focus(None)
        self.query_one("#tabs", TabbedContent).active = TABS[tab]
        self.call_after_refresh(self.focus_home, tab)

    def action_edit_model(self) -> None:
        self.query_one("#tabs", TabbedContent).active = TABS["plan"]
        self.query_one("#model", Input).focus()

    def action_search(self) -> None:
        """`/` filters the What-fits table on its tab, and edits the model elsewhere."""
        if self.active_tab == "fits" and self.query("#fits-pane"):
            self.query_one("#fits-pane").focus_search()
            return
        self.action_edit_model()

    def action_leave_field(self) -> None:
        self.focus_home(self.active_tab)

    async def action_quit_key(self) -> None:
        await self.action_quit()

    def action_help(self) -> None:
        from tui.screens import HelpScreen

        self.push_screen(HelpScreen(self.active_tab))

    def action_toggle_dark(self) -> None:
        self.theme = "textual-light" if self.theme == "textual-dark" else "textual-dark"

    def action_pick_preset(self) -> None:
        from tui.screens import PresetPicker

        def chosen(name: str | None) -> None:
            if name:
                self.action_tab("plan")
                self.query_one("#model", Input).value = name

        self.push_screen(PresetPicker(), chosen)

    def action_compare(self) -> None:
        if self.state is not None:  # every method at the plan's settings (tui.compare_pane)
            from tui.compare_pane import CompareScreen

            self.push_screen(CompareScreen(self.state, samples=self.query_one("#plan-pane", PlanPane).run_length()[0]))

    def action_diagnose(self) -> None:
        self.action_tab("diagnose")
        mounted = self._mounting.get("diagnose")
        if mounted is not None and mounted[0].is_mounted:
            mounted[0].start()
        else:  # the tab's first showing mounts the pane, then starts the run (pane())
            self._diagnose_pending = True

    def action_copy_command(self) -> None:
        if self.state is None:
            return
        command = estimate_command(self.state)
        self.copy_to_clipboard(command)
        self.notify(command, title="copied")

    def action_open_config(self) -> None:
        from tui.screens import ExportScreen

        self.push_screen(ExportScreen("open a LLaMA-Factory, TRL or axolotl config", "train.yaml", action="Open"),
                         self.open_config)

    def open_config(self, path: str | None) -> RunConfig | None:
        """Read a training config into the Plan form; `e` then writes the form's changes back into a copy."""
        if not path:
            return None
        from planner.configs import read_run_config
        from tui.config_io import form_values

        try:
            run = read_run_config(path)
        except FtplanError as exc:
            self.notify(f"not opened: {worded(exc, 'tui')}", title="not opened", severity="error")
            return None
        self.opened = run
        self.action_tab("plan")
        self.query_one("#plan-pane", PlanPane).open_config(run.model, form_values(run))
        self.sub_title = f"{Path(run.path).name} ({run.format})"
        self.notify(f"{run.path}: {run.model}, {run.plan.method}; e writes your changes into a copy",
                    title="opened")
        return run

    def action_export_yaml(self) -> None:
        if self.state is None:
            return
        from tui.screens import ExportScreen

        if self.opened is not None:
            source = Path(self.opened.path)
            self.push_screen(ExportScreen(f"write {source.name} with the form's changes (your other keys kept)",
                                          str(source.with_name(f"{source.stem}-ftplan{source.suffix}"))),
                             self.export_back)
            return
        self.push_screen(ExportScreen("write the plan as a LLaMA-Factory config", "train.yaml"), self.export_yaml)

    def export_back(self, path: str | None) -> Path | None:
        if not path or self.state is None or self.opened is None:
            return None
        from tui.config_io import export_back

        try:
            written, skipped = export_back(self.opened, self.state.model, self.state.plan, path)
        except FtplanError as exc:
            self._write_failed(exc)
            return None
        note = f"; no {self.opened.format} key for {', '.join(skipped)}: set it yourself" if skipped else ""
        self.notify(f"wrote {written}{note}", title="exported", severity="warning" if skipped else "information")
        return written

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
        from tui.screens import ExportScreen

        self.push_screen(ExportScreen("save the plan (and the last report) as JSON", "ftplan-plan.json"),
                         self.save_json)

    def save_json(self, path: str | None) -> Path | None:
        if not path or self.state is None:
            return None
        from diagnostics.report import write_report

        diagnosed = self.query("#diagnose-pane")
        report = diagnosed.first().report if diagnosed else None
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


def run(config: str | None = None) -> None:
    FtplanApp(config=config).run()
