"""Packed and padding-free micro-batches: the bytes autograd saves for a batch TRL's padding-free collator makes,
the three readers' packing keys, the exports that write them back, and the errors for settings that clash.

The truth is a real step's input: TRL's DataCollatorForLanguageModeling(padding_free=True) flattens the sequences
into one row with position_ids restarting per sequence, and a tiny transformers model runs it; what autograd
saves is counted with saved_tensors_hooks (tests/planner/truth.py)."""

from __future__ import annotations

import pytest
import yaml

from planner.configs import EXPORT_FORMATS, read_run_config, write_export
from planner.errors import FtplanError
from planner.fields import worded
from planner.memory import estimate_memory
from planner.plan import Plan
from planner.service import plan_run
from planner.spec import load_spec, spec_from_config
from planner.target import Machine
from tests.planner.configs import random_config
from tests.planner.truth import build_model, model_storages, saved_storages, storage_bytes

CPU = Machine(device="cpu")
LENGTHS = [40, 25, 31]  # the longest is the cap: padded rows would be 3 x 40
MODEL = "8b"


def _padding_free_saved_bytes(model, lengths: list[int], vocab: int) -> int:
    """Saved bytes of forward + loss on the batch TRL's padding-free collator makes from `lengths` sequences."""
    import torch
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    g = torch.Generator().manual_seed(0)
    examples = [{"input_ids": torch.randint(3, vocab, (n,), generator=g).tolist()} for n in lengths]
    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(examples)
    assert batch["input_ids"].shape == (1, sum(lengths))  # the collator's own shape: one flattened row
    with saved_storages(model_storages(model)) as saved:
        out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], labels=batch["labels"])
    nbytes = storage_bytes(saved)
    saved.clear()
    del out
    return nbytes


@pytest.mark.parametrize("kernel", ["sdpa", "eager"])
def test_padding_free_saves_what_the_flattened_row_saves(kernel: str) -> None:
    config = random_config("llama", 0, layers=2)
    real = _padding_free_saved_bytes(build_model(config, kernel=kernel), LENGTHS, config["vocab_size"])
    plan = Plan(precision="bf16", attention=kernel, batch_size=len(LENGTHS), seq_len=max(LENGTHS),
                padding_free=True, token_fill=sum(LENGTHS) / (len(LENGTHS) * max(LENGTHS)))
    assert plan.tokens == sum(LENGTHS)
    est = estimate_memory(spec_from_config(config, source="test"), plan, machine=CPU)
    ours = est.largest["activations"] + est.largest["logits"]
    assert abs(ours - real) / real <= 0.01, (ours, real)


def test_padding_free_by_default_counts_the_fullest_micro_batch() -> None:
    """Without a token count the bound is batch x seq_len tokens in one row: at least the padded rows' tokens."""
    spec = load_spec(MODEL)
    padded = plan_run(spec, Plan(method="lora", batch_size=4, seq_len=2048, attention="flash"), CPU).memory
    flat = plan_run(spec, Plan(method="lora", batch_size=4, seq_len=2048, attention="flash",
                               padding_free=True), CPU).memory
    fewer = plan_run(spec, Plan(method="lora", batch_size=4, seq_len=2048, attention="flash", padding_free=True,
                                token_fill=0.5), CPU).memory
    # flash: linear in the tokens (one row's per-row tensors, e.g. the rotary tables, differ by a few KiB)
    assert abs(flat.largest["activations"] - padded.largest["activations"]) <= 1e-3 * padded.largest["activations"]
    assert fewer.largest["activations"] < flat.largest["activations"]


def test_the_assumption_says_what_a_micro_batch_holds() -> None:
    spec = load_spec(MODEL)
    plan = Plan(method="lora", batch_size=4, seq_len=2048, padding_free=True, token_fill=0.625)
    line = next(a for a in plan_run(spec, plan, CPU).assumptions if a.startswith("padding-free"))
    assert "one row of 5120 tokens" in line and "62% of --batch-size x --seq-len" in line and "sdpa" in line
    packed = plan_run(spec, Plan(method="lora", packing=True), CPU).assumptions
    assert any("packed into each row" in a for a in packed)


@pytest.mark.parametrize(("fields", "flag", "says"), [
    ({"token_fill": 0.5}, "--token-fill", "turn on --padding-free"),
    ({"padding_free": True, "token_fill": 1.5}, "--token-fill", "must be in (0, 1], the share of --batch-size x "
     "--seq-len that is real tokens, got 1.5"),
    ({"padding_free": True, "stage": "dpo"}, "--padding-free", "drop --padding-free"),
])
def test_clashing_settings_name_the_flag_and_the_fix(fields, flag, says) -> None:
    with pytest.raises(FtplanError) as err:
        Plan.build(**fields)
    message = worded(err.value, "cli")
    assert message.startswith(f"{flag}: ") and says in message and "\n" not in message


# ---------------------------------------------------------------- readers


def _read(tmp_path, config: dict):
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    return read_run_config(path)


TRL = {"model_name_or_path": "meta-llama/Llama-3.1-8B", "per_device_train_batch_size": 4, "max_length": 2048,
       "attn_implementation": "flash_attention_2"}


@pytest.mark.parametrize(("keys", "packing", "padding_free"), [
    ({"packing": True}, True, True),  # SFTTrainer: bfd packing is padding-free
    ({"packing": True, "packing_strategy": "bfd_split"}, True, True),
    ({"packing": True, "packing_strategy": "wrapped"}, True, False),
    ({"packing": True, "packing_strategy": "wrapped", "padding_free": True}, True, True),
    ({"padding_free": True, "max_length": None}, False, True),
    ({}, False, False),
])
def test_trl_packing_keys(tmp_path, keys, packing, padding_free) -> None:
    plan = _read(tmp_path, {**TRL, **keys}).plan
    assert (plan.packing, plan.padding_free) == (packing, padding_free)


def test_trl_padding_free_without_packing_needs_an_uncapped_length(tmp_path) -> None:
    with pytest.raises(FtplanError, match="key 'padding_free' without packing needs max_length: null"):
        _read(tmp_path, {**TRL, "padding_free": True})


def test_trl_dpo_padding_free_is_a_warning(tmp_path) -> None:
    run = _read(tmp_path, {**TRL, "beta": 0.1, "padding_free": True, "max_prompt_length": 512})
    if run.plan.stage != "dpo":
        pytest.skip("the reader did not take this config for DPO")
    assert not run.plan.padding_free
    assert any("padding_free" in w.data["keys"] and w.data["direction"] == "overstates" for w in run.warnings)


LF = {"model_name_or_path": "meta-llama/Llama-3.1-8B", "stage": "sft", "do_train": True, "finetuning_type": "lora",
      "cutoff_len": 4096, "per_device_train_batch_size": 2, "bf16": True, "dataset": "alpaca_en_demo"}


def test_llamafactory_packs_pretraining_by_default(tmp_path) -> None:
    assert _read(tmp_path, {**LF, "stage": "pt"}).plan.packing
    assert not _read(tmp_path, {**LF, "stage": "pt", "packing": False}).plan.packing
    assert not _read(tmp_path, LF).plan.packing


def test_llamafactory_neat_packing_counts_its_4d_mask(tmp_path) -> None:
    run = _read(tmp_path, {**LF, "neat_packing": True})
    assert run.plan.packing and run.plan.mask_4d and not run.plan.padding_free and run.warnings == []
    spec = load_spec(MODEL)
    with_mask = plan_run(spec, run.plan, CPU).memory
    without = plan_run(spec, run.plan.with_(mask_4d=False), CPU).memory
    mask = 2 * 1 * 4096 * 4096 * 2  # prepare_4d_attention_mask: batch x 1 x cutoff_len^2 in bf16 (data/collator.py)
    for ours, theirs in zip(with_mask.phases, without.phases, strict=True):
        assert ours.parts["activations"] - theirs.parts["activations"] == mask, ours.name
    flash = _read(tmp_path, {**LF, "neat_packing": True, "flash_attn": "fa2"})
    assert not flash.plan.mask_4d and any(w.code == "neat_packing_batch" for w in flash.warnings)
    assert _read(tmp_path, {**LF, "neat_packing": True, "flash_attn": "fa2",
                            "per_device_train_batch_size": 1}).warnings == []


def test_llamafactory_neat_packing_outside_sft_is_refused(tmp_path) -> None:
    with pytest.raises(FtplanError, match="key 'neat_packing' works with stage sft only"):
        _read(tmp_path, {**LF, "stage": "pt", "neat_packing": True})


AXOLOTL = {"base_model": "meta-llama/Llama-3.1-8B", "adapter": "lora", "sequence_len": 4096, "micro_batch_size": 2,
           "bf16": True}


@pytest.mark.parametrize(("keys", "padding_free"), [
    ({"attn_implementation": "flash_attention_2"}, True),  # batch_size 1, bins of micro_batch x sequence_len
    ({"attn_implementation": "sdpa"}, False),  # multipack_real_batches: rows of sequence_len
    ({"attn_implementation": "flash_attention_2", "multipack_real_batches": True}, False),
    ({"attn_implementation": "sdpa", "multipack_real_batches": False}, True),
])
def test_axolotl_sample_packing(tmp_path, keys, padding_free) -> None:
    run = _read(tmp_path, {**AXOLOTL, "sample_packing": True, "sample_packing_eff_est": 0.9, **keys})
    assert run.plan.packing and run.plan.padding_free == padding_free
    assert run.plan.tokens == 2 * 4096
    assert run.treatment["sample_packing"] == "modelled"


# ---------------------------------------------------------------- exports


@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
@pytest.mark.parametrize(("packing", "padding_free", "attention", "mask_4d"), [
    (True, False, "sdpa", False), (True, True, "flash", False), (True, True, "sdpa", False),
    (False, True, "flash", False), (True, False, "eager", True)])
def test_an_export_reads_back_its_packing(tmp_path, fmt, packing, padding_free, attention, mask_4d) -> None:
    plan = Plan(method="lora", batch_size=2, seq_len=2048, attention=attention, packing=packing,
                padding_free=padding_free, mask_4d=mask_4d)
    exported = write_export(fmt, MODEL, plan, tmp_path / "train.yaml", spec=load_spec(MODEL))
    run = read_run_config(exported.path)
    fields = ("packing", "padding_free", "mask_4d")
    assert [getattr(run.plan, f) for f in fields] == [getattr(exported.plan, f) for f in fields]
    changed = {k for k, v in exported.plan.model_dump().items() if getattr(plan, k) != v}
    if set(fields) & changed:
        assert exported.notes, changed  # the file says where the framework runs it otherwise


def test_the_batch_and_length_searches_scale_a_padding_free_batch() -> None:
    """The share of real tokens rides along as --max-batch and --max-seq change the batch and the length."""
    from planner.target import resolve_target

    plan = Plan(method="lora", batch_size=4, seq_len=2048, padding_free=True, token_fill=0.5, attention="flash",
                gradient_checkpointing=True)
    est = plan_run(load_spec(MODEL), plan, resolve_target(gpu_memory="80GiB"), search_batch=True, search_seq=True)
    dense = plan_run(load_spec(MODEL), plan.with_(token_fill=1.0), resolve_target(gpu_memory="80GiB"),
                     search_batch=True)
    assert est.fit.max_batch > dense.fit.max_batch >= 1 and est.fit.max_seq_len
