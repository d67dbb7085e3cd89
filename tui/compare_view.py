"""The method comparison (planner.compare) as text cells: the same for `ftplan compare` and the TUI's Compare screen.

Labels only; every number is the planner's.
"""

from __future__ import annotations

from planner.compare import CompareRow, Comparison
from planner.units import GIB, fmt_count
from tui.views import duration

NOT_PLANNED = "not planned"


def compare_columns(comparison: Comparison) -> list[str]:
    """The table's columns: fit, throughput and epoch time only when the comparison has them."""
    rows = [r for r in comparison.rows if r.reason is None]
    columns = ["method", "trainable", "%", "peak GiB"]
    if comparison.gpu is not None:
        columns.append("fits")
    if any(r.tokens_per_second for r in rows):
        columns.append("tok/s")
    if any(r.epoch_seconds is not None for r in rows):
        columns.append("epoch")
    return [*columns, "served"]


def _percent(fraction: float) -> str:
    # three significant digits: 100% for full fine-tuning, 0.00122% for prompt tuning
    return f"{100 * fraction:.3g}%"


def _served(row: CompareRow) -> str:
    """What inference runs: the tuned model, the base with the training merged in, or the base plus what stays."""
    if row.at_inference is None:
        return "merged" if row.method not in ("full", "freeze") else "tuned"
    if row.virtual_tokens:
        return f"+{row.virtual_tokens} {row.at_inference}"
    return f"+{row.at_inference}"


def compare_cells(comparison: Comparison) -> list[tuple[CompareRow, list[str]]]:
    """One row of cells per method under `compare_columns`; a method not planned says so and leaves the rest empty
    (its reason is `row.reason`)."""
    columns = compare_columns(comparison)
    out = []
    for row in comparison.rows:
        if row.reason is not None:
            out.append((row, [row.label, NOT_PLANNED, *[""] * (len(columns) - 2)]))
            continue
        cells = {
            "method": row.label, "trainable": fmt_count(row.trainable), "%": _percent(row.trainable_fraction),
            "peak GiB": f"{row.peak_bytes / GIB:,.2f}",
            # the spare (or missing) GiB: how close a method is to the edge matters as much as the verdict
            "fits": "" if row.fits is None else f"{'✓' if row.fits else '✗'} {row.headroom / GIB:+,.1f}",
            "tok/s": f"{row.tokens_per_second:,.0f}" if row.tokens_per_second else "–",
            "epoch": duration(row.epoch_seconds) if row.epoch_seconds is not None else "–",
            "served": _served(row),
        }
        out.append((row, [cells[c] for c in columns]))
    return out


def not_planned_lines(comparison: Comparison) -> list[str]:
    """Why each method not planned was not, one line per reason (LoRA, DoRA and QLoRA often share theirs)."""
    reasons: dict[str, list[str]] = {}
    for row in comparison.rows:
        if row.reason:
            reasons.setdefault(row.reason, []).append(row.label)
    return [f"{', '.join(labels)} not planned: {reason}" for reason, labels in reasons.items()]


def compare_title(comparison: Comparison) -> str:
    gpu = f" on {comparison.gpu}" if comparison.gpu else " (no GPU given: memory only)"
    return (f"{comparison.model} ({fmt_count(comparison.total_params)} params), every method at sequence "
            f"{comparison.seq_len:,}{gpu}; peak memory per GPU in GiB (2^30 bytes), fits: GiB spare; served: "
            "what inference runs")


def mfu_note(comparison: Comparison) -> str | None:
    """The MFU each throughput assumes: the one given, or each method's default."""
    shares: dict[float, list[str]] = {}
    for row in comparison.rows:
        if row.mfu is not None:
            shares.setdefault(row.mfu, []).append(row.label)
    if not shares:
        return None
    if len(shares) == 1:
        return f"tok/s: tokens per second at {next(iter(shares)):.0%} MFU (model FLOPs utilisation; set with --mfu)"
    return "tok/s: tokens per second at the default MFU of each method (set one with --mfu): " + "; ".join(
        f"{share:.0%} {', '.join(labels)}" for share, labels in shares.items())
