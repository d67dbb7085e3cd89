"""Instrumentation overhead of `ftplan diagnose`: the same loop with the gradient monitor and without.

    python benchmarks/bench_monitor.py [--steps 12] [--device cpu|cuda] [--cases full,lora,small]
                                       [--precision fp32|bf16-mixed] [--threads N] [--repeats 3]

The baseline (`PlainMonitor`) does what an uninstrumented HF-style loop does each step:
`clip_grad_norm_` and one logged loss. The monitor adds per-parameter norms reduced
per layer and per module kind, the first micro-batch's norm (noise scale), the
update-to-weight ratios (a weight snapshot around the optimizer step, with a host read of
its own) and one packed host sync before the optimizer step. Step times are medians over the steps after the first two (warm-up), and over
alternating repeats of the two loops.
It also clocks the monitor's own calls, which measures the added work without the noise
of comparing two runs. Target: overhead <= 10 % (goal 5 %).

On a CPU a case is 7 runs of 2,048 tokens per step through a 20M-parameter model, and the defaults keep it
to minutes: fp32, since CPUs without bf16 matrix units emulate bf16 (a LoRA step took 16 s in bf16-mixed
against 4 s in fp32 on one core of a Xeon without AMX), which would also inflate the step the overhead is
divided by. `--threads 1` on a shared machine: two intra-op threads contending with other processes for two
cores spin-wait (the same LoRA step took 20-30 s). `--cases lora --device cpu --threads 1` took 7 minutes on
a loaded 2-core machine; bf16-mixed with two threads there (20-45 s steps, 252 steps for the three cases)
would take hours.
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

from diagnostics.loop import resolve_device, run  # noqa: E402
from diagnostics.monitor import GradMonitor, PlainMonitor  # noqa: E402
from diagnostics.report import DiagnoseSettings  # noqa: E402
from planner.plan import Plan  # noqa: E402

CONFIG = ('{"model_type": "llama", "hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 6, '
          '"num_attention_heads": 8, "num_key_value_heads": 4, "vocab_size": 2048}')
CASES = {"full": ("full", 256, 4), "lora": ("lora", 256, 4), "small": ("full", 64, 2)}  # method, seq_len, batch


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
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma list of {', '.join(CASES)}")
    parser.add_argument("--precision", default=None, help="default: bf16-mixed on CUDA, fp32 on a CPU")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"--cases {','.join(unknown)}: not a case; choose from {', '.join(CASES)}")
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    on_cuda = resolve_device(args.device).startswith("cuda")
    precision = args.precision or ("bf16-mixed" if on_cuda else "fp32")
    config = Path(tempfile.mkdtemp()) / "config.json"
    config.write_text(CONFIG)
    print(f"{precision}, {torch.get_num_threads()} thread(s)")
    print(f"{'case':<40} {'plain s/step':>12} {'monitor s/step':>15} {'end-to-end':>10} {'monitor work':>13}")
    for case in cases:
        method, seq, batch = CASES[case]
        settings = DiagnoseSettings(model=str(config), steps=args.steps, device=args.device,
                                    plan=Plan(method=method, precision=precision, batch_size=batch,
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
