"""The What-fits tab: every catalog GPU against every method, with the largest micro-batch that fits.

`Enter` on a cell puts its GPU and method into the Plan tab's form.
"""

from __future__ import annotations

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import DataTable, Static

from planner.fit import FitsRow, what_fits
from planner.plan import METHODS
from planner.target import catalog_targets
from tui.plan_pane import PlanState
from tui.views import fits_cell, fits_rows, fits_style, fits_title
from tui.widgets import KeyTable


def fit_table(state: PlanState) -> list[FitsRow]:
    """Every catalog GPU against every method, at the plan's other settings."""
    machine = state.target
    # the plan as planned (with `auto` the count of visible GPUs), on every catalog GPU with its own calibration
    targets = catalog_targets(machine.given_context, machine.fragmentation)
    return what_fits(state.spec, state.result.plan, targets, METHODS)


def fit_cells(state: PlanState) -> list[tuple[str, list[str]]]:
    """One row per GPU: for each method, the largest micro-batch that fits, or the memory it would need."""
    return fits_rows(fit_table(state))


class FitsPane(Vertical):
    class Apply(Message):
        """Plan with this GPU and method (Enter on a cell)."""

        def __init__(self, gpu: str, method: str | None) -> None:
            super().__init__()
            self.gpu, self.method = gpu, method

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.rows: list[FitsRow] = []

    def compose(self) -> ComposeResult:
        yield Static("", id="fits-title")
        yield KeyTable(id="fits-table", zebra_stripes=True, cursor_type="cell")

    def on_mount(self) -> None:
        self.query_one("#fits-table", DataTable).add_columns("GPU", *METHODS)

    def show(self, state: PlanState) -> None:
        self.query_one("#fits-title", Static).update(
            fits_title(state.spec.name, state.result.plan) + " — enter plans the cell's GPU and method")
        self._compute(state)

    @work(exclusive=True, thread=True, group="fits")
    def _compute(self, state: PlanState) -> None:
        rows = fit_table(state)
        self.app.call_from_thread(self._fill, rows)

    def _fill(self, rows: list[FitsRow]) -> None:
        self.rows = rows
        table = self.query_one("#fits-table", DataTable)
        cursor = table.cursor_coordinate
        table.clear()
        for (name, _), row in zip(fits_rows(rows), rows, strict=True):
            table.add_row(name, *(Text(fits_cell(c), style=fits_style(c)) for c in row.cells))
        if rows:  # a refreshed table keeps the cell the user was on
            table.cursor_coordinate = cursor

    @on(DataTable.CellSelected, "#fits-table")
    def _apply(self, event: DataTable.CellSelected) -> None:
        row, column = event.coordinate.row, event.coordinate.column
        if row < len(self.rows):
            # the GPU column applies the GPU alone, with the plan's own method
            method = self.rows[row].cells[column - 1].method if column > 0 else None
            self.post_message(self.Apply(self.rows[row].gpu, method))
