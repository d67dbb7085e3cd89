"""Rows and labels for what ftplan shows, as plain text: the same for the rich CLI and the Textual app.

Pure functions of planner results; no formulas (the planner computed everything).
"""

from __future__ import annotations

from planner.fields import cli_flags
from planner.findings import Change
from planner.fit import FitsRow, batch_step
from planner.memory import COMPONENTS, Breakdown
from planner.stages import batch_unit
from planner.units import GIB, fmt_gib

LONG_LABELS = {
    "weights": "weights", "reference": "reference / reward model", "generation": "generation (KV cache / vLLM)",
    "master_weights": "master weights (fp32)", "optimizer": "optimizer state",
    "gradients": "gradients", "activations": "activations", "logits": "logits (loss)", "temporaries": "temporaries",
}


def breakdown_rows(memory: Breakdown, labels: dict[str, str] | None = None,
                   unit: int = GIB) -> list[tuple[str, list[str]]]:
    """One row per component alive in some phase (in `unit` bytes per phase, '–' where absent), then
    'allocated'."""
    labels = labels or LONG_LABELS
    rows = []
    for key in COMPONENTS:
        values = [p.parts.get(key, 0) for p in memory.phases]
        if any(values):
            rows.append((labels[key], [f"{v / unit:,.2f}" if v else "–" for v in values]))
    rows.append(("allocated", [f"{p.allocated / unit:,.2f}" for p in memory.phases]))
    return rows


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:,.1f} days"


def time_line(time) -> str:
    """Step time, throughput and, when the run's length is known, the time to train."""
    line = f"{time.step_seconds:,.2f} s per optimizer step · {time.tokens_per_second:,.0f} tokens/s"
    if time.total_seconds is not None:
        line += f" · {time.steps:,} steps ≈ {duration(time.total_seconds)}"
    return line


def suggestion_text(change: Change) -> tuple[str, str]:
    """A suggestion as a headline (what, the new total, whether it fits) and its why and flags."""
    mark = "fits" if change.fits else "still too big"
    total = f" → {fmt_gib(change.new_total)} ({mark})" if change.new_total is not None else ""
    return f"{change.title}{total}", f"{change.reason}; flags: {cli_flags(change.changes)}"


def path_lines(path, gpu: str) -> list[str]:
    """Path to fit (planner.path_to_fit) as two lines: the cheapest changes that fit `gpu`, and the smallest
    catalog GPU that fits the plan as is."""
    change = path.change
    first = (f"path to fit {gpu}: {change.title} → {fmt_gib(change.new_total)}; flags: {cli_flags(change.changes)}"
             if change is not None else f"path to fit {gpu}: no combination of up to 3 changes fits")
    second = (f"smallest catalog GPU that fits as is: {path.smallest_gpu} ({fmt_gib(path.smallest_gpu_capacity, 0)}; "
              f"the plan needs {fmt_gib(path.smallest_gpu_total)})" if path.smallest_gpu is not None
              else "no catalog GPU fits the plan as is")
    return [first, second]


def fits_style(cell) -> str:
    """The colour of a What-fits cell: fits, does not fit, or the method does not apply."""
    if cell.need is None:
        return "dim"
    return "red" if cell.max_batch == 0 else "green"


def fits_cell(cell, epoch_seconds: float | None = None) -> str:
    """A What-fits cell: the largest micro-batch, or with `epoch_seconds` the time per epoch at that batch."""
    if cell.need is None:
        return "n/a"
    if cell.max_batch == 0:
        return f"✗ {fmt_gib(cell.need, 0)}"
    if epoch_seconds is not None:
        return f"✓ {duration(epoch_seconds)}"
    return f"✓ b≤{cell.max_batch}" + ("+" if cell.capped else "")


def _cell_order(cell) -> tuple:
    """Best first: fits with the largest micro-batch, then does-not-fit by the least memory needed, then n/a."""
    if cell.need is None:
        return (2, 0)
    return (0, -cell.max_batch) if cell.max_batch else (1, cell.need)


def shown_fits(rows: list[FitsRow], search: str = "", column: int | None = None) -> list[FitsRow]:
    """What fits as shown: the GPUs whose name holds `search` (any case), sorted by a column when one is given
    (0: the GPU's memory, smallest first; a method's column: best fit first), else in catalog order."""
    needle = search.strip().lower()
    shown = [r for r in rows if needle in r.gpu.lower()]
    if column is None:
        return shown
    if column == 0:
        return sorted(shown, key=lambda r: r.capacity)
    return sorted(shown, key=lambda r: _cell_order(r.cells[column - 1]))


def fits_rows(rows: list[FitsRow]) -> list[tuple[str, list[str]]]:
    """What fits: one row per GPU, a cell per method ('✓ b≤N', or '✗ need' at the smallest micro-batch)."""
    return [(f"{r.gpu} ({fmt_gib(r.capacity, 0)})", [fits_cell(c) for c in r.cells]) for r in rows]


def fits_title(model: str, plan, gpus_label: str = "") -> str:
    stage = "" if plan.stage == "sft" else f"stage {plan.stage}" + (
        ", reference log-probs precomputed" if plan.precompute_ref_log_probs else "") + ", "
    unit = batch_unit(plan.stage) if plan.stage not in ("sft", "pt") else None
    # every setting the cells depend on is named, so a ✓ is never read against a different setup
    lora = f", LoRA r={plan.lora_rank} on {plan.lora_target}"
    quant = f" (QLoRA {plan.quant_bits}-bit)" if plan.quant_bits else ""
    return (f"{model} {stage}at sequence {plan.seq_len}, {plan.precision}, {plan.optimizer}, {plan.attention}"
            f"{', checkpointing' if plan.gradient_checkpointing else ', no checkpointing'}{lora}{quant}"
            f"{', fused loss' if plan.fused_loss else ''}"
            f", {plan.gpus} GPU{'s' if plan.gpus > 1 else ''}, {f'ZeRO-{plan.zero}' if plan.zero else 'no ZeRO'}"
            f"{', optimizer offloaded' if plan.offload_optimizer else ''}{gpus_label}: largest micro-batch per GPU "
            f"{f'(in {unit}) ' if unit else ''}and method (✗: needs that much at micro-batch {batch_step(plan)})")


GPU_COLUMNS = ("nvml", "cuda", "name", "used / total", "free", "util", "temp", "power", "cc", "MIG")


def _na(value, fmt: str = "{}") -> str:
    return "–" if value is None else fmt.format(value)


def gpu_rows(result) -> list[dict[str, str]]:
    """One row per GPU of an NVML probe (memory in GiB), keyed by `GPU_COLUMNS`."""
    rows = []
    for g in result.gpus:
        used = (f"{g.memory_used / GIB:.1f} / {g.memory_total / GIB:.1f}"
                if g.memory_total is not None and g.memory_used is not None else "lost")
        rows.append({
            "nvml": g.label.removeprefix("GPU "), "cuda": _na(g.cuda_index), "name": g.name, "used / total": used,
            "free": _na(None if g.memory_free is None else g.memory_free / GIB, "{:.1f}"),
            "util": _na(g.utilization_gpu, "{}%"), "temp": _na(g.temperature_c, "{}°C"),
            "power": "–" if g.power_w is None else f"{g.power_w:.0f}"
                     + (f"/{g.power_limit_w:.0f}" if g.power_limit_w else "") + " W",
            "cc": _na(g.compute_capability), "MIG": {True: "on", False: "off", None: "–"}[g.mig_enabled],
        })
    return rows


def process_lines(result) -> list[str]:
    """Who holds memory on each GPU."""
    return [f"{g.label}: pid {p.pid} {p.name or ''} "
            + ("?" if p.used_memory is None else fmt_gib(p.used_memory)) + ("  (this process)" if p.own else "")
            for g in result.gpus for p in g.processes]


def finding_line(f) -> str:
    """A finding as one line: its message, and its evidence when it has some."""
    return f.message + (f": {f.evidence}" if f.evidence else "")
