"""The Plan tab: a model, a settings form, and the live memory breakdown with its suggestions.

Every change re-runs the planner (well under a millisecond) and redraws; a model
change loads its config in a worker (a hub id may need the network). An invalid field
is marked with its reason and the last good plan stays on screen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Grid, Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.suggester import SuggestFromList
from textual.timer import Timer
from textual.validation import Integer
from textual.widgets import DataTable, Input, Label, OptionList, Select, Static
from textual.widgets.option_list import Option

from planner import fields
from planner import plan as plan_module
from planner.errors import FtplanError
from planner.fields import Setting, worded
from planner.hardware import catalog
from planner.plan import Plan
from planner.result import Estimate
from planner.service import plan_run
from planner.spec import ModelSpec, load_spec, preset_index
from planner.target import Machine, resolve_target
from planner.units import fmt_gib
from tui.views import breakdown_rows
from tui.widgets import LABELS, MemoryBar, SpecSummary

AUTO = "auto (measured)"
# an error about a setting the form does not show is marked on the one that decides it
SHOWN_ON = {"offload_optimizer": "zero", "freeze_trainable_layers": "method", "optimizer_in_backward": "grad_accum"}
MODEL_DEBOUNCE_S = 0.4


@dataclass
class PlanState:
    model: str  # as typed: a preset, hub id or path (what diagnose and export need)
    spec: ModelSpec
    plan: Plan
    target: Machine
    result: Estimate


class PlanChanged(Message):
    def __init__(self, state: PlanState) -> None:
        super().__init__()
        self.state = state


def form_settings() -> list[Setting]:
    """The settings the form edits, in the field table's order."""
    return [s for s in fields.FIELDS if s.widget is not None and s.owner in ("plan", "target")]


STAGE_DEFAULT = "default"  # a switch left to the stage's trainer (a Plan field that may be None)


def _tristate(setting: Setting) -> bool:
    return setting.owner == "plan" and plan_module.Plan.model_fields[setting.name].annotation == bool | None


class PlanPane(Horizontal):
    """Form on the left, results on the right (stacked on narrow terminals, see app.tcss)."""

    DEFAULTS: dict[str, Any] = {"model": "7b", "gpu": "RTX-4090", "method": "lora"}

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.state: PlanState | None = None
        self.spec: ModelSpec | None = None
        self.model_name = ""
        self._applying = False
        self._model_timer: Timer | None = None

    def compose(self) -> ComposeResult:
        plan = plan_module.Plan(method=self.DEFAULTS["method"])
        presets = sorted(preset_index().presets) + sorted(preset_index().aliases)
        yield Static("loading the model…", id="summary")  # docked on top: the answer stays in view
        with VerticalScroll(id="form"):
            yield Label("model (preset, hub id or local path)", classes="field-label")
            yield Input(self.DEFAULTS["model"], id="model", suggester=SuggestFromList(presets, case_sensitive=False))
            yield SpecSummary(id="spec")
            with Grid(id="fields"):
                for setting in form_settings():
                    yield Label(setting.label, classes="field-label")
                    yield self._widget(setting, plan)
            yield Static("", id="form-error")
        with Vertical(id="results"):
            yield MemoryBar(id="bar")
            yield DataTable(id="breakdown", zebra_stripes=True, cursor_type="none")
            yield Label("what to change (enter applies it)", id="suggestions-title")
            yield OptionList(id="suggestions")

    def _widget(self, setting: Setting, plan: Plan):
        """The form widget of one setting, from its kind in the field table."""
        name = setting.name
        if name == "gpu":
            return Select([(g.name, g.name) for g in catalog()] + [(AUTO, AUTO)], value=self.DEFAULTS["gpu"],
                          allow_blank=False, id=name, compact=True)
        if setting.widget == "bytes":
            return Input("", id=name, compact=True, placeholder="e.g. 24GiB (overrides GPU)")
        value = getattr(plan, name)
        if setting.widget == "switch":
            options = [("off", False), ("on", True)]
            if _tristate(setting):  # unset: the stage's trainer decides
                options.insert(0, ("stage default", STAGE_DEFAULT))
            return Select(options, value=STAGE_DEFAULT if value is None else value, allow_blank=False, id=name,
                          compact=True)
        if setting.widget == "select":
            options = fields.choices(name)
            return Select([(str(v), v) for v in options], value=value if value is not None else options[0],
                          allow_blank=False, id=name, compact=True)
        if name == "gpus":  # blank: one GPU, or with the measured GPU every visible one
            return Input("", id=name, compact=True, type="integer", placeholder="1 / all (auto)",
                         validators=[Integer(minimum=1, failure_description=f"{setting.label} must be at least 1")])
        if setting.widget == "int":
            return Input(str(value), id=name, compact=True, type="integer",
                         validators=[Integer(minimum=1, failure_description=f"{setting.label} must be at least 1")])
        return Input(str(value), id=name, compact=True)

    def on_mount(self) -> None:
        table = self.query_one("#breakdown", DataTable)
        table.add_columns("GiB", "forward", "backward", "optimizer")
        self.load_model(self.query_one("#model", Input).value)

    # ------------------------------------------------------------ reading the form

    def _value(self, field: str) -> Any:
        widget = self.query_one(f"#{field}")
        return widget.value

    def form_plan(self) -> Plan:
        """The Plan the form describes; raises FtplanError carrying the field that is wrong."""
        values: dict[str, Any] = {}
        for setting in form_settings():
            if setting.owner != "plan":
                continue
            widget = self.query_one(f"#{setting.name}")
            if isinstance(widget, Input):
                if setting.name == "gpus" and not widget.value.strip():
                    continue
                check = widget.validate(widget.value)
                if check is not None and not check.is_valid:
                    raise FtplanError(check.failure_descriptions[0], field=setting.name)
                values[setting.name] = int(widget.value) if setting.widget == "int" else widget.value
            elif widget.value != STAGE_DEFAULT:
                values[setting.name] = widget.value
        values["lora_target"] = values.get("lora_target") or "all"
        if values.get("method") != "qlora":
            values["quant_bits"] = None
        return plan_module.Plan.build(**values)

    def form_gpus(self) -> int | None:
        text = self.query_one("#gpus", Input).value.strip()
        return int(text) if text.isdigit() else None

    def form_target(self, gpus: int | None) -> Machine:
        memory = self.query_one("#gpu_memory", Input).value.strip()
        if memory:
            return resolve_target(gpu_memory=memory if not memory.replace(".", "", 1).isdigit() else f"{memory}GiB",
                                  gpus=gpus)
        gpu = self._value("gpu")
        return resolve_target("auto" if gpu == AUTO else gpu, gpus=gpus)

    # ------------------------------------------------------------ reacting

    @on(Input.Changed)
    @on(Select.Changed)
    def _field_changed(self, event: Message) -> None:
        if self._applying:
            return
        widget = getattr(event, "input", None) or getattr(event, "select", None)
        if widget is not None and widget.id == "model":
            # Each keystroke would read a config (or ask the hub): wait until typing pauses.
            if self._model_timer is not None:
                self._model_timer.stop()
            self._model_timer = self.set_timer(MODEL_DEBOUNCE_S, lambda: self.load_model(event.value))
            return
        self.recompute()

    @work(exclusive=True, thread=True, group="model")
    def load_model(self, name: str) -> None:
        try:
            spec = load_spec(name.strip())
        except FtplanError as exc:
            self.app.call_from_thread(self._model_failed, str(exc))
            return
        except Exception as exc:  # a half-typed name must never take the app down
            self.app.call_from_thread(self._model_failed, f"could not read {name.strip()!r}: {exc}")
            return
        self.app.call_from_thread(self._model_loaded, spec, name.strip())

    def _model_failed(self, message: str) -> None:
        self.query_one("#model", Input).border_subtitle = "not found"
        self.query_one("#spec", SpecSummary).show(None, message.removeprefix("--model: "))

    def _model_loaded(self, spec: ModelSpec, name: str) -> None:
        self.query_one("#model", Input).border_subtitle = ""
        self.spec, self.model_name = spec, name
        self.recompute()

    def recompute(self) -> None:
        """Form -> Plan -> planner -> screen. An invalid form keeps the last good numbers."""
        if self.spec is None:
            return
        for widget in [*self.query(Input), *self.query(Select)]:
            if widget.id != "model":
                widget.border_subtitle, widget.tooltip = "", None
                widget.remove_class("-plan-error")
        error = self.query_one("#form-error", Static)
        try:
            plan = self.form_plan()
            target = self.form_target(self.form_gpus())
            result = plan_run(self.spec, plan, target, search_batch=True, vocabulary="tui")
        except FtplanError as exc:
            message = worded(exc, "tui")
            field = exc.field if exc.field and self.query(f"#{exc.field}") else SHOWN_ON.get(exc.field or "")
            if field is not None and self.query(f"#{field}"):  # mark the field itself, with the reason on hover
                widget = self.query_one(f"#{field}")
                widget.border_subtitle, widget.tooltip = "invalid", message
                widget.add_class("-plan-error")
            error.update(f"[b red]{message}[/] — showing the last valid plan")
            return
        error.update("")
        self.state = PlanState(self.model_name, self.spec, plan, target, result)
        self._show(result)
        self.post_message(PlanChanged(self.state))

    def _show(self, result: Estimate) -> None:
        self.query_one("#spec", SpecSummary).show(result)
        self.query_one("#bar", MemoryBar).show(result)
        table = self.query_one("#breakdown", DataTable)
        mem = result.memory
        phases = [p.name for p in mem.phases]
        if [str(c.label) for c in table.columns.values()][1:] != phases:  # GRPO adds a generation phase
            table.clear(columns=True)
            table.add_columns("GiB", *phases)
        table.clear()
        for label, cells in breakdown_rows(mem, LABELS):
            table.add_row(label, *cells)
        summary = self.query_one("#summary", Static)
        head = f"{result.model.name} · {result.plan.method} · total [b]{fmt_gib(mem.total)}[/] per GPU " \
               f"({mem.peak_phase} peak)"
        fit = result.fit
        if fit is None:
            summary.update(head)
        elif fit.fits:
            summary.update(f"{head} · [b $success]fits {fit.gpu}[/], {fmt_gib(fit.headroom)} headroom · "
                           f"largest micro-batch {fit.max_batch_label}")
        else:
            summary.update(f"{head} · [b $error]does not fit {fit.gpu}[/] ({fmt_gib(fit.capacity)}): short by "
                           f"{fmt_gib(-fit.headroom)}")
        options = self.query_one("#suggestions", OptionList)
        options.clear_options()
        for i, s in enumerate(result.suggestions):
            mark = "fits" if s.fits else "still too big"
            options.add_option(Option(f"{s.title} → {fmt_gib(s.new_total)} ({mark})", id=str(i)))
        self.query_one("#suggestions-title").display = bool(result.suggestions)
        options.display = bool(result.suggestions)

    # ------------------------------------------------------------ applying a suggestion

    @on(OptionList.OptionSelected, "#suggestions")
    def _apply_selected(self, event: OptionList.OptionSelected) -> None:
        if self.state is not None:
            self.apply(self.state.result.suggestions[int(event.option.id)].changes)

    def apply(self, changes: dict[str, Any]) -> None:
        """Put a suggestion's changes into the form, then recompute once."""
        self._applying = True
        try:
            for field, value in changes.items():
                widget = self.query_one(f"#{field}")
                widget.value = str(value) if isinstance(widget, Input) else STAGE_DEFAULT if value is None else value
        finally:
            self.call_after_refresh(self._finish_apply)

    def _finish_apply(self) -> None:
        self._applying = False
        self.recompute()
