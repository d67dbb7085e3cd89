"""The What-fits tab: every catalog GPU against every method, with the largest micro-batch that fits."""

from __future__ import annotations

from textual import work
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable, Static

from planner.fit import what_fits
from planner.plan import METHODS
from planner.target import catalog_targets
from tui.plan_pane import PlanState
from tui.views import fits_rows, fits_title


def fit_cells(state: PlanState) -> list[tuple[str, list[str]]]:
    """One row per GPU: for each method, the largest micro-batch that fits, or the memory it would need."""
    machine = state.target
    # the plan as planned (with `auto` the count of visible GPUs), on every catalog GPU with its own calibration
    targets = catalog_targets(machine.given_context, machine.fragmentation)
    return fits_rows(what_fits(state.spec, state.result.plan, targets, METHODS))


class FitsPane(Vertical):
    def compose(self) -> ComposeResult:
        yield Static("", id="fits-title")
        yield DataTable(id="fits-table", zebra_stripes=True, cursor_type="row")

    def on_mount(self) -> None:
        self.query_one("#fits-table", DataTable).add_columns("GPU", *METHODS)

    def show(self, state: PlanState) -> None:
        self.query_one("#fits-title", Static).update(fits_title(state.spec.name, state.result.plan))
        self._compute(state)

    @work(exclusive=True, thread=True, group="fits")
    def _compute(self, state: PlanState) -> None:
        rows = fit_cells(state)
        self.app.call_from_thread(self._fill, rows)

    def _fill(self, rows: list[tuple[str, list[str]]]) -> None:
        table = self.query_one("#fits-table", DataTable)
        table.clear()
        for name, cells in rows:
            table.add_row(name, *cells)
