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
from textual.validation import Integer, Number
from textual.widgets import DataTable, Input, Label, OptionList, Select, Static
from textual.widgets.option_list import Option

from planner.errors import FtplanError
from planner.estimate import Estimate, estimate
from planner.fit import GpuTarget
from planner.hardware import catalog
from planner.memory import COMPONENTS
from planner.plan import ATTENTION_KERNELS, METHODS, OPTIMIZERS, PRECISIONS, Plan
from planner.spec import ModelSpec, load_spec, preset_index
from planner.units import GIB, fmt_gib
from tui.widgets import LABELS, MemoryBar, SpecSummary

INT_FIELDS = {"batch_size": "micro-batch", "grad_accum": "accumulation", "seq_len": "sequence", "lora_rank": "LoRA r",
              "gpus": "GPUs"}
SELECTS = {"method": METHODS, "precision": PRECISIONS, "optimizer": OPTIMIZERS, "attention": ATTENTION_KERNELS,
           "quant_bits": (4, 8), "zero": (0, 1, 2, 3)}
# Plan validation errors name CLI flags; this puts them on the right field.
FLAG_FIELDS = {"--batch-size": "batch_size", "--grad-accum": "grad_accum", "--seq-len": "seq_len",
               "--lora-rank": "lora_rank", "--lora-target": "lora_target", "--gpus": "gpus", "--zero": "zero",
               "--quant-bits": "quant_bits", "--method": "method", "--offload-optimizer": "zero",
               "--freeze-trainable-layers": "method"}
SWITCHES = {"gradient_checkpointing": "checkpointing", "fused_loss": "fused loss", "offload_optimizer": "offload optim."}
AUTO = "auto (measured)"
MODEL_DEBOUNCE_S = 0.4


@dataclass
class PlanState:
    model: str  # as typed: a preset, hub id or path (what diagnose and export need)
    spec: ModelSpec
    plan: Plan
    target: GpuTarget | None
    result: Estimate


class PlanChanged(Message):
    def __init__(self, state: PlanState) -> None:
        super().__init__()
        self.state = state


def gpu_target(name: str) -> GpuTarget | None:
    if name == AUTO:
        from diagnostics.gpus import measured_target
        from diagnostics.nvml import probe

        return measured_target(probe())
    return GpuTarget.of_catalog(name)


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
        plan = Plan(method=self.DEFAULTS["method"])
        presets = sorted(preset_index().presets) + sorted(preset_index().aliases)
        yield Static("loading the model…", id="summary")  # docked on top: the answer stays in view
        with VerticalScroll(id="form"):
            yield Label("model (preset, hub id or local path)", classes="field-label")
            yield Input(self.DEFAULTS["model"], id="model", suggester=SuggestFromList(presets, case_sensitive=False))
            yield SpecSummary(id="spec")
            with Grid(id="fields"):
                for field in ("method", "precision", "optimizer", "attention"):
                    yield Label(field, classes="field-label")
                    yield Select([(str(v), v) for v in SELECTS[field]], value=getattr(plan, field),
                                 allow_blank=False, id=field, compact=True)
                for field, label in INT_FIELDS.items():
                    yield Label(label, classes="field-label")
                    yield Input(str(getattr(plan, field)), id=field, compact=True, type="integer",
                                validators=[Integer(minimum=1, failure_description=f"{label} must be at least 1")])
                yield Label("LoRA targets", classes="field-label")
                yield Input(plan.lora_target, id="lora_target", compact=True)
                yield Label("quant bits", classes="field-label")
                yield Select([("4", 4), ("8", 8)], value=4, allow_blank=False, id="quant_bits", compact=True)
                yield Label("ZeRO stage", classes="field-label")
                yield Select([(str(z), z) for z in (0, 1, 2, 3)], value=0, allow_blank=False, id="zero",
                             compact=True)
                for field, label in SWITCHES.items():
                    yield Label(label, classes="field-label")
                    yield Select([("off", False), ("on", True)], value=False, allow_blank=False, id=field,
                                 compact=True)
                yield Label("GPU", classes="field-label")
                yield Select([(g.name, g.name) for g in catalog()] + [(AUTO, AUTO)], value=self.DEFAULTS["gpu"],
                             allow_blank=False, id="gpu", compact=True)
                yield Label("GPU memory", classes="field-label")
                yield Input("", id="gpu_memory", compact=True, placeholder="e.g. 24GiB (overrides GPU)",
                            validators=[Number(minimum=0.1, failure_description="memory in GiB, e.g. 24")])
            yield Static("", id="form-error")
        with Vertical(id="results"):
            yield MemoryBar(id="bar")
            yield DataTable(id="breakdown", zebra_stripes=True, cursor_type="none")
            yield Label("what to change (enter applies it)", id="suggestions-title")
            yield OptionList(id="suggestions")

    def on_mount(self) -> None:
        table = self.query_one("#breakdown", DataTable)
        table.add_columns("GiB", "forward", "backward", "optimizer")
        self.load_model(self.query_one("#model", Input).value)

    # ------------------------------------------------------------ reading the form

    def _value(self, field: str) -> Any:
        widget = self.query_one(f"#{field}")
        return widget.value

    def form_plan(self) -> Plan:
        """The Plan the form describes; raises FtplanError naming the field that is wrong."""
        fields: dict[str, Any] = {}
        for field in SELECTS:
            fields[field] = self._value(field)
        for field in INT_FIELDS:
            widget = self.query_one(f"#{field}", Input)
            check = widget.validate(widget.value)
            if check is not None and not check.is_valid:
                raise FtplanError(f"--{field.replace('_', '-')}: {check.failure_descriptions[0]}")
            fields[field] = int(widget.value)
        fields["lora_target"] = self._value("lora_target") or "all"
        for field in SWITCHES:
            fields[field] = self._value(field)
        if fields["method"] != "qlora":
            fields["quant_bits"] = None
        return Plan.build(**fields)

    def form_target(self) -> GpuTarget | None:
        memory = self.query_one("#gpu_memory", Input)
        if memory.value.strip():
            check = memory.validate(memory.value)
            if check is not None and not check.is_valid:
                raise FtplanError(f"--gpu-memory: {check.failure_descriptions[0]}")
            return GpuTarget.of_memory(f"{memory.value} GiB")
        return gpu_target(self._value("gpu"))

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
            target = self.form_target()
            result = estimate(self.spec, plan, target, search_batch=target is not None)
        except FtplanError as exc:
            message = str(exc)
            field = next((f for flag, f in FLAG_FIELDS.items() if message.startswith(flag)), None)
            field = field or next((f for f in INT_FIELDS if message.startswith(f"--{f.replace('_', '-')}")), None)
            field = field or ("gpu_memory" if message.startswith("--gpu") else None)
            if field is not None:  # mark the field itself, with the reason on hover
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
        table.clear()
        mem = result.memory
        for key in COMPONENTS:
            values = [p.parts.get(key, 0) for p in mem.phases]
            if any(values):
                table.add_row(LABELS[key], *(f"{v / GIB:.2f}" if v else "–" for v in values))
        table.add_row("allocated", *(f"{p.allocated / GIB:.2f}" for p in mem.phases))
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
                widget.value = value if not isinstance(widget, Input) else str(value)
        finally:
            self.call_after_refresh(self._finish_apply)

    def _finish_apply(self) -> None:
        self._applying = False
        self.recompute()
