"""Modal screens: help, the preset picker, and the export dialog."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Markdown, OptionList
from textual.widgets.option_list import Option

from planner.spec import preset_index

TAB_HELP = {
    "plan": """\
## Plan

Type a model (a preset such as `7b`, a hub id, a local folder or `config.json`) and change any setting:
the verdict on top, the memory bar and breakdown, the suggestions, the time and the warnings update as you
type. Select a suggestion (**j**/**k** or arrows) and press **enter** to put it in the form. Give
*samples* (and *epochs*) for the time to train; open *assumptions* for what the numbers rest on.
""",
    "fits": """\
## What fits

Every catalog GPU against every method at the Plan tab's other settings (the title names them): the
largest micro-batch that fits (green), or what the smallest needs (red). Move with **j**/**k**/arrows and
press **enter** on a cell to plan that GPU, method and GPU count. **g** switches between the plan's GPU count
and 1, 2, 4 or 8 GPUs; **t** sorts by the cursor's column (again: catalog order); **/** filters GPUs by name;
**v** shows, in each cell that fits, the time per epoch at its largest micro-batch (the Plan tab's *samples*,
else 1,000; the same step-time model as its time to train).
""",
    "gpus": """\
## GPUs

This machine's GPUs through NVML (refreshes every few seconds while shown), and the processes holding
memory.
""",
    "diagnose": """\
## Diagnose

A short real training run of the current plan on ftplan's sample data: loss, per-layer gradient norms,
findings and advice. **Cancel** keeps the partial report.
""",
}

KEYS = """\
## Keys

| key | action |
| --- | --- |
| `1`–`4` | switch tab (from anywhere but a text field) |
| `m` | edit the model (`/` too, outside What fits) |
| `esc` | leave a text field |
| `tab` / `shift+tab` | next / previous field |
| `j` / `k` | down / up in lists and tables |
| `p` | pick a preset |
| `r` | run diagnostics |
| `o` | open a LLaMA-Factory / TRL / axolotl config into the form |
| `e` | export the plan (into a copy of the opened config, keeping its other keys; else LLaMA-Factory YAML) |
| `s` | save the plan (and the last report) as JSON |
| `d` | dark / light theme |
| `ctrl+p` | command palette |
| `?` | this help |
| `q` | quit (in a text field it types; `ctrl+q` quits from anywhere) |
"""


def help_text(tab: str) -> str:
    """The help with the shown tab's section first: what you are looking at, then the keys, then the rest."""
    others = "\n".join(text for name, text in TAB_HELP.items() if name != tab)
    return f"# ftplan\n\n{TAB_HELP.get(tab, '')}\n{KEYS}\n## The other tabs\n\n{others}"


class HelpScreen(ModalScreen[None]):
    BINDINGS = [("escape", "dismiss", "close"), ("q", "dismiss", "close"), ("question_mark", "dismiss", "close")]

    def __init__(self, tab: str = "plan") -> None:
        super().__init__()
        self.tab = tab

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help"):
            yield Markdown(help_text(self.tab))
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
    AUTO_FOCUS = "#export-path"  # the path is what to type; Enter then writes (or opens)

    def __init__(self, title: str, default: str, action: str = "Write") -> None:
        super().__init__()
        self.title_text, self.default, self.action = title, default, action

    def compose(self) -> ComposeResult:
        with Vertical(id="export"):
            yield Label(self.title_text)
            yield Input(self.default, id="export-path")
            yield Button(self.action, id="export-write", variant="primary", compact=True)

    @on(Input.Submitted, "#export-path")
    @on(Button.Pressed, "#export-write")
    def _write(self) -> None:
        self.dismiss(self.query_one("#export-path", Input).value.strip() or None)
