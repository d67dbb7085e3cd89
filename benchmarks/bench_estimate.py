"""How fast the planner answers. Prints a table; never run as a timed test.

    python benchmarks/bench_estimate.py

* cold `ftplan estimate` wall time, a fresh interpreter each run (target < 0.5 s), next to
  `python -c "import torch"` in the same run for scale;
* in-process `estimate()` latency (target < 1 ms) on several model sizes;
* `--max-batch` search latency (target < 20 ms).
"""

from __future__ import annotations

import contextlib
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from planner.fit import max_batch_size  # noqa: E402
from planner.plan import Plan  # noqa: E402
from planner.service import plan_run as estimate  # noqa: E402
from planner.spec import load_spec  # noqa: E402
from planner.units import GIB  # noqa: E402


def _cold(cmd: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _warm(fn, runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _import_time(code: str, runs: int) -> float:
    """Seconds `code` takes inside a fresh interpreter (its own start-up excluded), median of `runs`."""
    probe = f"import time; t = time.perf_counter(); {code}; print(time.perf_counter() - t)"
    return statistics.median(
        float(subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True,
                             cwd=ROOT).stdout.split()[-1]) for _ in range(runs))


def main() -> None:
    rows = []
    rows.append(("`import planner` in a fresh interpreter", _import_time("import planner", 15), 0.100))
    rows.append(("`import planner; planner.estimate('7b', method='lora', gpu='RTX 4090')` (first call)",
                 _import_time("import planner; planner.estimate('7b', method='lora', gpu='RTX 4090')", 7), 0.5))
    estimate_cmd = [sys.executable, "-m", "tui", "estimate", "--model", "7b", "--method", "full"]
    rows.append(("cold `ftplan estimate --model 7b --method full`", _cold(estimate_cmd, 7), 0.5))
    rows.append(("cold `ftplan estimate ... --json`", _cold([*estimate_cmd, "--json"], 7), 0.5))
    with contextlib.suppress(subprocess.CalledProcessError):  # torch is optional for the planner
        rows.append(('cold `python -c "import torch"` (for scale)',
                     _cold([sys.executable, "-c", "import torch"], 3), None))
    for name in ("llama-3.2-1b", "7b", "70b", "mixtral-8x7b", "deepseek-v3"):
        spec = load_spec(name)
        for method in ("full", "qlora"):
            plan = Plan(method=method, batch_size=4, seq_len=2048, gradient_checkpointing=True)
            rows.append((f"estimate() {name} {method}", _warm(lambda s=spec, p=plan: estimate(s, p), 200), 0.001))
    spec = load_spec("llama-3.1-8b")
    for method, capacity in (("lora", 80 * GIB), ("full", 80 * GIB), ("qlora", 24 * GIB)):
        plan = Plan(method=method, seq_len=2048, gradient_checkpointing=True)
        found = max_batch_size(spec, plan, capacity)
        rows.append((f"--max-batch llama-3.1-8b {method} in {capacity // GIB} GiB (= {found})",
                     _warm(lambda p=plan, c=capacity: max_batch_size(spec, p, c), 30), 0.020))

    width = max(len(r[0]) for r in rows)
    print(f"{'measurement':<{width}}  {'median':>10}  {'target':>8}  ok")
    for label, seconds, target in rows:
        shown = f"{seconds * 1000:.2f} ms" if seconds < 1 else f"{seconds:.2f} s"
        tgt = "" if target is None else (f"{target * 1000:.0f} ms" if target < 1 else f"{target:.1f} s")
        ok = "" if target is None else ("yes" if seconds <= target else "NO")
        print(f"{label:<{width}}  {shown:>10}  {tgt:>8}  {ok}")


if __name__ == "__main__":
    main()
