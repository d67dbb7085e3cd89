"""Text view of a diagnostics report for the command line (no formulas: the report has the numbers)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from diagnostics.report import DiagnosticReport, StepRecord
from planner.fields import Vocabulary, name_in
from planner.findings import Change
from planner.units import fmt_gib
from tui.plots import loss_plot, norm_heatmap
from tui.views import finding_line

_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}


# settings only `ftplan diagnose` has (no planner field): the flag to print for them
_DIAGNOSE_FLAGS = {"beta": "--beta"}


def step_line(record: StepRecord, total: int) -> str:
    clip = " clipped" if record.clipped else ""
    pref = record.preference
    pairs = f"  margin {pref.margin:+8.3g}  acc {pref.accuracy:4.0%}" if pref is not None else ""
    return (f"step {record.step:>3}/{total}  loss {record.loss:8.4f}{pairs}  grad norm {record.grad_norm:9.4g}{clip}  "
            f"lr {record.lr:.2e}  {record.tokens_per_s:,.0f} tok/s")


def _flag(field: str, vocabulary: Vocabulary) -> str:
    return _DIAGNOSE_FLAGS[field] if field in _DIAGNOSE_FLAGS and vocabulary == "cli" else name_in(field, vocabulary)


def change_settings(change: Change, vocabulary: Vocabulary) -> str:
    """What a change sets, in a front end's names: `--max-grad-norm 1.0 → 0.5`."""
    return ", ".join(f"{_flag(k, vocabulary)} {change.current.get(k)} → {v}" for k, v in change.changes.items())


def preference_rows(records: list[StepRecord], rows: int = 6) -> list[dict[str, str]]:
    """A few steps spread over the run (the first and the last included), with the preference metrics."""
    marked = [r for r in records if r.preference is not None]
    if not marked:
        return []
    picks = sorted({round(i * (len(marked) - 1) / max(1, rows - 1)) for i in range(rows)})
    out = []
    for r in (marked[i] for i in picks):
        p = r.preference
        drift = (f"{p.chosen_token_logratio:+.2f}/{p.rejected_token_logratio:+.2f}"
                 if p.chosen_token_logratio is not None else "")
        out.append({"step": str(r.step), "loss": f"{r.loss:.4g}", "margin": f"{p.margin:+.3g}",
                    "accuracy": f"{p.accuracy:.0%}", "reward c/r": f"{p.chosen_reward:+.2f}/{p.rejected_reward:+.2f}",
                    "logp/token c/r": f"{p.chosen_token_logp:.2f}/{p.rejected_token_logp:.2f}",
                    "vs ref c/r": drift})
    return out


def print_report(report: DiagnosticReport, console: Console | None = None, plots: bool = True) -> None:
    console = console or Console(highlight=False)
    s, env = report.settings, report.environment
    stage = (f" · {s.stage} (beta {s.beta:g})" if s.stage == "dpo" else
             f" · orpo (lambda {s.beta:g})" if s.stage == "orpo" else "")
    console.print(f"[bold]{s.model}[/bold] · {s.plan.method}{stage} · {s.plan.precision} · lr {s.learning_rate:g} · "
                  f"micro-batch {s.plan.batch_size} × accumulation {s.plan.grad_accum}"
                  + (f" × {env.get('world_size')} processes" if env.get("world_size", 1) > 1 else "")
                  + f" · cutoff {s.plan.seq_len}")
    if env:
        init = "random weights (config only)" if env.get("random_init") else "pretrained weights"
        console.print(f"{init}; {env.get('tokenizer')}; {env.get('examples')} examples from {env.get('data')}; "
                      f"{env.get('device')}" + (f" ({env['gpu']})" if env.get("gpu") else ""), style="dim")
    status = {"completed": "[green]completed[/green]"}.get(report.status, f"[bold red]{report.status}[/bold red]")
    console.print(f"status: {status} after {len(report.records)} step(s)"
                  + (f" — {report.message}" if report.message else ""))
    if plots and len(report.records) >= 2:  # written raw: rich would re-wrap the plot's lines
        width = min(console.width, 100) - 2
        console.file.write(loss_plot(report.records, width=width, color=console.is_terminal) + "\n\n")
        console.file.write(norm_heatmap(report.records, max_columns=width - 14) + "\n")
    rows = preference_rows(report.records)
    if rows:
        table = Table(title="preference (means over each step's pairs; c = chosen, r = rejected; rewards are "
                            "beta x log-ratios" + ("; vs ref: policy - reference, nats per token)" if s.stage == "dpo"
                                                   else ")"),
                      title_justify="left", show_edge=False)
        columns = [c for c in rows[0] if any(row[c] for row in rows)]
        for col in columns:
            table.add_column(col, justify="right")
        for row in rows:
            table.add_row(*(row[c] for c in columns))
        console.print(table)
    if report.findings:
        console.print("\nfindings:")
        for f in report.findings:
            console.print(f"  [{_STYLE[f.severity]}]{f.severity}[/{_STYLE[f.severity]}] {finding_line(f)}")
            if f.fix:
                console.print(f"      fix: {f.fix}", style="dim")
    else:
        console.print("\nfindings: none; the gradients, loss and updates look healthy")
    if report.advice:
        table = Table(title="suggested settings (ftplan flags)", title_justify="left", show_edge=False)
        for col in ("flag", "now", "suggest", "why"):
            table.add_column(col, overflow="fold")
        for row in advice_rows(report, "cli"):
            table.add_row(*row)
        console.print(table)
    if report.noise_scale is not None:
        console.print(f"gradient noise scale ≈ {report.noise_scale:.1f} sequences (McCandlish et al. 2018; "
                      "measured early, it grows as the loss falls)", style="dim")
    line = memory_line(report)
    if line:
        console.print(line, style="dim")


def advice_rows(report: DiagnosticReport, vocabulary: Vocabulary) -> list[tuple[str, str, str, str]]:
    """The report's advice as (setting, now, suggested, why), one row per setting changed."""
    return [(_flag(k, vocabulary), str(a.current.get(k)), str(v), a.reason)
            for a in report.advice for k, v in a.changes.items()]


def memory_line(report: DiagnosticReport) -> str | None:
    """Measured against planned memory, when the run measured it."""
    m = report.memory
    if m is None:
        return None
    line = f"memory: planner {fmt_gib(m.estimate_allocated)} allocated at peak"
    if m.measured_allocated is not None:
        line += f", measured {fmt_gib(m.measured_allocated)} ({m.error:+.1%})"
    if m.measured_process is not None:
        line += f"; NVML sees {fmt_gib(m.measured_process)} for this process (planner total {fmt_gib(m.estimate_total)})"
    return line
