"""`ftplan trace`: one training step of the real transformers / peft model on fake tensors, next to the
planner's estimate for the same plan.

The lead wires it into `tui.cli` with `add_trace_command(sub)`; torch and transformers are imported only
when the command runs.
"""

from __future__ import annotations

import argparse
import sys
import textwrap

from tui.flags import add_system_flags, add_training_flags, plan_from

DESCRIPTION = (
    "Builds the model for the plan (as LLaMA-Factory sets it up) with fake tensors, which have shapes and "
    "dtypes but no data, runs one training step on the CPU (forward with the model's own loss, backward, "
    "optimizer step) and counts the bytes every op allocates, as torch.cuda.max_memory_allocated would on "
    "one GPU. A 70B step needs no memory and well under a minute of CPU. Prints the traced peak per phase next to the planner's "
    "allocated peak for the same plan; works for any model transformers can build, planned or not.")

EPILOG = """exit codes:
  0  success
  2  bad input: unknown model, invalid flag value, a plan the trace cannot run (QLoRA, 8-bit optimizers,
     several GPUs: only the planner models them)
  3  missing environment: torch / transformers / peft not installed (install ftplan[diagnostics])

example:
  ftplan trace --model 7b --method lora --seq-len 512
"""


def add_trace_command(sub) -> argparse.ArgumentParser:
    """Add `trace` to an argparse subparsers object; its func is `cmd_trace`."""
    p = sub.add_parser("trace", help="trace one real training step on fake tensors: the exact allocated peak",
                       description=textwrap.fill(DESCRIPTION, 100), epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_flags(p)
    add_system_flags(p)
    p.add_argument("--json", action="store_true", help="print the trace and the planner's peak as JSON")
    p.set_defaults(func=cmd_trace)
    return p


def cmd_trace(args: argparse.Namespace) -> int:
    from planner.spec import resolve_model

    plan = plan_from(args)
    source = resolve_model(args.model)
    from diagnostics.trace import planner_report, trace_step

    trace = trace_step(source.config, plan, name=source.name)
    report = planner_report(trace, source.config, source=source.source, name=source.name)
    if args.json:
        sys.stdout.write(report.model_dump_json(indent=2) + "\n")
    else:
        print_trace(report, stands_for=source.stands_for)
    return 0


def _unit(peak: int) -> tuple[str, int]:
    """GiB (2^30), or MiB (2^20) for a step under 1 GiB, so a tiny model's numbers still read."""
    from planner.units import GIB

    return ("GiB", GIB) if peak >= GIB else ("MiB", 2**20)


def _percent(fraction: float | None) -> str:
    return "–" if fraction is None else f"{fraction:+.2%}"


def print_trace(report, stands_for: str | None = None, console=None) -> None:
    """The traced peak per phase, the planner's next to it where it models the family, and the notes."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console(highlight=False)
    t, est = report.trace, report.planner
    unit, scale = _unit(max(t.peak_allocated, est.peak_allocated if est else 0))

    def size(nbytes: int) -> str:
        return f"{nbytes / scale:,.3f}"

    plan = t.plan
    console.print(Text(t.model + (f" (→ {stands_for})" if stands_for else ""), style="bold"))
    method = plan.method + (f" r={plan.lora_rank} on {plan.lora_target}" if plan.method == "lora" else "")
    ckpt = ", grad checkpointing" if plan.gradient_checkpointing else ""
    console.print(f"plan: {method} · {plan.precision} · {plan.optimizer} · micro-batch {plan.batch_size} × "
                  f"{plan.seq_len} · accumulation {plan.grad_accum} · {plan.attention}{ckpt}", style="dim")
    power = "2^30" if unit == "GiB" else "2^20"
    table = Table(title=f"allocated on one GPU, {unit} ({power} bytes)", title_justify="left", show_edge=False)
    table.add_column("phase")
    table.add_column("trace", justify="right")
    if est is not None:
        table.add_column("planner", justify="right")
        table.add_column("difference", justify="right")
    for phase in t.phases:
        label = phase.name + (" (peak)" if phase.name == t.peak_phase else "")
        cells = [size(phase.peak)]
        if est is not None and phase.name in est.phases:
            planned = est.phases[phase.name]
            cells += [size(planned), _percent((planned - phase.peak) / phase.peak if phase.peak else None)]
        elif est is not None:
            cells += ["–", "–"]
        table.add_row(label, *cells, style="bold" if phase.name == t.peak_phase else None)
    table.add_section()
    peak_cells = [size(t.peak_allocated)]
    if est is not None:
        peak_cells += [size(est.peak_allocated), _percent(report.difference)]
    table.add_row("step peak", *peak_cells, style="bold")
    console.print(table)
    start = f"at the start: weights {size(t.weights)}, optimizer state {size(t.optimizer_state)}"
    if t.gradients:
        start += f", accumulated gradients {size(t.gradients)}"
    console.print(f"{start} {unit}")
    if est is not None:
        console.print("planner: its allocated peak (estimate_memory().peak_allocated), without the CUDA context "
                      "and allocator fragmentation that `ftplan estimate` adds to its total; "
                      "difference = (planner − trace) / trace", style="dim")
    console.print(f"traced in {t.seconds:.1f} s ({t.ops:,} ops on fake CPU tensors; building took "
                  f"{t.build_seconds:.1f} s); not seen: kernel workspaces (cuBLAS, flash attention), the CUDA "
                  "context, fragmentation", style="dim")
    for note in report.notes:
        console.print(f"note: {note}", style="yellow")
