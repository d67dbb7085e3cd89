"""Estimate vs measured peak memory on a real GPU, as a table (run by scripts/gpu_check.sh).

Two small real architectures (random weights: memory does not depend on their values),
full / LoRA / QLoRA, several micro-batch x sequence shapes, bf16-mixed as LLaMA-Factory
trains. Prints one row per run with the planner's allocated peak against
`torch.cuda.max_memory_allocated`, and the planner's total against NVML's count of this
process; writes the table to $OUT/gpu_check.md when OUT is set.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diagnostics.measure import measure_training_memory  # noqa: E402
from planner.plan import Plan  # noqa: E402
from planner.spec import resolve_model, spec_of  # noqa: E402
from planner.units import GIB  # noqa: E402

MODELS = ("qwen2.5-0.5b-instruct", "llama-3.2-1b")
SHAPES = ((1, 512), (4, 1024), (2, 2048))
METHODS = ("full", "lora", "qlora")


def _pct(err: float | None) -> str:
    return "n/a" if err is None else f"{err:+.1%}"


def main() -> None:
    started = time.time()
    lines = ["| model | method | batch x seq | est. alloc GiB | max_allocated GiB | error | est. total GiB "
             "| NVML process GiB | error |", "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    print(lines[0])
    print(lines[1])
    for name in MODELS:
        source = resolve_model(name)  # one read of the preset: its config builds the model, its spec plans it
        spec, config = spec_of(source), source.config
        for method in METHODS:
            for batch, seq in SHAPES:
                plan = Plan(method=method, precision="bf16-mixed", batch_size=batch, seq_len=seq,
                            gradient_checkpointing=seq >= 2048)
                check = measure_training_memory(config, plan, steps=3, device="cuda", spec=spec, name=name)
                row = (f"| {name} | {method} | {batch}x{seq}{' GC' if plan.gradient_checkpointing else ''} "
                       f"| {check.estimate_allocated / GIB:.2f} | {check.measured_allocated / GIB:.2f} "
                       f"| {_pct(check.error(check.measured_allocated, check.estimate_allocated))} "
                       f"| {check.estimate_total / GIB:.2f} "
                       f"| {'n/a' if check.measured_process is None else f'{check.measured_process / GIB:.2f}'} "
                       f"| {_pct(check.error(check.measured_process, check.estimate_total))} |")
                print(row, flush=True)
                lines.append(row)
    lines.append(f"\n{len(lines) - 2} runs in {time.time() - started:.0f} s")
    print(lines[-1])
    out = os.environ.get("OUT")
    if out:
        Path(out, "gpu_check.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
