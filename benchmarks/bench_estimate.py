"""How fast the planner answers. Prints a table; never run as a timed test.

    python benchmarks/bench_estimate.py

* cold `ftplan estimate` wall time, a fresh interpreter each run (target < 0.5 s), next to
  `python -c "import torch"` in the same run for scale. With PYTHONDONTWRITEBYTECODE set, every module edited
  since its bytecode was cached is compiled again on each run, which an installed ftplan does not do: run it
  with PYTHONPYCACHEPREFIX=<dir> and without that variable to measure what users get;
* in-process `estimate()` latency (target < 1 ms) on several model sizes;
* `--max-batch` search latency (target < 20 ms);
* both again with every recipe setting on at once ("all options": Liger kernels, the fused loss, activation
  offloading, packing, DoRA, 8-bit / paged / GaLore / APOLLO optimizers, fp16 compute, ZeRO-3 or TP over 8 GPUs
  with context parallel), the slowest path through the planner.
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

from planner.errors import FtplanError  # noqa: E402

try:
    from planner.memo import clear as clear_memos
except ImportError:  # before the planner memoized anything: every call is a new plan's
    def clear_memos() -> None:
        pass
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


# every recipe setting issue 11 added, switched on together; the variants cover the optimizers and layouts
ALL_OPTIONS = dict(batch_size=4, seq_len=4096, gradient_checkpointing=True, liger_kernels="default",
                   fused_loss=True, activation_offload="saved", packing=True, gpus=8, context_parallel=2)
VARIANTS = {
    "lora": dict(method="lora", use_dora=True, optimizer="paged-adamw-8bit", precision="fp16-mixed", zero=3),
    "qlora": dict(method="qlora", use_dora=True, optimizer="paged-adamw-8bit", precision="fp16-mixed",
                  weights_dtype="fp16", zero=3),
    "full galore": dict(method="full", optimizer="galore-adamw-8bit", zero=3),
    "full apollo tp": dict(method="full", optimizer="apollo-adamw", tensor_parallel=2, zero=1),
}


def all_options_plan(spec, variant: str) -> Plan:
    """The variant with every option on; DoRA dropped where the model refuses it (fused MoE experts)."""
    fields = {**ALL_OPTIONS, **VARIANTS[variant]}
    try:
        Plan.build(**fields)
        estimate(spec, fields)
    except FtplanError:
        fields["use_dora"] = False
    return Plan.build(**fields)


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
    for name in ("7b", "70b", "mixtral-8x7b", "deepseek-v3"):
        spec = load_spec(name)
        for variant in VARIANTS:
            plan = all_options_plan(spec, variant)
            dropped = VARIANTS[variant].get("use_dora") and not plan.use_dora
            label = f"estimate() {name} all options {variant}{' (no DoRA)' if dropped else ''}"
            rows.append((label, _warm(lambda s=spec, p=plan: estimate(s, p), 200), 0.001))
            # a plan seen for the first time: nothing memoized (planner.memo) for it yet
            rows.append((f"{label}, new plan", _warm(lambda s=spec, p=plan: (clear_memos(), estimate(s, p)), 200),
                         0.001))
    spec = load_spec("llama-3.1-8b")
    for method, capacity in (("lora", 80 * GIB), ("full", 80 * GIB), ("qlora", 24 * GIB)):
        plan = Plan(method=method, seq_len=2048, gradient_checkpointing=True)
        found = max_batch_size(spec, plan, capacity)
        rows.append((f"--max-batch llama-3.1-8b {method} in {capacity // GIB} GiB (= {found})",
                     _warm(lambda p=plan, c=capacity: max_batch_size(spec, p, c), 30), 0.020))
    for name in ("7b", "70b", "mixtral-8x7b", "deepseek-v3"):
        spec = load_spec(name)
        for variant in VARIANTS:
            plan = all_options_plan(spec, variant)
            found = max_batch_size(spec, plan, 80 * GIB)
            label = f"--max-batch {name} all options {variant} in 80 GiB (= {found})"
            rows.append((label, _warm(lambda s=spec, p=plan: max_batch_size(s, p, 80 * GIB), 20), 0.020))
            rows.append((f"{label}, new plan",
                         _warm(lambda s=spec, p=plan: (clear_memos(), max_batch_size(s, p, 80 * GIB)), 20), 0.020))

    width = max(len(r[0]) for r in rows)
    print(f"{'measurement':<{width}}  {'median':>10}  {'target':>8}  ok")
    for label, seconds, target in rows:
        shown = f"{seconds * 1000:.2f} ms" if seconds < 1 else f"{seconds:.2f} s"
        tgt = "" if target is None else (f"{target * 1000:.0f} ms" if target < 1 else f"{target:.1f} s")
        ok = "" if target is None else ("yes" if seconds <= target else "NO")
        print(f"{label:<{width}}  {shown:>10}  {tgt:>8}  {ok}")


if __name__ == "__main__":
    main()
