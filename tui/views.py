"""Rows and labels for what ftplan shows, as plain text: the same for the rich CLI and the Textual app.

Pure functions of planner results; no formulas (the planner computed everything).
"""

from __future__ import annotations

from planner.fit import FitsRow
from planner.memory import COMPONENTS, Breakdown
from planner.units import GIB, fmt_gib

LONG_LABELS = {
    "weights": "weights", "master_weights": "master weights (fp32)", "optimizer": "optimizer state",
    "gradients": "gradients", "activations": "activations", "logits": "logits (loss)", "temporaries": "temporaries",
}


def breakdown_rows(memory: Breakdown, labels: dict[str, str] | None = None) -> list[tuple[str, list[str]]]:
    """One row per component alive in some phase (GiB per phase, '–' where absent), then 'allocated'."""
    labels = labels or LONG_LABELS
    rows = []
    for key in COMPONENTS:
        values = [p.parts.get(key, 0) for p in memory.phases]
        if any(values):
            rows.append((labels[key], [f"{v / GIB:,.2f}" if v else "–" for v in values]))
    rows.append(("allocated", [f"{p.allocated / GIB:,.2f}" for p in memory.phases]))
    return rows


def fits_cell(cell) -> str:
    if cell.need is None:
        return "n/a"
    if cell.max_batch == 0:
        return f"✗ {fmt_gib(cell.need, 0)}"
    return f"✓ b≤{cell.max_batch}" + ("+" if cell.capped else "")


def fits_rows(rows: list[FitsRow]) -> list[tuple[str, list[str]]]:
    """What fits: one row per GPU, a cell per method ('✓ b≤N', or '✗ need' at micro-batch 1)."""
    return [(f"{r.gpu} ({fmt_gib(r.capacity, 0)})", [fits_cell(c) for c in r.cells]) for r in rows]


def fits_title(model: str, plan, gpus_label: str = "") -> str:
    return (f"{model} at sequence {plan.seq_len}, {plan.precision}, {plan.optimizer}"
            f"{', checkpointing' if plan.gradient_checkpointing else ''}"
            f"{f', {plan.gpus} GPUs' if plan.gpus > 1 else ''}{f', ZeRO-{plan.zero}' if plan.zero else ''}"
            f"{', optimizer offloaded' if plan.offload_optimizer else ''}{gpus_label}: largest micro-batch per GPU "
            "and method (✗: needs that much at micro-batch 1)")
