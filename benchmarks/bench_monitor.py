"""Instrumentation overhead of `ftplan diagnose`: the same loop with the gradient monitor and without.

    python benchmarks/bench_monitor.py [--steps 12] [--device cpu|cuda]

The baseline (`PlainMonitor`) does what an uninstrumented HF-style loop does each step:
`clip_grad_norm_` and one logged loss. The monitor adds per-parameter norms reduced
per layer and per module kind, the first micro-batch's norm (noise scale), the
update-to-weight ratios (a weight snapshot around the optimizer step, with a host read of
its own) and one packed host sync before the optimizer step. Step times are medians over the steps after the first two (warm-up), and over
alternating repeats of the two loops.
It also clocks the monitor's own calls, which measures the added work without the noise
of comparing two runs. Target: overhead <= 10 % (goal 5 %).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import ClassVar

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diagnostics.loop import run  # noqa: E402
from diagnostics.monitor import GradMonitor, PlainMonitor  # noqa: E402
from diagnostics.report import DiagnoseSettings  # noqa: E402
from planner.plan import Plan  # noqa: E402

CONFIG = ('{"model_type": "llama", "hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 6, '
          '"num_attention_heads": 8, "num_key_value_heads": 4, "vocab_size": 2048}')


class TimedMonitor(GradMonitor):
    """GradMonitor that clocks its own calls: the work the instrumentation adds, free of machine noise."""

    spent: ClassVar[list[float]] = []

    def _timed(name):
        def call(self, *args, **kwargs):
            start = time.perf_counter()
            try:
                return getattr(GradMonitor, name)(self, *args, **kwargs)
            finally:
                TimedMonitor.spent.append(time.perf_counter() - start)
        return call

    after_first_micro_batch = _timed("after_first_micro_batch")
    after_backward = _timed("after_backward")
    before_step = _timed("before_step")
    after_step = _timed("after_step")
    finish = _timed("finish")


def median_step(settings: DiagnoseSettings, monitor_class) -> float:
    report = run(settings, monitor_class=monitor_class)
    return statistics.median(r.step_time for r in report.records[2:])


def monitor_share(settings: DiagnoseSettings) -> float:
    """Seconds inside the monitor per step / seconds per step (steps after the first two)."""
    TimedMonitor.spent = []
    report = run(settings, monitor_class=TimedMonitor)
    calls_per_step = len(TimedMonitor.spent) // len(report.records)
    inside = sum(TimedMonitor.spent[2 * calls_per_step:])
    return inside / sum(r.step_time for r in report.records[2:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    config = Path(tempfile.mkdtemp()) / "config.json"
    config.write_text(CONFIG)
    print(f"{'case':<40} {'plain s/step':>12} {'monitor s/step':>15} {'end-to-end':>10} {'monitor work':>13}")
    for method, seq, batch in (("full", 256, 4), ("lora", 256, 4), ("full", 64, 2)):
        settings = DiagnoseSettings(model=str(config), steps=args.steps, device=args.device,
                                    plan=Plan(method=method, precision="bf16-mixed", batch_size=batch,
                                              grad_accum=2, seq_len=seq))
        # alternate the two, three times each, so machine noise hits both alike
        plains, fulls = [], []
        for _ in range(args.repeats):
            plains.append(median_step(settings, PlainMonitor))
            fulls.append(median_step(settings, GradMonitor))
        plain, full = statistics.median(plains), statistics.median(fulls)
        share = monitor_share(settings)
        label = f"{method}, 6x512 llama, {batch}x{seq} tokens x2 accum"
        print(f"{label:<40} {plain:>12.4f} {full:>15.4f} {(full - plain) / plain:>10.1%} {share:>13.1%}",
              flush=True)
    print("end-to-end: (monitor - plain) / plain, noisy on a shared CPU; monitor work: time spent inside the "
          "monitor's calls / step time")


if __name__ == "__main__":
    main()
