"""A one-widget choice field for the form. Textual's Select is six widgets (and an overlay list) per field;
sixteen of them were half the widgets the app built and styled at start-up. This one is a single Static
that steps through its options with right/left, and opens its list (a modal OptionList, built only then) on
enter, space or a click."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.reactive import reactive
from textual.screen import ModalScreen
from textual.widgets import OptionList, Static


class _Menu(ModalScreen):
    """The open list of a Choice, under it. Typed characters search the labels, as Select's list does, and
    never reach the app's keys (a "q" here is no quit)."""

    BINDINGS = [Binding("escape", "dismiss", "close", show=False)]
    DEFAULT_CSS = """
    _Menu { background: transparent; }
    _Menu OptionList { width: auto; min-width: 16; max-height: 12; border: round $accent; }
    """

    def __init__(self, labels: list[str], index: int, offset: tuple[int, int]) -> None:
        super().__init__()
        self._labels, self._index, self._offset, self._typed = labels, index, offset, ""

    def compose(self) -> ComposeResult:
        menu = OptionList(*self._labels)
        menu.styles.offset = self._offset
        yield menu

    def on_mount(self) -> None:
        menu = self.query_one(OptionList)
        menu.highlighted = self._index
        menu.focus()

    def on_key(self, event: events.Key) -> None:
        if not event.is_printable or event.character is None or event.character == " ":
            return
        event.stop()
        event.prevent_default()
        menu = self.query_one(OptionList)
        for typed in (self._typed + event.character, event.character):
            hit = next((i for i, label in enumerate(self._labels) if label.lower().startswith(typed.lower())), None)
            if hit is not None:
                self._typed, menu.highlighted = typed, hit
                return

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.dismiss(event.option_index)

    def on_click(self, event: events.Click) -> None:
        if self.get_widget_at(event.screen_x, event.screen_y)[0] is self:  # outside the list: close it
            self.dismiss(None)


class Choice(Static, can_focus=True):
    BINDINGS = [Binding("enter,space", "open", "choose", show=False),
                Binding("right", "step(1)", "next", show=False), Binding("left", "step(-1)", "previous", show=False)]

    DEFAULT_CSS = """
    Choice {
        height: 1;
        width: 1fr;
        padding: 0 1;
    }
    """

    value: reactive[Any] = reactive(None, init=False, layout=False)

    class Changed(Message):
        def __init__(self, choice: Choice, value: Any) -> None:
            super().__init__()
            self.choice = choice
            self.value = value

        @property
        def control(self) -> Choice:
            return self.choice

    def __init__(self, options: list[tuple[str, Any]], value: Any, **kwargs) -> None:
        super().__init__(**kwargs)
        self._options = list(options)
        self._values = [v for _, v in self._options]
        self.set_reactive(Choice.value, self._check(value))

    def _check(self, value: Any) -> Any:
        if value not in self._values:  # as Select does: a value it cannot show is the caller's bug
            raise ValueError(f"{self.id}: {value!r} is not one of {self._values}")
        return value

    def validate_value(self, value: Any) -> Any:
        return self._check(value)

    def watch_value(self, value: Any) -> None:
        self.refresh()
        self.post_message(self.Changed(self, value))

    def render(self) -> Text:
        label = self._options[self._values.index(self.value)][0]
        return Text.assemble(label, " ", ("▼", "dim"))

    def action_step(self, by: int) -> None:
        self.value = self._values[(self._values.index(self.value) + by) % len(self._values)]

    def action_open(self) -> None:
        region = self.region
        self.app.push_screen(_Menu([label for label, _ in self._options], self._values.index(self.value),
                                   (region.x, region.y + 1)), self._chosen)

    def _chosen(self, index: int | None) -> None:
        if index is not None:
            self.value = self._values[index]
        self.focus()

    def on_click(self) -> None:
        self.action_open()
