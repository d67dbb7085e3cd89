"""The What-fits tab: every catalog GPU against every method, with the largest micro-batch that fits."""

from __future__ import annotations

from textual import work
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable, Static

from planner.errors import FtplanError
from planner.fit import max_batch_size
from planner.hardware import catalog
from planner.memory import estimate_memory
from planner.plan import METHODS, Plan
from planner.units import fmt_gib
from tui.plan_pane import PlanState


def fit_cells(state: PlanState) -> list[tuple[str, list[str]]]:
    """One row per GPU: for each method, the largest micro-batch that fits, or the memory it would need."""
    per_method: list[tuple[Plan, int] | None] = []  # the plan and its micro-batch-1 total; None: n/a
    for method in METHODS:
        # QLoRA keeps the form's bits; other methods train unquantised weights.
        bits = state.plan.quant_bits if method == "qlora" else None
        try:
            plan = state.plan.with_(method=method, quant_bits=bits)
            per_method.append((plan, estimate_memory(state.spec, plan.with_(batch_size=1)).total))
        except FtplanError:
            per_method.append(None)
    rows = []
    for gpu in catalog():
        cells = []
        for entry in per_method:
            if entry is None:
                cells.append("n/a")
                continue
            plan, need = entry
            if need > gpu.memory_bytes:
                cells.append(f"✗ {fmt_gib(need, 0)}")
                continue
            best = max_batch_size(state.spec, plan, gpu.memory_bytes, limit=256)
            cells.append(f"✓ b≤{best}" + ("+" if best == 256 else ""))
        rows.append((f"{gpu.name} ({fmt_gib(gpu.memory_bytes, 0)})", cells))
    return rows

class FitsPane(Vertical):
    def compose(self) -> ComposeResult:
        yield Static("", id="fits-title")
        yield DataTable(id="fits-table", zebra_stripes=True, cursor_type="row")

    def on_mount(self) -> None:
        self.query_one("#fits-table", DataTable).add_columns("GPU", *METHODS)

    def show(self, state: PlanState) -> None:
        p = state.plan
        self.query_one("#fits-title", Static).update(
            f"[b]{state.spec.name}[/] at sequence {p.seq_len}, {p.precision}, {p.optimizer}"
            f"{', checkpointing' if p.gradient_checkpointing else ''}: largest micro-batch per GPU and method "
            "(✗: needs that much at micro-batch 1)")
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
