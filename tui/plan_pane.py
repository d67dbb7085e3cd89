"""The Plan tab: a model, a settings form, and everything the planner says about the plan.

The verdict sits on top with a badge for the warnings; below it the memory bar and breakdown, what to
change (each suggestion's reason, new total and flags), then the time to train, the warnings and the
assumptions (beside the breakdown on wide terminals). Every change re-runs the planner (well under a
millisecond) and redraws; a model change loads its config in a worker (a hub id may need the network).
An invalid field is marked with its reason and the last good plan stays on screen.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from time import sleep
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Grid, Horizontal, Vertical, VerticalScroll
from textual.markup import escape
from textual.message import Message
from textual.suggester import Suggester, SuggestFromList
from textual.timer import Timer
from textual.validation import Integer, Number
from textual.widgets import Collapsible, Input, Label, OptionList, Static
from textual.widgets.option_list import Option
from textual.worker import get_current_worker

from planner import fields
from planner import plan as plan_module
from planner.errors import FtplanError
from planner.fields import Setting, worded
from planner.hardware import catalog
from planner.plan import Plan
from planner.result import Estimate
from planner.service import plan_run
from planner.spec import ModelSpec, load_spec, preset_index, resolves_offline
from planner.target import Machine, resolve_target
from planner.units import fmt_gib, gib_unit
from tui.choice import Choice
from tui.views import breakdown_rows, path_lines, suggestion_text, time_line
from tui.widgets import LABELS, KeyOptionList, KeyTable, MemoryBar, SpecSummary

AUTO = "auto (measured)"
# an error about a setting the form does not show is marked on the one that decides it
SHOWN_ON = {"offload_optimizer": "zero", "freeze_trainable_layers": "method", "optimizer_in_backward": "grad_accum"}
MODEL_DEBOUNCE_S = 0.4
# The suggestions wait this long after a change: a burst of keystrokes ("2048") advises once, and the
# search (a few hundred plans, holding the GIL) does not slow the redraws of the keystrokes in between.
ADVICE_PAUSE_S = 0.15
_SEVERITY = {"error": "$error", "warning": "$warning", "info": "$primary"}


@dataclass
class PlanState:
    model: str  # as typed: a preset, hub id or path (what diagnose and export need)
    spec: ModelSpec
    plan: Plan
    target: Machine
    result: Estimate


def _update(widget: Static, content: str) -> None:
    """Update a Static only when its text changes: each update lays the screen out again."""
    if widget.content != content:
        widget.update(content)


class PresetSuggester(Suggester):
    """The preset names as the model field's suggestions, read on the first request in a thread: the preset
    index is a YAML parse that the first frame need not wait for."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._names: SuggestFromList | None = None

    async def get_suggestion(self, value: str) -> str | None:
        if self._names is None:
            index = await asyncio.to_thread(preset_index)
            self._names = SuggestFromList(sorted(index.presets) + sorted(index.aliases), case_sensitive=False)
        return await self._names.get_suggestion(value)


class PlanChanged(Message):
    def __init__(self, state: PlanState) -> None:
        super().__init__()
        self.state = state


def form_settings() -> list[Setting]:
    """The settings the form edits, in the field table's order."""
    return [s for s in fields.FIELDS if s.widget is not None and s.owner in ("plan", "target")]


# Settings most runs leave alone: in a collapsed section, where they cost no layout or paint until opened
MORE_SETTINGS = ("packing", "liger_kernels", "nodes", "tensor_parallel", "pipeline_parallel", "context_parallel",
                 "expert_parallel")


STAGE_DEFAULT = "default"  # a switch left to the stage's trainer (a Plan field that may be None)


def _tristate(setting: Setting) -> bool:
    return setting.owner == "plan" and plan_module.Plan.model_fields[setting.name].annotation == bool | None


class PlanPane(Horizontal):
    """Form on the left, results on the right (stacked on narrow terminals, see app.tcss)."""

    DEFAULTS: dict[str, Any] = {"model": "7b", "gpu": "RTX-4090", "method": "lora"}

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.state: PlanState | None = None
        self.path = None  # planner.path_to_fit's answer while the plan does not fit
        self.spec: ModelSpec | None = None
        self.model_name = ""
        self._applying = False
        self._model_timer: Timer | None = None
        self._requested = ""  # the model name last sent to load_model
        self._by_id: dict[str, Any] = {}
        self._rows: list = []  # the breakdown's rows as drawn
        self._assumptions = ""
        self._shown_method: str | None = None
        self._planned: tuple | None = None  # what the shown plan was computed from

    def compose(self) -> ComposeResult:
        plan = plan_module.Plan(method=self.DEFAULTS["method"])
        yield Static("loading the model…", id="summary")  # docked on top: the answer stays in view
        form = VerticalScroll(id="form")
        form.can_focus = False  # its fields are the stops; it scrolls to the focused one
        with form:
            yield Label("model (preset, hub id, path)", classes="field-label")
            yield Input(self.DEFAULTS["model"], id="model", suggester=PresetSuggester(case_sensitive=False))
            yield SpecSummary(id="spec")
            with Grid(id="fields", classes="form-grid"):
                for setting in form_settings():
                    if setting.name not in MORE_SETTINGS:
                        yield Label(setting.label, classes="field-label", id=f"label-{setting.name}")
                        yield self._widget(setting, plan)
            with Collapsible(title="more settings", id="more-settings"), Grid(id="more-fields", classes="form-grid"):
                    for name in MORE_SETTINGS:
                        setting = fields.setting(name)
                        yield Label(setting.label, classes="field-label", id=f"label-{name}")
                        yield self._widget(setting, plan)
            # the run's length is no plan setting: it only turns the step time into a time to train
            with Grid(id="run-length", classes="form-grid"):
                yield Label("samples", classes="field-label")
                yield Input("", id="time-samples", compact=True, type="integer", placeholder="for time to train",
                            valid_empty=True, validators=[Integer(minimum=1, failure_description="samples must be at least 1")])
                yield Label("epochs", classes="field-label")
                yield Input("1", id="time-epochs", compact=True, type="number",
                            validators=[Number(minimum=0.01, failure_description="epochs must be positive")])
            yield Static("", id="form-error")
        with VerticalScroll(id="results"):  # focusable: where Esc from a field lands; arrows scroll it
            with Vertical(id="main"):
                yield MemoryBar(id="bar")
                breakdown = KeyTable(id="breakdown", zebra_stripes=True, cursor_type="none")
                breakdown.can_focus = False  # no cursor: nothing to do there
                yield breakdown
                yield Static("", id="path-to-fit")
                yield Label("what to change (enter applies it)", id="suggestions-title")
                yield KeyOptionList(id="suggestions")
            with Vertical(id="details"):
                yield Static("", id="warnings")
                yield Static("", id="time")
                with Collapsible(title="assumptions", id="assumptions"):
                    yield Static("", id="assumptions-text")

    def _widget(self, setting: Setting, plan: Plan):
        """The form widget of one setting, from its kind in the field table."""
        name = setting.name
        if name == "gpu":
            return Choice([(g.name, g.name) for g in catalog()] + [(AUTO, AUTO)], value=self.DEFAULTS["gpu"], id=name)
        if setting.widget == "bytes":
            return Input("", id=name, compact=True, placeholder="e.g. 24GiB (overrides GPU)")
        value = getattr(plan, name)
        if setting.widget == "switch":
            options = [("off", False), ("on", True)]
            if _tristate(setting):  # unset: the stage's trainer decides
                options.insert(0, ("stage default", STAGE_DEFAULT))
            return Choice(options, value=STAGE_DEFAULT if value is None else value, id=name)
        if setting.widget == "select":
            options = fields.choices(name)
            return Choice([(str(v), v) for v in options], value=value if value is not None else options[0], id=name)
        if name == "gpus":  # blank: one GPU, or with the measured GPU every visible one
            return Input("", id=name, compact=True, type="integer", placeholder="1 / all (auto)",
                         validators=[Integer(minimum=1, failure_description=f"{setting.label} must be at least 1")])
        if setting.widget == "int":
            return Input(str(value), id=name, compact=True, type="integer",
                         validators=[Integer(minimum=1, failure_description=f"{setting.label} must be at least 1")])
        return Input("" if value is None else str(value), id=name, compact=True)

    def _w(self, widget_id: str) -> Any:
        """A widget of the pane by id. Looked up once: a DOM query per field per keystroke was a third of a
        redraw."""
        if widget_id not in self._by_id:
            self._by_id = {w.id: w for w in self.query("*") if w.id}
        return self._by_id[widget_id]

    @property
    def _widgets(self) -> dict[str, Input | Choice]:
        """The form's fields by id."""
        self._w("model")
        return {i: w for i, w in self._by_id.items() if isinstance(w, (Input, Choice)) and i != "model"}

    def on_mount(self) -> None:
        table = self._w("breakdown")
        table.add_columns("GiB", "forward", "backward", "optimizer")
        self.load_model(self._w("model").value)

    # ------------------------------------------------------------ reading the form

    def _value(self, field: str) -> Any:
        widget = self._w(field)
        return widget.value

    def _show_method_fields(self, method: str) -> None:
        """Only the settings the chosen method uses are on the form (DoRA for LoRA, virtual tokens for prompts)."""
        if method == self._shown_method:
            return
        self._shown_method = method
        for setting in form_settings():
            if setting.methods:
                shown = method in setting.methods
                self._w(setting.name).display = self._w(f"label-{setting.name}").display = shown

    def form_plan(self) -> Plan:
        """The Plan the form describes; raises FtplanError carrying the field that is wrong."""
        values: dict[str, Any] = {}
        method = self._value("method")
        self._show_method_fields(method)
        for setting in form_settings():
            if setting.owner != "plan" or (setting.methods and method not in setting.methods):
                continue  # a hidden setting keeps its default
            widget = self._w(setting.name)
            if isinstance(widget, Input):
                if setting.name == "gpus" and not widget.value.strip():
                    continue
                if setting.widget == "text" and not widget.value.strip() and setting.name != "lora_target":
                    continue  # an empty text field is the setting's default (ia3_target: peft's)
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

    def run_length(self) -> tuple[int | None, float]:
        """Samples and epochs for the time to train; raises FtplanError naming the field that is wrong."""
        for name in ("time-samples", "time-epochs"):
            widget = self._w(name)
            check = widget.validate(widget.value) if widget.value.strip() else None
            if check is not None and not check.is_valid:
                raise FtplanError(check.failure_descriptions[0], field=name)
        samples = self._w("time-samples").value.strip()
        epochs = self._w("time-epochs").value.strip()
        return (int(samples) if samples else None), (float(epochs) if epochs else 1.0)

    def form_gpus(self) -> int | None:
        text = self._w("gpus").value.strip()
        return int(text) if text.isdigit() else None

    def form_target(self, gpus: int | None) -> Machine:
        memory = self._w("gpu_memory").value.strip()
        if memory:
            return resolve_target(gpu_memory=memory if not memory.replace(".", "", 1).isdigit() else f"{memory}GiB",
                                  gpus=gpus)
        gpu = self._value("gpu")
        return resolve_target("auto" if gpu == AUTO else gpu, gpus=gpus)

    # ------------------------------------------------------------ reacting

    @on(Input.Changed)
    @on(Choice.Changed)
    def _field_changed(self, event: Message) -> None:
        if self._applying:
            return
        widget = getattr(event, "input", None) or getattr(event, "choice", None)
        if widget is not None and widget.id == "model":
            # Each keystroke would read a config (or ask the hub): wait until typing pauses.
            if self._model_timer is not None:
                self._model_timer.stop()
            if event.value.strip() == self._requested:
                return  # already read or being read (the field's first Changed repeats on_mount's load)
            self._model_timer = self.set_timer(MODEL_DEBOUNCE_S, lambda: self.load_model(event.value))
            return
        self.recompute()

    def load_model(self, name: str) -> None:
        self._requested = name.strip()
        if resolves_offline(name):
            # a preset or local file reads in milliseconds: planned now, the first frame already shows the plan
            # (a worker's answer waited for the first full paint, a fifth of the start-up)
            self._model_read(name.strip())
        else:
            self._read_model(name)

    @work(exclusive=True, thread=True, group="model")
    def _read_model(self, name: str) -> None:
        self._model_read(name.strip(), self.app.call_from_thread)

    def _model_read(self, name: str, call=lambda f, *args: f(*args)) -> None:
        """Read the model's spec and hand it (or why not) to the pane through `call`."""
        try:
            spec = load_spec(name)
        except FtplanError as exc:
            call(self._model_failed, str(exc))
            return
        except Exception as exc:  # a half-typed name must never take the app down
            call(self._model_failed, f"could not read {name!r}: {exc}")
            return
        call(self._model_loaded, spec, name)

    def _model_failed(self, message: str) -> None:
        self._w("model").border_subtitle = "not found"
        self._w("spec").show(None, message.removeprefix("--model: "))

    def _model_loaded(self, spec: ModelSpec, name: str) -> None:
        if name != self._w("model").value.strip():
            return  # a thread worker cannot be stopped: a slower, older read must not replace the newer model
        self._w("model").border_subtitle = ""
        self.spec, self.model_name = spec, name
        self.recompute()

    def recompute(self) -> None:
        """Form -> Plan -> planner -> screen. An invalid form keeps the last good numbers."""
        if self.spec is None:
            return
        for widget in self._widgets.values():
            if widget.has_class("-plan-error"):  # only the marked ones: touching every field repaints the form
                widget.border_subtitle, widget.tooltip = "", None
                widget.remove_class("-plan-error")
        error = self._w("form-error")
        try:
            plan = self.form_plan()
            target = self.form_target(self.form_gpus())
            samples, epochs = self.run_length()
            # the suggestions (most of a plan that does not fit) come from _advise, after the verdict is drawn
            result = plan_run(self.spec, plan, target, search_batch=True, vocabulary="tui", samples=samples,
                              epochs=epochs, advise=False)
        except FtplanError as exc:
            message = worded(exc, "tui") if not (exc.field or "").startswith("time-") else exc.reason
            field = exc.field if exc.field in self._widgets else SHOWN_ON.get(exc.field or "")
            if field in self._widgets:  # mark the field itself, with the reason on hover
                widget = self._w(field)
                widget.border_subtitle, widget.tooltip = "invalid", message
                widget.add_class("-plan-error")
            error.update(f"[b red]{message}[/] — showing the last valid plan")
            return
        _update(error, "")
        planned = (self.spec, plan, target, samples, epochs)
        if planned == self._planned:  # the fields' Changed events on mount, a value set to what it was
            return
        self._planned = planned
        self.state = PlanState(self.model_name, self.spec, plan, target, result)
        self._show(result)
        self.app.post_message(PlanChanged(self.state))  # straight to the app: bubbling waited on each parent's queue
        if result.fit is not None and not result.fit.fits:
            self.call_after_refresh(self._advise, self.state, samples, epochs)

    def _show(self, result: Estimate) -> None:
        self._w("spec").show(result)
        self._w("bar").show(result)
        table = self._w("breakdown")
        mem = result.memory
        unit, size = gib_unit(max(p.allocated for p in mem.phases))
        columns = [unit, *(p.name for p in mem.phases)]
        if [str(c.label) for c in table.columns.values()] != columns:  # GRPO adds a generation phase
            table.clear(columns=True)
            table.add_columns(*columns)
            self._rows = []
        rows = list(breakdown_rows(mem, LABELS, unit=size))
        if rows != self._rows:  # an unchanged table is not cleared and refilled (a field that moves no memory)
            self._rows = rows
            table.clear()
            for label, cells in rows:
                table.add_row(label, *cells)
        _update(self._w("summary"), self._verdict(result))
        self.path = None
        self._w("path-to-fit").display = False
        self._show_suggestions(result, pending=result.fit is not None and not result.fit.fits)
        self._show_details(result)

    def _verdict(self, result: Estimate) -> str:
        mem, fit = result.memory, result.fit
        gpus = f" × {result.plan.gpus} GPUs" if result.plan.gpus > 1 else ""
        head = f"{result.model.name} · {result.plan.method} · total [b]{fmt_gib(mem.total)}[/] per GPU{gpus} " \
               f"({mem.peak_phase} peak)"
        if fit is None:
            verdict = head
        elif fit.fits:
            verdict = (f"{head} · [b $success]fits {fit.gpu}[/], {fmt_gib(fit.headroom)} headroom · "
                       f"largest micro-batch {fit.max_batch_label}")
        else:
            verdict = (f"{head} · [b $error]does not fit {fit.gpu}[/] ({fmt_gib(fit.capacity)}): short by "
                       f"{fmt_gib(-fit.headroom)}")
        if result.warnings:  # a badge in the line that never scrolls away; the list is under the results
            worst = "error" if any(w.severity == "error" for w in result.warnings) else "warning"
            count = len(result.warnings)
            verdict += f"  [b reverse {_SEVERITY[worst]}] ⚠ {count} warning{'s' if count > 1 else ''} [/]"
        if result.time is not None:
            verdict += f" · {result.time.tokens_per_second:,.0f} tokens/s"
        return verdict

    @work(exclusive=True, thread=True, group="advice")
    def _advise(self, state: PlanState, samples: int | None, epochs: float) -> None:
        """What to change and the path to fit, for a plan that does not fit: each is dozens to hundreds of
        plans, so they run here, after the verdict is on screen; a newer change makes them moot."""
        from planner.path_to_fit import path_to_fit

        worker = get_current_worker()
        sleep(ADVICE_PAUSE_S)
        if worker.is_cancelled:
            return  # typing goes on: only the last change of a burst is advised
        try:
            full = plan_run(state.spec, state.plan, state.target, search_batch=True, vocabulary="tui",
                            samples=samples, epochs=epochs)
        except FtplanError:
            return
        if worker.is_cancelled:
            return
        self.app.call_from_thread(self._show_advice, state, full)
        try:
            path = path_to_fit(state.spec, full.plan, state.target, vocabulary="tui",
                               stop=lambda: worker.is_cancelled)
        except FtplanError:
            return
        if path is not None and not worker.is_cancelled:
            self.app.call_from_thread(self._show_path, state, path)

    def _show_advice(self, state: PlanState, full: Estimate) -> None:
        if state is not self.state:
            return  # the form changed meanwhile
        state.result = full  # the same numbers with the suggestions: exports and JSON see them
        self._show_suggestions(full)

    def _show_path(self, state: PlanState, path) -> None:
        if state is not self.state:
            return  # the form changed meanwhile: a newer search is on its way
        self.path = path
        first, second = path_lines(path, state.result.fit.gpu)
        self._w("path-to-fit").update(Text.assemble((first, "bold green" if path.change else "bold"), "\n",
                                                    (second, "dim")))
        self._w("path-to-fit").display = True
        self._show_suggestions(state.result)

    def _show_suggestions(self, result: Estimate, pending: bool = False) -> None:
        """The suggestions as options; `pending`: they are still being worked out (see _advise)."""
        options = self._w("suggestions")
        title = self._w("suggestions-title")
        _update(title, "what to change: working it out…" if pending else "what to change (enter applies it)")
        options.clear_options()
        path = self.path
        if path is not None and path.change is not None and not any(
                c.changes == path.change.changes for c in result.suggestions):  # first: Enter applies all of it
            head, why = suggestion_text(path.change)
            options.add_option(Option(Text.assemble(("Path to fit: " + head, "bold green"), "\n", (why, "dim")),
                                      id="path"))
        for i, change in enumerate(result.suggestions):
            head, why = suggestion_text(change)
            prompt = Text.assemble((head, "bold green" if change.fits else "bold"), "\n", (why, "dim"))
            options.add_option(Option(prompt, id=str(i)))
        if options.option_count:
            options.highlighted = 0  # the first Enter applies the first suggestion
        title.display = pending or bool(options.option_count)
        options.display = bool(options.option_count)

    def _show_details(self, result: Estimate) -> None:
        lines = [f"[b {_SEVERITY[w.severity]}]{w.severity}[/] {escape(w.message)}"
                 + (f" [dim](fix: {escape(w.change.title)})[/]" if w.change is not None else "") for w in result.warnings]
        _update(self._w("warnings"), "\n".join(lines))
        self._w("warnings").display = bool(lines)
        time = result.time
        text = ("[b]time[/] " + time_line(time) + f"\n[dim]{escape(time.note)}"
                + ("; give samples for the time to train" if time.total_seconds is None else "") + "[/]"
                if time is not None else "[b]time[/] [dim]pick a catalog GPU (not a memory size) for step time[/]")
        _update(self._w("time"), text)
        assumptions = "\n".join(f"• {a}" for a in result.assumptions)
        if assumptions != self._assumptions:
            self._assumptions = assumptions
            self._w("assumptions-text").update(Text(assumptions))
        self._w("assumptions").title = f"assumptions ({len(result.assumptions)})"

    # ------------------------------------------------------------ applying a suggestion

    @on(OptionList.OptionSelected, "#suggestions")
    def _apply_selected(self, event: OptionList.OptionSelected) -> None:
        if self.state is None:
            return
        if event.option.id == "path":
            self.apply(self.path.change.changes)
        else:
            self.apply(self.state.result.suggestions[int(event.option.id)].changes)

    def apply(self, changes: dict[str, Any]) -> None:
        """Put a suggestion's changes into the form, then recompute once."""
        self._applying = True
        try:
            for field, value in changes.items():
                widget = self._w(field)
                if isinstance(widget, Input):
                    widget.value = "" if value is None else str(value)  # blank: the setting's default
                elif value is not None or _tristate(fields.setting(field)):
                    widget.value = STAGE_DEFAULT if value is None else value
                # else a choice that is unset off its method (quant_bits without QLoRA): the form keeps its own
        finally:
            self.call_after_refresh(self._finish_apply)

    def open_config(self, model: str, values: dict[str, Any]) -> None:
        """A config's model and settings into the form (tui.config_io.form_values), then one plan."""
        self._w("model").value = model
        self.apply(values)
        self.load_model(model)

    def _finish_apply(self) -> None:
        self._applying = False
        self.recompute()
