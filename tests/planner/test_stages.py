"""Alignment stages: the models each stage keeps, against transformers' own models, and how the plan moves.

TRL's trainers themselves are measured in test_stage_truth.py; here the truths are transformers' models on
the meta device (a reward model's parameters, a reference copy's bytes) and a real `generate` KV cache.
"""

from __future__ import annotations

import pytest

from planner.memory import estimate_memory
from planner.params import count_params
from planner.plan import STAGES, Plan
from planner.service import plan_run
from planner.spec import load_spec, spec_from_config
from planner.stages import stage_spec
from planner.target import Machine, resolve_target
from tests.planner.configs import EXACT_TYPES, random_config
from tests.planner.truth import hf_config

CPU = Machine(device="cpu")


def _spec(model_type: str = "llama", seed: int = 0):
    config = random_config(model_type, seed, layers=2)
    return config, spec_from_config(config, source="test")


@pytest.mark.parametrize("model_type", EXACT_TYPES)
def test_reward_model_parameters_match_a_sequence_classifier(model_type: str) -> None:
    """TRL's RewardTrainer trains AutoModelForSequenceClassification(num_labels=1): the LM head goes, a
    one-wide `score` head comes (never tied to the embeddings)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    config, spec = _spec(model_type)
    hf = hf_config(config)
    hf.num_labels = 1
    try:
        with torch.device("meta"):
            model = AutoModelForSequenceClassification.from_config(hf)
    except ValueError:
        pytest.skip(f"transformers has no sequence classifier for {model_type}")
    counts = count_params(stage_spec(spec, Plan(stage="rm", framework="trl")))
    assert counts.total == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("method", ["full", "freeze"])
@pytest.mark.parametrize("precision", ["bf16", "bf16-mixed", "fp32"])
def test_reference_copy_is_the_model_in_its_frozen_dtype(method: str, precision: str) -> None:
    """The reference is the model loaded frozen: every parameter in the dtype frozen weights have."""
    from tests.planner.truth import meta_model, torch_dtype

    config, spec = _spec()
    plan = Plan(stage="dpo", method=method, precision=precision, freeze_trainable_layers=1)
    model = meta_model(config).to(torch_dtype(plan.compute_dtype))
    expected = sum(p.numel() * p.element_size() for p in model.parameters())
    assert estimate_memory(spec, plan, machine=CPU).details.reference_weights == expected


@pytest.mark.parametrize(("changes", "kept"), [
    ({"stage": "dpo"}, True), ({"stage": "kto"}, True), ({"stage": "ppo"}, True),
    ({"stage": "orpo"}, False), ({"stage": "simpo"}, False), ({"stage": "rm"}, False), ({"stage": "sft"}, False),
    ({"stage": "grpo"}, False),  # TRL's default beta 0.0
    ({"stage": "grpo", "reference_model": True}, True),
    ({"stage": "dpo", "method": "lora"}, False),  # the adapter is disabled instead
    ({"stage": "dpo", "method": "qlora"}, False),
    ({"stage": "dpo", "precompute_ref_log_probs": True}, False),
    ({"stage": "dpo", "method": "lora", "reference_model": True}, True),  # a separate ref_model given
])
def test_which_stages_keep_a_reference_model(changes: dict, kept: bool) -> None:
    _, spec = _spec()
    est = estimate_memory(spec, Plan(**changes), machine=CPU)
    assert (est.details.reference_weights > 0) == kept
    assert est.largest["reference"] == est.details.reference_weights


@pytest.mark.parametrize(("changes", "fused"), [
    ({"stage": "grpo"}, True),  # only TRL's GRPOTrainer runs it, and it always installs its fused LM head
    ({"stage": "dpo", "framework": "trl"}, True), ({"stage": "kto", "framework": "trl"}, True),
    ({"stage": "dpo"}, False), ({"stage": "sft"}, False),  # LLaMA-Factory builds the logits
    ({"stage": "orpo", "framework": "trl"}, False),  # experimental ORPO calls the model without labels
    ({"stage": "grpo", "fused_loss": False}, False),  # axolotl's pinned TRL 1.8 has no fused head
])
def test_fused_head_left_unset_follows_the_stages_trainer(changes: dict, fused: bool) -> None:
    _, spec = _spec()
    unset = estimate_memory(spec, Plan(seq_len=64, **changes), machine=CPU)
    stated = estimate_memory(spec, Plan(seq_len=64, **{"fused_loss": fused, **changes}), machine=CPU)
    assert unset.total == stated.total
    full = estimate_memory(spec, Plan(seq_len=64, **{**changes, "fused_loss": False}), machine=CPU)
    assert (unset.largest["logits"] < full.largest["logits"]) == fused


def test_paired_stages_train_on_twice_the_rows() -> None:
    """Chosen and rejected share one forward: B pairs save what 2B SFT sequences save."""
    _, spec = _spec()
    for stage in ("dpo", "orpo", "simpo"):
        paired = estimate_memory(spec, Plan(stage=stage, batch_size=2, seq_len=32), machine=CPU)
        sft = estimate_memory(spec, Plan(batch_size=4, seq_len=32), machine=CPU)
        assert paired.details.activations_saved_in_blocks == sft.details.activations_saved_in_blocks
        assert paired.largest["logits"] == sft.largest["logits"]


def test_reward_model_keeps_no_vocabulary_logits() -> None:
    _, spec = _spec()
    rm = estimate_memory(spec, Plan(stage="rm", framework="trl", seq_len=64), machine=CPU)
    dpo = estimate_memory(spec, Plan(stage="orpo", seq_len=64), machine=CPU)
    assert rm.largest["logits"] == 0 < dpo.largest["logits"]


def test_reference_forward_runs_while_the_policy_activations_are_alive() -> None:
    _, spec = _spec()
    lora = estimate_memory(spec, Plan(stage="dpo", method="lora", seq_len=64), machine=CPU)
    orpo = estimate_memory(spec, Plan(stage="orpo", method="lora", seq_len=64), machine=CPU)
    assert lora.details.no_grad_forward > 0 == orpo.details.no_grad_forward
    forward = lora.phases[0]
    assert forward.parts["temporaries"] >= lora.details.no_grad_forward


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "mistral"])
def test_generation_kv_cache_matches_transformers_generate(model_type: str) -> None:
    """`generate`'s DynamicCache for the sequences GRPO generates at once, measured on a real tiny model."""
    import torch
    from transformers import AutoModelForCausalLM

    config, spec = _spec(model_type)
    config = {**config, "sliding_window": None} if model_type == "mistral" else config
    spec = spec_from_config(config, source="test")
    prompt, completion, batch, accum = 6, 10, 2, 2
    model = AutoModelForCausalLM.from_config(hf_config(config), dtype=torch.bfloat16).eval()
    ids = torch.randint(3, config["vocab_size"], (batch * accum, prompt))
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=completion,
                         min_new_tokens=completion, do_sample=False, return_dict_in_generate=True)
    cache = out.past_key_values
    real = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    plan = Plan(stage="grpo", precision="bf16", batch_size=batch, grad_accum=accum, seq_len=prompt + completion,
                max_completion_len=completion)
    ours = estimate_memory(spec, plan, machine=CPU).details.kv_cache
    assert ours == real


def test_vllm_colocate_reserves_its_share_and_server_holds_nothing() -> None:
    from planner.target import resolve_target

    _, spec = _spec()
    gpu = resolve_target("H100", None)
    plan = Plan(stage="grpo", seq_len=64)
    colocate = estimate_memory(spec, plan.with_(vllm="colocate"), machine=gpu)
    server = estimate_memory(spec, plan.with_(vllm="server"), machine=gpu)
    assert colocate.details.vllm_reserved == int(0.3 * gpu.capacity)
    assert colocate.peak["generation"] == colocate.details.vllm_reserved
    assert server.details.kv_cache == 0 == server.largest["generation"]
    assert [p.name for p in server.phases] == ["forward", "backward", "optimizer"]


def test_suggestions_know_the_stage() -> None:
    from planner.service import plan_run
    from planner.spec import load_spec
    from planner.target import resolve_target

    est = plan_run(load_spec("7b"), {"stage": "dpo"}, resolve_target("H100", None))
    titles = {c.title: c for c in est.suggestions}
    precompute = titles["Precompute the reference log-probs"]
    assert precompute.saved >= est.memory.details.reference_weights
    assert "reference" in titles["Train LoRA adapters instead"].reason


def test_vllm_outside_generating_stages_is_refused() -> None:
    from planner.errors import FtplanError

    with pytest.raises(FtplanError, match="generates completions"):
        Plan.build(stage="dpo", vllm="colocate")


@pytest.mark.parametrize("framework", ["llamafactory", "trl"])
@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_plans_end_to_end_under_each_framework(stage: str, framework: str) -> None:
    """Every stage's head, reference and generation path through the whole service (assumptions, warnings,
    suggestions, the largest batch) for every method, as the CLI and the TUI ask for it."""
    spec = load_spec("tiny-llama")
    for method in ("full", "freeze", "lora", "qlora"):
        for nll_term in ((True, False) if stage == "simpo" else (True,)):
            plan = Plan(stage=stage, framework=framework, method=method, seq_len=256, nll_term=nll_term)
            result = plan_run(spec, plan, resolve_target(gpu_memory="80GiB"), search_batch=True)
            assert result.memory.total > 0 and result.fit is not None
            texts = [*result.assumptions, *(w.message for w in result.warnings), *(s.title for s in result.suggestions)]
            assert all(isinstance(t, str) and t.strip() and "{" not in t for t in texts), texts


def test_bf16_on_a_gpu_without_it_runs_emulated_but_flash_attention_does_not_run() -> None:
    """torch.cuda.is_bf16_supported() counts emulation, so the Trainer takes bf16 on a T4 (TRL's GRPO notebook
    trains that way); flash-attention 2 has no kernel below compute capability 8.0."""
    spec = load_spec("tiny-llama")
    t4 = resolve_target("T4")
    bf16 = plan_run(spec, Plan(precision="bf16-mixed"), t4)
    assert [(w.code, w.severity) for w in bf16.warnings if w.code == "no_bf16"] == [("no_bf16", "warning")]
    assert bf16.time is not None and bf16.time.step_seconds > plan_run(spec, Plan(precision="fp16-mixed"), t4).time.step_seconds
    flash = plan_run(spec, Plan(precision="fp16-mixed", attention="flash"), t4)
    assert {w.code: w.severity for w in flash.warnings}.get("no_flash_attention") == "error"


def test_grpo_batches_hold_whole_prompt_groups() -> None:
    """trl GRPOConfig.__post_init__ refuses a generation batch (micro-batch x processes x steps_per_generation,
    the accumulation by default) that is not a multiple of num_generations: the searches and the suggestions
    only offer batches it takes, and a plan it refuses is an error."""
    spec = load_spec("tiny-llama")
    target = resolve_target(gpu_memory="24GiB")
    grpo = Plan(stage="grpo", batch_size=8, num_generations=8, seq_len=256)
    best = plan_run(spec, grpo, target, search_batch=True).fit.max_batch
    assert best > 8 and best % 8 == 0
    assert plan_run(spec, grpo.with_(gpus=2), target, search_batch=True).fit.max_batch % 4 == 0
    refused = plan_run(spec, grpo.with_(batch_size=4), target)
    assert [f.severity for f in refused.warnings if f.code == "prompt_groups"] == ["error"]
    assert not [f for f in plan_run(spec, grpo.with_(batch_size=4, grad_accum=2), target).warnings
                if f.code == "prompt_groups"]
    tight = resolve_target(gpu_memory=f"{plan_run(spec, grpo.with_(batch_size=2), target).memory.total}B")
    for s in plan_run(spec, grpo, tight).suggestions:
        changed = grpo.with_(**s.changes)
        assert changed.batch_size * changed.gpus * changed.grad_accum % 8 == 0, s.title


def test_sequence_searches_keep_the_completion_within_the_sequence() -> None:
    """A shorter sequence still holds --max-completion-len (a GRPO plan whose prompt cannot shrink below 0)."""
    spec = load_spec("tiny-llama")
    grpo = Plan(stage="grpo", batch_size=8, seq_len=4096, max_completion_len=1024)
    small = resolve_target(gpu_memory=f"{plan_run(spec, grpo.with_(seq_len=2048), resolve_target('H100')).memory.total}B")
    result = plan_run(spec, grpo, small, search_seq=True)
    assert 1024 <= result.fit.max_seq_len < 4096
    for s in result.suggestions:
        assert grpo.with_(**s.changes).seq_len >= 1024, s.title
    tiny = resolve_target(gpu_memory="1MiB")  # nothing fits: still an answer, not an error
    assert plan_run(spec, grpo, tiny, search_seq=True).fit.max_seq_len == 0
