"""The planner's alignment stages against TRL 1.16's own trainers on CPU: one line per case.

    python benchmarks/stage_truth.py            # prints the table (about a minute)

Each case builds a tiny model, hands it to TRL's trainer (DPO, KTO, RewardTrainer, ORPO, GRPO) the way a TRL
user does, and measures one step with tests/planner/truth_stages.py: the bytes autograd saves, the reference
model TRL keeps, the policy's bytes and GRPO's KV cache. The planner is asked for the same step
(tests/planner/test_stage_truth.py `plan_for`). The same comparisons are asserted by that test file.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    from tests.planner.test_stage_truth import GRID, estimate, truth

    cases = [(case, {}) for case in GRID]
    cases += [(("llama", s, m, "bf16"), {"precompute": True}) for s in ("dpo", "kto") for m in ("full", "lora")]
    cases += [(("llama", "grpo", m, "bf16"), {"beta": 0.04}) for m in ("full", "lora")]
    cases += [((f, s, "full", "bf16"), {"checkpointing": True}) for f, s in
              [("llama", "dpo"), ("llama", "rm"), ("llama", "orpo"), ("llama", "grpo")]]
    print("| model | stage | method | precision | variant | rows x seq | TRL saved | planned | error | "
          "reference TRL / planned | KV cache TRL / planned |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    errors = []
    start = time.perf_counter()
    for case, variant in cases:
        real = truth(*case, **variant)
        est = estimate(real)
        ours = est.largest["activations"] + est.largest["logits"]
        err = (ours - real["saved"]) / real["saved"]
        errors.append(abs(err))
        kv = f"{real['kv_cache']:,} / {est.details.kv_cache:,}" if real["kv_cache"] else "–"
        label = ", ".join(f"{k}={v}" for k, v in variant.items()) or "–"
        print(f"| {' | '.join(case)} | {label} | {real['rows']} x {real['seq']} | {real['saved']:,} | {ours:,} | "
              f"{err:+.1%} | {real['reference_param_bytes']:,} / {est.details.reference_weights:,} | {kv} |")
    print(f"\n{len(cases)} cases, worst |error| {max(errors):.1%}, mean {sum(errors) / len(errors):.1%}; "
          f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
