"""Alignment stages against what TRL 1.16's own trainers hold for one training step, on CPU.

The truth is tests/planner/truth_stages.py: DPO, KTO, RewardTrainer (rm), ORPO (trl.experimental.orpo), SimPO
(trl.experimental.cpo's CPOTrainer, loss_type="simpo", cpo_alpha=0.0) and GRPO
built the way a TRL user builds them (a checkpoint folder, a `peft_config` for LoRA), one batch from the trainer's
own dataloader, `trainer._prepare_inputs` (GRPO: generation and scoring) and `trainer.compute_loss`. It reports the
bytes autograd saves, the reference model TRL keeps, the policy's parameters, the rows and length TRL fed, and
GRPO's generation KV cache. The planner is asked for the same step: `batch_size` counts pairs (dpo, orpo, simpo, rm),
examples (kto) or completions (grpo); `seq_len` is the row length TRL fed.
"""

from __future__ import annotations

import functools
import itertools

import pytest

pytest.importorskip("trl")

from planner.memory import estimate_memory
from planner.plan import Plan
from planner.spec import spec_from_config
from planner.target import Machine
from tests.planner.configs import random_config
from tests.planner.truth_stages import STAGES, measure_stage

CPU = Machine(device="cpu")  # the truth runs on CPU: TRL's fused LM head scores every position there
TOLERANCE = 0.10

GRID = [("llama", *case) for case in itertools.product(STAGES, ["full", "lora"], ["fp32", "bf16"])]
# a second family, one method per stage (each case builds a trainer: the file stays near a minute)
GRID += [("qwen2", "dpo", "full", "bf16"), ("qwen2", "kto", "lora", "bf16"), ("qwen2", "rm", "lora", "bf16"),
         ("qwen2", "orpo", "full", "bf16"), ("qwen2", "grpo", "lora", "fp32")]
PRECOMPUTE = [("llama", stage, method, "bf16") for stage in ("dpo", "kto") for method in ("full", "lora")]


def _ids(case) -> str:
    return "-".join(str(x) for x in case)


@functools.cache
def truth(model_type: str, stage: str, method: str, precision: str, batch: int = 2, precompute: bool = False,
          beta: float | None = None, checkpointing: bool = False) -> dict:
    """One measured step, shared by the tests that look at different parts of it."""
    return measure_stage(random_config(model_type, 0, layers=2), stage, method=method, precision=precision,
                         batch=batch, precompute=precompute, beta=beta, gradient_checkpointing=checkpointing)


def plan_for(real: dict, **overrides) -> Plan:
    kw = dict(stage=real["stage"], framework="trl", method=real["method"], precision=real["precision"], batch_size=real["batch"],
              seq_len=real["seq"], lora_rank=4, lora_target="all-linear",
              attention="sdpa", precompute_ref_log_probs=real["precompute"], reference_model=None,
              gradient_checkpointing=real["gradient_checkpointing"])
    # the fused LM head is left to the stage's default: TRL 1.16 installs it in DPO, KTO and GRPO
    # (trl/trainer/utils.py add_fused_lm_head); ORPO and CPO/SimPO build full logits
    if real["stage"] == "simpo":
        kw["nll_term"] = real["cpo_alpha"] != 0
    if real["stage"] == "grpo":
        kw.update(num_generations=real["num_generations"], max_completion_len=real["completion_len"])
        if real["beta"]:
            kw["reference_model"] = real["method"] == "full"  # TRL's default beta is 0.0: no reference
    kw.update(overrides)
    return Plan(**kw)


def estimate(real: dict, **overrides):
    spec = spec_from_config(random_config(real["model_type"], 0, layers=2), source="test")
    return estimate_memory(spec, plan_for(real, **overrides), machine=CPU)


# ----- the harness itself, so the comparisons below cannot pass on a broken measurement -----

def test_bigger_batch_saves_proportionally_more() -> None:
    small = truth("llama", "dpo", "full", "bf16", batch=2)
    large = truth("llama", "dpo", "full", "bf16", batch=4)
    assert (small["rows"], large["rows"]) == (4, 8)
    assert 1.85 < large["saved"] / small["saved"] < 2.05, (small["saved"], large["saved"])


@pytest.mark.parametrize(("stage", "rows", "extra"), [("dpo", 4, 0), ("kto", 2, 0), ("rm", 4, 0), ("orpo", 4, 1),
                                                      ("simpo", 4, 1), ("grpo", 2, 0)])
def test_trl_feeds_the_expected_rows(stage: str, rows: int, extra: int) -> None:
    """Pairs run as 2B rows (chosen then rejected), KTO and GRPO as B; every row is prompt + completion
    (6 + 8 tokens, EOS included), ORPO's and SimPO's (CPOTrainer) with a BOS in front
    (`add_bos_token_if_needed`)."""
    real = truth("llama", stage, "full", "bf16")
    assert (real["rows"], real["seq"], real["trained_forwards"]) == (rows, 14 + extra, 1)
    assert real["saved"] > 0


def test_kv_cache_is_what_the_config_says() -> None:
    """keys + values, every layer, every generated sequence, every position but the last token's."""
    config = random_config("llama", 0, layers=2)
    real = truth("llama", "grpo", "full", "bf16")
    head_dim = config.get("head_dim", config["hidden_size"] // config["num_attention_heads"])
    assert (real["generated"], real["prompt_len"], real["completion_len"], real["kv_len"]) == (2, 6, 8, 13)
    expected = config["num_hidden_layers"] * 2 * real["generated"] * config["num_key_value_heads"] * \
        real["kv_len"] * head_dim * 2
    assert real["kv_cache"] == expected


def test_reference_copies_the_policy_and_precompute_drops_it() -> None:
    full = truth("llama", "dpo", "full", "bf16")
    assert full["reference_param_bytes"] == full["policy_bytes"]
    assert truth("llama", "dpo", "full", "bf16", precompute=True)["reference_bytes"] == 0
    assert truth("llama", "kto", "full", "bf16", precompute=True)["reference_bytes"] == 0
    assert truth("llama", "dpo", "lora", "bf16")["reference_bytes"] == 0  # the adapter is switched off instead
    assert truth("llama", "grpo", "full", "bf16")["reference_bytes"] == 0  # beta 0.0
    assert truth("llama", "grpo", "full", "bf16", beta=0.04)["reference_param_bytes"] == full["policy_bytes"]


# ----- the planner against the harness -----

@pytest.mark.slow
@pytest.mark.parametrize("case", GRID, ids=_ids)
def test_saved_bytes_within_tolerance(case) -> None:
    _assert_saved_close(truth(*case))


def _assert_saved_close(real: dict) -> None:
    est = estimate(real)
    ours = est.largest["activations"] + est.largest["logits"]
    err = (ours - real["saved"]) / real["saved"]
    assert abs(err) <= TOLERANCE, f"{real['rows']}x{real['seq']}: ours {ours} vs TRL {real['saved']} ({err:+.1%})"


@pytest.mark.parametrize("case", GRID, ids=_ids)
def test_policy_weights_exact(case) -> None:
    real = truth(*case)
    assert estimate(real).largest["weights"] == real["policy_bytes"]


@pytest.mark.parametrize("case", GRID, ids=_ids)
def test_reference_weights_exact(case) -> None:
    real = truth(*case)
    assert estimate(real).details.reference_weights == real["reference_param_bytes"]


@pytest.mark.parametrize("case", PRECOMPUTE, ids=_ids)
def test_precomputed_reference_log_probs_keep_no_reference(case) -> None:
    real = truth(*case, precompute=True)
    assert real["reference_bytes"] == 0
    assert estimate(real).details.reference_weights == 0
    _assert_saved_close(real)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_grpo_with_a_kl_term_keeps_a_reference_for_full_tuning(method: str) -> None:
    real = truth("llama", "grpo", method, "bf16", beta=0.04)
    est = estimate(real)
    assert est.details.reference_weights == real["reference_param_bytes"]
    _assert_saved_close(real)


@pytest.mark.parametrize("case", [("llama", "dpo", "full", "bf16"), ("llama", "kto", "lora", "bf16"),
                                  ("llama", "rm", "full", "bf16"), ("llama", "orpo", "full", "bf16"),
                                  ("llama", "simpo", "lora", "bf16"), ("llama", "grpo", "full", "fp32")], ids=_ids)
def test_trl_default_gradient_checkpointing_within_tolerance(case) -> None:
    """TRL's configs default to `gradient_checkpointing=True` (trl/trainer/base_config.py); the Trainer switches it
    on when `train()` starts, with transformers' own checkpointing of every decoder layer."""
    real = truth(*case, checkpointing=True)
    assert real["saved"] < truth(*case)["saved"] / 2
    _assert_saved_close(real)


@pytest.mark.parametrize("case", [c for c in GRID if c[1] == "grpo"], ids=_ids)
def test_grpo_kv_cache_within_tolerance(case) -> None:
    real = truth(*case)
    kv = estimate(real).details.kv_cache
    assert abs(kv - real["kv_cache"]) <= TOLERANCE * real["kv_cache"], (kv, real["kv_cache"])


@pytest.mark.parametrize("stage", [s for s in STAGES if s != "grpo"])
def test_no_kv_cache_without_generation(stage: str) -> None:
    real = truth("llama", stage, "full", "bf16")
    assert real["kv_cache"] == 0
    assert estimate(real).details.kv_cache == 0
