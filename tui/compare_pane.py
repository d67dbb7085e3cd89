"""The Compare screen (key `c`): every fine-tuning method at the Plan tab's model, GPU and other settings, as
`ftplan compare` prints it. The planner computes the rows in a thread worker; the screen only lays them out."""

from __future__ import annotations

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Static

from planner.compare import Comparison, compare
from planner.errors import FtplanError
from planner.fields import worded
from tui.compare_view import compare_cells, compare_columns, compare_title, mfu_note, not_planned_lines
from tui.plan_pane import PlanState
from tui.widgets import KeyTable


class CompareScreen(ModalScreen[None]):
    BINDINGS = [("escape", "dismiss", "close"), ("q", "dismiss", "close"), ("c", "dismiss", "close")]
    DEFAULT_CSS = """
    CompareScreen { align: center middle; }
    #compare { width: 95%; height: 90%; border: round $primary; background: $surface; padding: 0 1; }
    #compare-table { height: auto; max-height: 60%; }
    #compare-notes { color: $text-muted; }
    """

    def __init__(self, state: PlanState, samples: int | None = None) -> None:
        super().__init__()
        self.state, self.samples = state, samples
        self.comparison: Comparison | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="compare"):
            yield Static("comparing every method…", id="compare-title")
            yield KeyTable(id="compare-table", zebra_stripes=True, cursor_type="row")
            yield Static("", id="compare-notes")
            yield Static("", id="compare-summary")

    def on_mount(self) -> None:
        self._compute()

    @work(exclusive=True, thread=True, group="compare")
    def _compute(self) -> None:
        state = self.state
        try:
            comparison = compare(state.spec, state.result.plan, state.target, samples=self.samples,
                                 vocabulary="tui")
        except FtplanError as exc:
            self.app.call_from_thread(self.query_one("#compare-title", Static).update, worded(exc, "tui"))
            return
        self.app.call_from_thread(self._fill, comparison)

    def _fill(self, comparison: Comparison) -> None:
        self.comparison = comparison
        self.query_one("#compare-title", Static).update(compare_title(comparison) + " — esc closes")
        table = self.query_one("#compare-table", DataTable)
        table.clear(columns=True)
        columns = compare_columns(comparison)
        table.add_columns(*columns)
        for row, cells in compare_cells(comparison):
            style = "dim" if row.reason else ("red" if row.fits is False else "")
            table.add_row(*(Text(c, style=style, justify="left" if i in (0, len(columns) - 1) else "right")
                            for i, c in enumerate(cells)), key=row.label)
        notes = not_planned_lines(comparison)
        note = mfu_note(comparison)
        self.query_one("#compare-notes", Static).update(Text("\n".join(notes + ([note] if note else []))))
        self.query_one("#compare-summary", Static).update(Text("\n".join(comparison.summary)))
        table.focus()
