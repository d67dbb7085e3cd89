"""Text view of a preflight report (the numbers come from the report)."""

from __future__ import annotations

from rich.console import Console

from diagnostics.preflight import PreflightReport
from planner.configs.fix import how
from planner.fields import name_in
from planner.units import fmt_gib, gib
from tui.diagnose_view import change_settings
from tui.views import finding_line

_STYLE = {"error": "bold red", "warning": "yellow", "info": "dim"}
_FORMATS = {"llamafactory": "LLaMA-Factory", "hf": "HF TrainingArguments / TRL", "axolotl": "axolotl"}


def print_preflight(report: PreflightReport, console: Console | None = None) -> None:
    console = console or Console(highlight=False)
    plan, est = report.run.plan, report.estimate
    method = plan.method + (f" r={plan.lora_rank} on {plan.lora_target}" if plan.method in ("lora", "qlora") else "")
    console.print(f"[bold]{report.config}[/bold] ({_FORMATS[report.format]}): {report.model} · {method} · "
                  f"{plan.precision} · micro-batch {plan.batch_size} × {plan.seq_len} · accumulation "
                  f"{plan.grad_accum}{' · checkpointing' if plan.gradient_checkpointing else ''} · "
                  f"{report.gpus} GPU{'s' if report.gpus > 1 else ''}{f' · ZeRO-{plan.zero}' if plan.zero else ''}")
    mem = est.memory
    parts = ", ".join(f"{k.replace('_', ' ')} {gib(v):.1f}" for k, v in mem.peak.items() if v)
    console.print(f"memory per GPU: {fmt_gib(mem.total)} at the {mem.peak_phase} peak ({parts} GiB; "
                  f"overhead {fmt_gib(mem.overhead)})")
    fit = est.fit
    if fit is not None:
        verdict = (f"[green]fits[/green], {fmt_gib(fit.headroom)} headroom" if fit.fits
                   else f"[bold red]does not fit[/bold red]: short by {fmt_gib(-fit.headroom)}")
        console.print(f"{fit.gpu} ({fmt_gib(fit.capacity)}, {fit.source}): {verdict}; largest micro-batch "
                      f"{fit.max_batch_label}")
        if fit.note:
            console.print(f"  {fit.note}", style="dim")
        if not fit.fits:
            for s in est.suggestions[:4]:
                console.print(f"  → {s.title}: {fmt_gib(s.new_total)}{' (fits)' if s.fits else ''}", style="dim")
    if report.checks:
        console.print("checks:")
        conditional = {id(c) for c in report.conditional}
        for c in report.checks:
            key = f"{name_in(c.field, report.format)}: " if c.field else ""
            # a setting not modelled that only lowers memory: the plan fits without it (diagnostics.preflight
            # .conservative), so it conditions the estimate, not the verdict
            label, style = ("conditional", "cyan") if id(c) in conditional else (c.severity, _STYLE[c.severity])
            console.print(f"  [{style}]{label}[/{style}] {key}{c.message}")
    if report.diagnostics is not None:
        d = report.diagnostics
        console.print(f"diagnostics: {d.status} after {len(d.records)} step(s)"
                      + (f" — {d.message}" if d.message else ""))
        for f in d.findings:
            console.print(f"  [{_STYLE[f.severity]}]{f.severity}[/{_STYLE[f.severity]}] {finding_line(f)}")
        for a in d.advice:
            console.print(f"  advice: {a.title} ({how(a.changes, report.format) or change_settings(a, report.format)}): "
                          f"{a.reason}", style="dim")
    if report.fixed:
        changed = ", ".join(f"{k}: {v}" for k, v in report.fix_changes.items()) or "nothing to change"
        console.print(f"corrected copy: {report.fixed} ({changed}); {report.config} is unchanged")
    style = "bold green" if report.verdict == "ready" else "bold yellow" if report.verdict == "ready_with_warnings" \
        else "bold red"
    console.print(f"[{style}]{report.summary}[/{style}]")
