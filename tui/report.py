"""Terminal rendering of planner results for the command line (rich tables; no formulas here)."""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from planner.result import Estimate
from planner.units import GIB, fmt_count, fmt_gib
from tui.views import (
    GPU_COLUMNS,
    breakdown_rows,
    duration,
    fits_rows,
    fits_title,
    gpu_rows,
    path_lines,
    process_lines,
)


def print_estimate(result: Estimate, console: Console | None = None, path=None) -> None:
    """`path`: planner.path_to_fit's answer for a plan that does not fit, printed before the single changes."""
    console = console or Console(highlight=False)
    m, plan, p = result.model, result.plan, result.params
    title = m.name + (f" (→ {m.stands_for})" if m.stands_for else "")
    console.print(Text(title, style="bold").append(f"  ({m.source})", style="dim"))
    heads = f"{m.heads} heads" + (f" / {m.kv_heads} KV" if m.kv_heads != m.heads else "")
    facts = [m.model_type, f"{fmt_count(p.total)} params", f"{m.layers} layers", f"hidden {m.hidden_size}",
             heads, f"vocab {m.vocab_size:,}"]
    if m.experts:
        facts.append(m.experts)
    console.print(" · ".join(facts), style="dim")
    ckpt = ", grad checkpointing" if plan.gradient_checkpointing else ""
    method = plan.method + (f" r={plan.lora_rank} on {plan.lora_target}" if plan.method in ("lora", "qlora") else "")
    shard = f", ZeRO-{plan.zero}" if plan.zero else ""
    console.print(f"plan: {method} · {plan.precision} · {plan.optimizer} · micro-batch {plan.batch_size} × "
                  f"{plan.seq_len} · accumulation {plan.grad_accum} · {plan.attention}{ckpt} · "
                  f"{plan.gpus} GPU{'s' if plan.gpus > 1 else ''}{shard}")
    console.print(f"trainable: {fmt_count(p.trainable)} ({p.trainable_fraction:.2%})"
                  + (f" in {p.lora_modules} LoRA modules" if p.lora_modules else ""))

    mem = result.memory
    table = Table(title="memory per GPU, GiB (2^30 bytes)", title_justify="left", show_edge=False)
    table.add_column("component")
    for phase in mem.phases:
        style = "bold" if phase.name == mem.peak_phase else None
        table.add_column(phase.name + (" (peak)" if phase.name == mem.peak_phase else ""), justify="right",
                         style=style)
    rows = breakdown_rows(mem)
    for label, cells in rows[:-1]:
        table.add_row(label, *cells)
    table.add_section()
    table.add_row(rows[-1][0], *rows[-1][1])
    console.print(table)
    console.print(f"+ overhead {fmt_gib(mem.overhead)} (CUDA context {fmt_gib(mem.details.cuda_context)}, "
                  f"fragmentation {fmt_gib(mem.details.fragmentation)})")
    console.print(Text(f"= total {fmt_gib(mem.total)} per GPU at the {mem.peak_phase} peak", style="bold"))
    if mem.cpu_offload:
        console.print(f"  host RAM for the offloaded optimizer: {fmt_gib(mem.cpu_offload)} per GPU")
    if mem.host_activations:
        console.print(f"  host RAM for the offloaded activations: {fmt_gib(mem.host_activations)} per GPU")

    if result.fit:
        f = result.fit
        verdict = (Text(f"fits, {fmt_gib(f.headroom)} headroom ({f.headroom_fraction:.0%})", style="green")
                   if f.fits else Text(f"does NOT fit: short by {fmt_gib(-f.headroom)}", style="bold red"))
        line = Text(f"\n{f.gpu} ({fmt_gib(f.capacity)}, {f.source}): ")
        line.append_text(verdict)
        console.print(line)
        if f.note:
            console.print(f"  {f.note}")
        if f.max_batch is not None:
            console.print(f"largest micro-batch that fits: {f.max_batch_label}")
        if f.max_seq_len == 0:
            console.print(f"no sequence length fits at micro-batch {plan.batch_size}: the rest of the plan is "
                          "already too big")
        elif f.max_seq_len is not None:
            if f.max_seq_len_capped and result.model.context:
                console.print(f"longest sequence that fits at micro-batch {plan.batch_size}: the model's whole "
                              f"context, {f.max_seq_len:,} tokens")
            else:
                console.print(f"longest sequence that fits at micro-batch {plan.batch_size}: "
                              f"{'≥ ' if f.max_seq_len_capped else ''}{f.max_seq_len:,} tokens")
    if path is not None and result.fit is not None:
        first, second = path_lines(path, result.fit.gpu)
        console.print(Text("\n" + first, style="bold green" if path.change else "bold"))
        console.print(f"  {path.change.reason}" if path.change else "", style="dim")
        console.print(second)
    if result.suggestions:
        console.print("\nwhat to change (largest saving first):")
        for i, s in enumerate(result.suggestions, 1):
            mark = "[green]fits[/green]" if s.fits else "still too big"
            console.print(f"  {i}. {s.title} → {fmt_gib(s.new_total)} ({mark})")
            console.print(f"     {s.reason}; flags: {s.how}", style="dim")
    if result.time:
        t = result.time
        line = f"\ntime: {t.step_seconds:.2f} s per optimizer step, {t.tokens_per_second:,.0f} tokens/s"
        if t.total_seconds is not None:
            line += f"; {t.steps:,} steps ≈ {duration(t.total_seconds)}"
        console.print(line)
        console.print(f"  {t.note}", style="dim")
    if result.warnings:
        console.print()
        for w in result.warnings:
            console.print(f"[{'red' if w.severity == 'error' else 'yellow'}]{w.severity}:[/] {w.message}")
    console.print("\nassumptions:", style="dim")
    for a in result.assumptions:
        console.print(f"  - {a}", style="dim")


def print_models(rows: list[dict], console: Console | None = None) -> None:
    console = console or Console(highlight=False)
    table = Table(title="model presets (config.json of each, offline)", title_justify="left", show_edge=False)
    # the preset name is what users copy into --model and numbers must not be cut: those never wrap;
    # a terminal too narrow for the hub ids leaves them to --json rather than folding every row
    columns = ["preset", "hub id", "type", "params", "layers", "aliases"]
    if console.width < 110:
        columns.remove("hub id")
    for col in columns:
        table.add_column(col, justify="right" if col in ("params", "layers") else "left",
                         no_wrap=col != "aliases", overflow="fold")
    for r in rows:
        cells = {"preset": r["name"], "hub id": r["hub_id"] or "", "type": r["model_type"],
                 "params": fmt_count(r["params"]), "layers": str(r["layers"]), "aliases": ", ".join(r["aliases"])}
        table.add_row(*(cells[c] for c in columns))
    console.print(table)
    if "hub id" not in columns:
        console.print("hub ids: widen the terminal or use `ftplan models --json`", style="dim")
    console.print("use a preset, an alias, a hub id (owner/name) or a local model directory with --model",
                  style="dim")


def _na(value, fmt: str = "{}") -> str:
    return "n/a" if value is None else fmt.format(value)


def print_gpus(result, console: Console | None = None) -> None:
    """`ftplan gpus`: one row per device, then the processes holding memory."""
    console = console or Console(highlight=False)
    console.print(f"driver {result.driver_version or 'n/a'}, CUDA {result.cuda_driver_version or 'n/a'}"
                  + (f", CUDA_VISIBLE_DEVICES={result.cuda_visible_devices!r}"
                     if result.cuda_visible_devices is not None else ""), style="dim")
    table = Table(show_edge=False, title="GPUs (memory in GiB, 2^30 bytes)", title_justify="left")
    for col in GPU_COLUMNS:
        table.add_column(col, justify="right" if col in ("used / total", "free", "util", "temp", "power") else "left")
    for g, row in zip(result.gpus, gpu_rows(result), strict=True):
        table.add_row(*(row[c] for c in GPU_COLUMNS), style=None if g.cuda_index is not None else "dim")
    console.print(table)
    lines = process_lines(result)
    if lines:
        console.print("processes holding GPU memory:")
        for line in lines:
            console.print(f"  {line}")
    for g in result.gpus:
        for problem in g.problems:
            console.print(f"[yellow]{g.label}:[/yellow] {problem}")
    for note in result.notes:
        console.print(f"note: {note}", style="dim")
    console.print("devices with a cuda number are the ones a job launched from this shell gets", style="dim")


def print_catalog(gpus, console: Console | None = None) -> None:
    console = console or Console(highlight=False)
    table = Table(show_edge=False, title="GPU catalog (--gpu NAME)", title_justify="left")
    for col in ("name", "memory GiB", "bf16 TFLOP/s", "fp16 TFLOP/s", "GB/s", "cc", "also matches"):
        table.add_column(col)
    for g in gpus:
        table.add_row(g.name, f"{g.memory_bytes / GIB:.1f}", _na(g.bf16_tflops, "{:g}"), f"{g.fp16_tflops:g}",
                      _na(g.bandwidth_gbps, "{:g}"), _na(g.compute_capability), ", ".join(g.aliases))
    console.print(table)


def print_fits(model: str, plan, rows, methods, console: Console | None = None) -> None:
    """`ftplan fits`: the What-fits table."""
    console = console or Console(highlight=False)
    table = Table(title=fits_title(model, plan), title_justify="left", show_edge=False)
    for col in ("GPU", *methods):
        table.add_column(col, justify="left" if col == "GPU" else "right")
    for name, cells in fits_rows(rows):
        table.add_row(name, *cells)
    console.print(table)


def print_compare(comparison, console: Console | None = None) -> None:
    """`ftplan compare`: one row per method, the reasons for those not planned, then the seed's contrasts."""
    from tui.compare_view import compare_cells, compare_columns, compare_title, mfu_note, not_planned_lines

    console = console or Console(highlight=False)
    table = Table(title=compare_title(comparison), title_justify="left", show_edge=False, box=box.SIMPLE_HEAD,
                  collapse_padding=True)
    for col in compare_columns(comparison):  # a row per method fits 80 columns: nothing wraps
        table.add_column(col, justify="left" if col in ("method", "served") else "right", no_wrap=True)
    for row, cells in compare_cells(comparison):
        style = "dim" if row.reason else ("red" if row.fits is False else None)
        table.add_row(*cells, style=style)
    console.print(table)
    for line in not_planned_lines(comparison):
        console.print(line, style="dim")
    note = mfu_note(comparison)
    if note:
        console.print(note, style="dim")
    if comparison.summary:
        console.print()
        for line in comparison.summary:
            console.print(line)
