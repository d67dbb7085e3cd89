"""Modal screens: help, the preset picker, and the export dialog."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Markdown, OptionList
from textual.widgets.option_list import Option

from planner.spec import preset_index

HELP = """\
# ftplan

**Plan** — type a model (preset such as `7b`, hub id, local folder) and change any setting: the
memory breakdown, the verdict against the GPU and the suggestions update as you type. Select a
suggestion and press **enter** to apply it to the form.

**What fits** — every catalog GPU against every method, with the largest micro-batch.

**GPUs** — this machine's GPUs through NVML (refreshes every few seconds).

**Diagnose** — a short real training run of the current plan on ftplan's sample data: loss,
per-layer gradient norms, findings and advice. **Cancel** keeps the partial report.

| key | action |
| --- | --- |
| `1`–`4` | switch tab |
| `p` | pick a preset |
| `r` | run diagnostics |
| `e` | export the plan as LLaMA-Factory YAML |
| `s` | save the plan (and the last report) as JSON |
| `d` | dark / light theme |
| `ctrl+p` | command palette |
| `?` | this help |
| `q` | quit |
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [("escape", "dismiss", "close"), ("q", "dismiss", "close"), ("question_mark", "dismiss", "close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help"):
            yield Markdown(HELP)
            yield Button("Close", id="close-help", compact=True)

    @on(Button.Pressed, "#close-help")
    def _close(self) -> None:
        self.dismiss()


class PresetPicker(ModalScreen[str | None]):
    """A searchable list of the presets and size aliases."""

    BINDINGS = [("escape", "dismiss(None)", "cancel")]

    def compose(self) -> ComposeResult:
        with Vertical(id="picker"):
            yield Label("presets (type to filter, enter to choose)")
            yield Input(placeholder="filter", id="preset-filter")
            yield OptionList(*self._options(""), id="preset-list")

    def _options(self, text: str) -> list[Option]:
        index = preset_index()
        rows = [(name, preset.hub_id or "") for name, preset in index.presets.items()]
        rows += [(alias, f"→ {target}") for alias, target in index.aliases.items()]
        text = text.lower()
        return [Option(f"{name:<30} {detail}", id=name) for name, detail in rows
                if text in name.lower() or text in detail.lower()]

    @on(Input.Changed, "#preset-filter")
    def _filter(self, event: Input.Changed) -> None:
        options = self.query_one("#preset-list", OptionList)
        options.clear_options()
        options.add_options(self._options(event.value))

    @on(Input.Submitted, "#preset-filter")
    def _first(self) -> None:
        options = self.query_one("#preset-list", OptionList)
        if options.option_count:
            self.dismiss(options.get_option_at_index(0).id)

    @on(OptionList.OptionSelected, "#preset-list")
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)


class ExportScreen(ModalScreen[str | None]):
    """Ask where to write; an existing file is never overwritten (the app picks a free name)."""

    BINDINGS = [("escape", "dismiss(None)", "cancel")]

    def __init__(self, title: str, default: str) -> None:
        super().__init__()
        self.title_text, self.default = title, default

    def compose(self) -> ComposeResult:
        with Vertical(id="export"):
            yield Label(self.title_text)
            yield Input(self.default, id="export-path")
            yield Button("Write", id="export-write", variant="primary", compact=True)

    @on(Input.Submitted, "#export-path")
    @on(Button.Pressed, "#export-write")
    def _write(self) -> None:
        self.dismiss(self.query_one("#export-path", Input).value.strip() or None)
