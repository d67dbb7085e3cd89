"""Refactor guard: every number the planner produces, over a grid of models x plans, against a stored baseline.

    python benchmarks/check_grid.py            # compare with benchmarks/data/grid_baseline.json.gz
    python benchmarks/check_grid.py --write    # store a new baseline (only after a deliberate model change)

A refactor must leave every estimate byte-identical: per-phase parts, totals, overhead,
parameter counts, fit, suggestions (the settings they change and the new total) and step time. The baseline was
written by the code before the pipeline refactor; the script reads the public API when it
exists and the older module layout otherwise, so the same file checks both sides.
It also asserts that the peak phase's parts plus the overhead add up to the total.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BASELINE = ROOT / "benchmarks" / "data" / "grid_baseline.json.gz"

MODELS = ("qwen2.5-0.5b-instruct", "7b", "mixtral-8x7b", "gemma-2-2b")
GRID = {
    "method": ("full", "freeze", "lora", "qlora"),
    "precision": ("fp32", "bf16", "bf16-mixed", "fp16-mixed"),
    "optimizer": ("adamw", "adamw-8bit", "adafactor", "sgd-momentum"),
    "gradient_checkpointing": (False, True),
    "parallel": ((1, 0), (4, 0), (4, 2), (4, 3)),
    "attention": ("eager", "sdpa"),
}
GPU = "A100 80GB"


def _plans():
    keys = list(GRID)
    for i, values in enumerate(itertools.product(*GRID.values())):
        fields = dict(zip(keys, values, strict=True))
        gpus, zero = fields.pop("parallel")
        # vary the rest deterministically so each setting meets every other at least once
        fields.update(gpus=gpus, zero=zero, batch_size=1 + i % 3, seq_len=(512, 1024, 2048)[i % 3 - 1],
                      grad_accum=1 + i % 2, fused_loss=i % 5 == 0, lora_rank=(8, 16)[i % 2],
                      offload_optimizer=zero > 0 and i % 7 == 0)
        yield fields


def _estimate(spec, fields: dict, target):
    try:  # the pipeline's service
        from planner.service import plan_run

        return plan_run(spec, fields, target)
    except ImportError:  # the layout before it
        from planner.estimate import estimate

        from planner.plan import Plan

        return estimate(spec, Plan.build(**fields), target)


def _target():
    from planner.fit import GpuTarget  # re-exported there on both sides

    return GpuTarget.of_catalog(GPU)


def digest(result) -> dict:
    mem = result.memory
    phases = mem.phases if isinstance(mem.phases, list) else list(mem.phases.values())
    peak = next(p for p in phases if p.name == mem.peak_phase)
    return {
        "total": mem.total, "overhead": mem.overhead, "peak_phase": mem.peak_phase,
        "phases": {p.name: {**{k: v for k, v in p.parts.items() if v}, "allocated": p.allocated} for p in phases},
        "peak_sums": sum(peak.parts.values()) + mem.overhead == mem.total,
        "cpu_offload": mem.cpu_offload,
        "params": [result.params.total, result.params.trainable, result.params.adapter],
        "fit": [result.fit.fits, result.fit.headroom] if result.fit else None,
        # a suggestion by what it changes, not its wording
        "suggestions": [[s.changes, s.new_total] for s in result.suggestions],
        "step_seconds": round(result.time.step_seconds, 9) if result.time else None,
    }


def run() -> dict[str, dict]:
    from planner.errors import FtplanError
    from planner.spec import load_spec

    target = _target()
    out: dict[str, dict] = {}
    for model in MODELS:
        spec = load_spec(model)
        for fields in _plans():
            key = model + " " + json.dumps(fields, sort_keys=True)
            try:
                out[key] = digest(_estimate(spec, fields, target))
            except FtplanError as exc:
                out[key] = {"invalid": type(exc).__name__}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="store this run as the baseline")
    args = parser.parse_args()
    start = time.perf_counter()
    now = run()
    seconds = time.perf_counter() - start
    valid = sum("invalid" not in d for d in now.values())
    not_summing = [k for k, d in now.items() if "invalid" not in d and not d["peak_sums"]]
    if args.write:
        BASELINE.parent.mkdir(parents=True, exist_ok=True)
        BASELINE.write_bytes(gzip.compress(json.dumps(now, sort_keys=True).encode(), mtime=0))
        print(f"wrote {BASELINE.relative_to(ROOT)}: {len(now)} plans ({valid} valid) in {seconds:.1f} s")
        return 0
    before = json.loads(gzip.decompress(BASELINE.read_bytes()))
    changed = [k for k in before if before[k] != now.get(k)]
    missing = sorted(set(now) ^ set(before))
    print("| check | result |\n|---|---|")
    print(f"| plans (models x settings) | {len(now)} ({len(MODELS)} x {len(now) // len(MODELS)}), {valid} valid |")
    print(f"| identical to the baseline | {len(now) - len(changed)} of {len(before)} |")
    print(f"| peak parts + overhead == total | {valid - len(not_summing)} of {valid} |")
    print(f"| time | {seconds:.1f} s |")
    for key in (changed + missing)[:5]:
        print(f"\nchanged: {key}\n  before {before.get(key)}\n  now    {now.get(key)}")
    return 1 if changed or missing or not_summing else 0


if __name__ == "__main__":
    sys.exit(main())
