"""The fake-tensor trace of one training step next to the planner, over presets and methods.

    python benchmarks/bench_trace.py [--batch-size 1] [--seq-len 1024] [--models tiny-llama,7b]

For each preset x method x gradient checkpointing: the traced allocated peak
(`diagnostics.trace.trace_step`), the planner's allocated peak for the same plan
(`estimate_memory(...).peak_allocated`: no CUDA context, no fragmentation), their difference
(planner - trace) / trace, and how long the trace took (wall and CPU seconds of the step, and
the build). GiB = 2^30 bytes. Prints a table; never gates CI.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diagnostics.trace import planner_report, trace_step  # noqa: E402
from planner.errors import FtplanError  # noqa: E402
from planner.plan import Plan  # noqa: E402
from planner.spec import resolve_model  # noqa: E402
from planner.units import GIB  # noqa: E402

MODELS = ("tiny-llama", "llama-3.2-1b", "7b", "70b", "mixtral-8x7b")
METHODS = ("full", "lora")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated presets")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--precision", default="bf16-mixed")
    args = parser.parse_args(argv)

    header = (f"{'model':<14} {'method':<6} {'ckpt':<4} {'trace GiB':>11} {'planner GiB':>11} {'diff':>8} "
              f"{'step s':>7} {'cpu s':>6} {'build s':>7} {'ops':>7}")
    print(f"one step, micro-batch {args.batch_size} x {args.seq_len}, {args.precision}, adamw (foreach); "
          "allocated peak, GiB = 2^30 bytes; diff = (planner - trace) / trace")
    print(header)
    print("-" * len(header))
    began = time.perf_counter()
    for model in args.models.split(","):
        source = resolve_model(model)
        for method in args.methods.split(","):
            for ckpt in (False, True):
                plan = Plan(method=method, precision=args.precision, batch_size=args.batch_size,
                            seq_len=args.seq_len, gradient_checkpointing=ckpt)
                try:
                    trace = trace_step(source.config, plan, name=source.name)
                except FtplanError as exc:
                    print(f"{model:<14} {method:<6} {'on' if ckpt else 'off':<4} {exc}")
                    continue
                report = planner_report(trace, source.config, source=source.source, name=source.name)
                planned = f"{report.planner.peak_allocated / GIB:11.3f}" if report.planner else f"{'-':>11}"
                diff = f"{report.difference:+8.3%}" if report.difference is not None else f"{'-':>8}"
                print(f"{model:<14} {method:<6} {'on' if ckpt else 'off':<4} {trace.peak_allocated / GIB:11.3f} "
                      f"{planned} {diff} {trace.seconds:7.1f} {trace.cpu_seconds:6.1f} "
                      f"{trace.build_seconds:7.1f} {trace.ops:7,}", flush=True)
    print(f"total {time.perf_counter() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
