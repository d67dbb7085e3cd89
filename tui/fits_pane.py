"""The What-fits tab: every catalog GPU against every method, with the largest micro-batch that fits.

`g` switches the view between the plan's GPU count and 1, 2, 4 and 8 GPUs; `t` sorts by the cursor's column
(again: catalog order); `/` filters the GPUs by name. `Enter` on a cell puts its GPU, method and the view's GPU
count into the Plan tab's form.
"""

from __future__ import annotations

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import DataTable, Input, Static

from planner.errors import FtplanError
from planner.fit import FitsRow, what_fits
from planner.plan import METHODS, Plan
from planner.target import catalog_targets
from tui.plan_pane import PlanState
from tui.views import fits_cell, fits_rows, fits_style, fits_title, shown_fits
from tui.widgets import KeyTable

GPU_VIEWS = (None, 1, 2, 4, 8)  # None: the plan's own GPU count
DEFAULT_SAMPLES = 1000  # the time view's epoch when the Plan tab gives no samples


def view_plan(state: PlanState, gpus: int | None = None) -> Plan:
    """The plan as planned (with `auto` the count of visible GPUs), over `gpus` GPUs when a view asks."""
    return state.result.plan if gpus is None else state.result.plan.with_(gpus=gpus)


def fit_table(state: PlanState, gpus: int | None = None) -> list[FitsRow]:
    """Every catalog GPU against every method, at the plan's other settings (over `gpus` GPUs if given)."""
    machine = state.target
    # every catalog GPU with its own calibration
    targets = catalog_targets(machine.given_context, machine.fragmentation)
    return what_fits(state.spec, view_plan(state, gpus), targets, METHODS)


def epoch_seconds(state: PlanState, rows: list[FitsRow], gpus: int | None, samples: int) -> list[list[float | None]]:
    """The time per epoch of `samples` for every cell that fits, at its largest micro-batch: the Plan tab's time
    to train (planner.flops.estimate_time, composed as the service composes it); None where nothing fits."""
    from planner.flops import estimate_time
    from planner.hardware import find_gpu
    from planner.methods import layout
    from planner.params import count_params
    from planner.stages import stage_spec

    base = view_plan(state, gpus)
    trained: dict[str, tuple] = {}  # by method: what trains does not depend on the GPU or the micro-batch
    out = []
    for row in rows:
        gpu = find_gpu(row.gpu)
        times: list[float | None] = []
        for cell in row.cells:
            if not cell.max_batch:
                times.append(None)
                continue
            plan = base.with_(method=cell.method, quant_bits=base.quant_bits if cell.method == "qlora" else None,
                              batch_size=cell.max_batch)
            if cell.method not in trained:
                spec = stage_spec(state.spec, plan)
                counts = count_params(spec)
                trained[cell.method] = (spec, counts, layout(spec, counts, plan))
            spec, counts, train = trained[cell.method]
            times.append(estimate_time(spec, counts, train, plan, gpu, samples=samples).total_seconds)
        out.append(times)
    return out


def fit_cells(state: PlanState) -> list[tuple[str, list[str]]]:
    """One row per GPU: for each method, the largest micro-batch that fits, or the memory it would need."""
    return fits_rows(fit_table(state))


class FitsPane(Vertical):
    # named in the line above the table, not the footer (80 columns hold the app's keys only)
    BINDINGS = [Binding("g", "gpu_view", "GPU count", show=False), Binding("t", "sort", "sort", show=False),
                Binding("v", "time_view", "time per epoch", show=False)]

    class Apply(Message):
        """Plan with this GPU and method (Enter on a cell), and the view's GPU count."""

        def __init__(self, gpu: str, method: str | None, gpus: int | None = None) -> None:
            super().__init__()
            self.gpu, self.method, self.gpus = gpu, method, gpus

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.all_rows: list[FitsRow] = []
        self.rows: list[FitsRow] = []  # as shown: filtered and sorted
        self.state: PlanState | None = None
        self.gpus: int | None = None
        self.sort_column: int | None = None
        self.times: list[list[float | None]] = []  # per row of all_rows: time per epoch of each cell that fits
        self.time_view = False  # v: cells show the time per epoch instead of the largest micro-batch
        self.samples = DEFAULT_SAMPLES

    def compose(self) -> ComposeResult:
        yield Static("", id="fits-title")
        with Horizontal(id="fits-controls"):
            yield Static("", id="fits-view")
            yield Input("", id="fits-search", compact=True, placeholder="/ filter GPUs")
        yield KeyTable(id="fits-table", zebra_stripes=True, cursor_type="cell")

    def on_mount(self) -> None:
        self.query_one("#fits-table", DataTable).add_columns("GPU", *METHODS)

    def show(self, state: PlanState) -> None:
        self.state = state
        self._compute(state, self.gpus)
        self._show_title()

    def _show_title(self) -> None:
        if self.state is None:
            return
        try:
            plan = view_plan(self.state, self.gpus)
        except FtplanError as exc:
            self.query_one("#fits-title", Static).update(f"[b red]{exc}[/]")
            return
        self.query_one("#fits-title", Static).update(
            fits_title(self.state.spec.name, plan) + " — enter plans the cell's GPU, method and GPU count")
        names = [str(v) if v else f"plan's {self.state.result.plan.gpus}" for v in GPU_VIEWS]
        views = " ".join(f"[reverse]{n}[/]" if v == self.gpus else n for v, n in zip(GPU_VIEWS, names, strict=True))
        sort = "catalog" if self.sort_column is None else \
            "memory" if self.sort_column == 0 else METHODS[self.sort_column - 1]
        cells = f"[reverse]time per epoch of {self.samples:,} samples[/]" if self.time_view else \
            "[reverse]largest micro-batch[/]"
        self.query_one("#fits-view", Static).update(f"GPUs (g): {views} · sort (t): {sort} · cells (v): {cells}")

    def _run_samples(self) -> int:
        """The Plan tab's samples (its time to train), else DEFAULT_SAMPLES."""
        try:
            samples = self.app.query_one("#plan-pane").run_length()[0]
        except FtplanError:
            samples = None
        return samples or DEFAULT_SAMPLES

    @work(exclusive=True, thread=True, group="fits")
    def _compute(self, state: PlanState, gpus: int | None) -> None:
        samples = self.app.call_from_thread(self._run_samples)
        try:
            rows = fit_table(state, gpus)
            times = epoch_seconds(state, rows, gpus, samples)
        except FtplanError:
            rows, times = [], []  # the title says why (a GPU count the plan cannot take)
        self.app.call_from_thread(self._fill, rows, times, samples)

    def _fill(self, rows: list[FitsRow], times: list[list[float | None]], samples: int) -> None:
        self.all_rows, self.times, self.samples = rows, times, samples
        self._redraw()

    def _redraw(self) -> None:
        search = self.query_one("#fits-search", Input).value
        self.rows = shown_fits(self.all_rows, search, self.sort_column)
        table = self.query_one("#fits-table", DataTable)
        cursor = table.cursor_coordinate
        table.clear()
        times = {id(r): t for r, t in zip(self.all_rows, self.times, strict=False)}
        for (name, _), row in zip(fits_rows(self.rows), self.rows, strict=True):
            seconds = times.get(id(row)) if self.time_view else None
            table.add_row(name, *(Text(fits_cell(c, seconds[i] if seconds else None), style=fits_style(c))
                                  for i, c in enumerate(row.cells)))
        if self.rows:  # a refreshed table keeps the cell the user was on
            table.cursor_coordinate = cursor
        self._show_title()

    def action_gpu_view(self) -> None:
        self.gpus = GPU_VIEWS[(GPU_VIEWS.index(self.gpus) + 1) % len(GPU_VIEWS)]
        if self.state is not None:
            self.show(self.state)

    def action_time_view(self) -> None:
        self.time_view = not self.time_view
        self._redraw()

    def action_sort(self) -> None:
        column = self.query_one("#fits-table", DataTable).cursor_coordinate.column
        self.sort_column = None if self.sort_column == column else column
        self._redraw()

    def focus_search(self) -> None:
        self.query_one("#fits-search", Input).focus()

    @on(Input.Changed, "#fits-search")
    def _search(self) -> None:
        self._redraw()

    @on(Input.Submitted, "#fits-search")
    def _searched(self) -> None:
        self.query_one("#fits-table", DataTable).focus()

    @on(DataTable.CellSelected, "#fits-table")
    def _apply(self, event: DataTable.CellSelected) -> None:
        row, column = event.coordinate.row, event.coordinate.column
        if row < len(self.rows):
            # the GPU column applies the GPU alone, with the plan's own method
            method = self.rows[row].cells[column - 1].method if column > 0 else None
            self.post_message(self.Apply(self.rows[row].gpu, method, self.gpus))
