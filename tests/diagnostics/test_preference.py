"""`ftplan diagnose --stage dpo|orpo`: preference data, the DPO / ORPO losses, their findings, the command line.

The truths here are independent of the code under test: the DPO loss of a policy equal to its reference is
log 2 (-log sigmoid(0)); completion log-probs are recomputed with a literal log_softmax and the token
positions each pair was built from; margins and accuracy come from hand-made numbers.
"""

from __future__ import annotations

import json
import math

import pytest

from diagnostics.data import ByteTokenizer, load_records, sample_path
from diagnostics.loop import run
from diagnostics.objectives import completion_logps, dpo_loss, orpo_loss, pair_metrics
from diagnostics.preference import PairBatches, build_pairs, check_records, to_preference
from diagnostics.report import DiagnoseSettings, PreferenceRecord, StepRecord
from diagnostics.rules import analyze
from planner.errors import FtplanError
from planner.plan import Plan

LOG2 = math.log(2.0)

# Eight short pairs of our own: the preferred answer is polite and right, the other curt or wrong. Small enough
# that a micro-batch of 4 sees each pair every other step, so a tiny random model learns the preference.
PAIRS = [
    ("Is ice cold?", "Yes, ice is frozen water and feels cold.", "no, hot."),
    ("Greet me.", "Good morning! How can I help?", "what"),
    ("3 + 4?", "3 + 4 = 7.", "9"),
    ("Name an animal.", "A horse is an animal.", "a rock"),
    ("Say thanks.", "Thank you, that was kind of you.", "k"),
    ("今天星期几？", "今天是星期三，祝你愉快！", "不知道，别问。"),
    ("Capital of Spain?", "Madrid is the capital of Spain.", "Lisbon"),
    ("Colour of snow?", "Snow is white.", "green, obviously"),
]


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("pref") / "pairs.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "chosen": c, "rejected": r}, ensure_ascii=False) + "\n"
                            for p, c, r in PAIRS), encoding="utf-8")
    return str(path)


def settings(stage: str = "dpo", method: str = "full", steps: int = 12, data: str | None = None,
             **kw) -> DiagnoseSettings:
    plan_kw = {"batch_size": 4, "grad_accum": 1, "seq_len": 64, "lora_rank": 4, "precision": "fp32"}
    plan_kw.update({k: kw.pop(k) for k in list(kw) if k in Plan.model_fields})
    return DiagnoseSettings(model="tiny-llama", steps=steps, data=data,
                            plan=Plan(method=method, stage=stage, **plan_kw), **kw)


def codes(report) -> set[str]:
    return {f.code for f in report.findings}


# ---------------------------------------------------------------- data


def test_the_seed_notes_dpo_and_rlhf_records_read(tmp_path) -> None:
    """The seed's DPO example (a JSON array of prompt / chosen / rejected) and its RLHF one with the optional
    `score` and `reject_reason`; our own sentences in that exact shape."""
    records = [
        {"prompt": "怎样看待“程序员都不爱运动”的说法？", "chosen": "这是刻板印象，很多程序员都有规律的运动习惯。",
         "rejected": "程序员天生懒惰，这是事实。"},
        {"prompt": "请写一段关于节约用水的话。", "chosen": "节约用水从关紧水龙头开始，每一滴都很珍贵。",
         "rejected": "水是用不完的，随便用。", "score": {"chosen": 5, "rejected": 1}, "reject_reason": "违背常识"},
    ]
    path = tmp_path / "dpo.json"
    path.write_text(json.dumps(records, ensure_ascii=False, indent=2), encoding="utf-8")
    loaded = load_records(path)
    assert check_records(loaded, str(path))[0] == ([("user", records[0]["prompt"])], records[0]["chosen"],
                                                   records[0]["rejected"])
    tok = ByteTokenizer(512)
    pair = build_pairs(loaded, tok, cutoff_len=1024)[1]
    text = bytes(t - 3 for t in pair.prompt[1:]).decode()
    assert text == f"<|user|>\n{records[1]['prompt']}\n<|assistant|>\n"  # the prompt ends with the answer's header
    assert bytes(t - 3 for t in pair.chosen[:-1]).decode() == records[1]["chosen"] and pair.chosen[-1] == tok.eos_id
    assert bytes(t - 3 for t in pair.rejected[:-1]).decode() == records[1]["rejected"]


def test_llamafactory_and_trl_formats_read_to_the_same_pair() -> None:
    turns = [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello!"), ("user", "Add 2 and 3")]
    expected = (turns, "5", "six")
    alpaca = {"system": "Be brief.", "history": [["Hi", "Hello!"]], "instruction": "Add", "input": "2 and 3",
              "chosen": "5", "rejected": "six"}
    assert to_preference(alpaca, "r") == ([*turns[:3], ("user", "Add\n2 and 3")], "5", "six")
    sharegpt = {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
                                  {"from": "gpt", "value": "Hello!"}, {"from": "human", "value": "Add 2 and 3"}],
                "chosen": {"from": "gpt", "value": "5"}, "rejected": {"from": "gpt", "value": "six"}}
    messages = [{"role": r, "content": c} for r, c in turns]
    explicit = {"prompt": messages, "chosen": [{"role": "assistant", "content": "5"}],
                "rejected": [{"role": "assistant", "content": "six"}]}
    implicit = {"chosen": [*messages, {"role": "assistant", "content": "5"}],
                "rejected": [*messages, {"role": "assistant", "content": "six"}]}
    openai = {"messages": messages, "chosen": {"role": "assistant", "content": "5"}, "rejected": "six"}
    for record in (sharegpt, explicit, implicit, openai):
        assert to_preference(record, "r") == expected


@pytest.mark.parametrize(("record", "needle"), [
    ({"prompt": "q", "chosen": "a"}, "no 'rejected'; a preference record is"),
    ({"instruction": "q", "output": "a"}, "looks like SFT data"),
    ({"prompt": "q", "chosen": "same", "rejected": "same"}, "the same answer"),
    ({"prompt": "q", "chosen": "a", "rejected": "  "}, "'rejected' is empty"),
    ({"prompt": "q", "chosen": 3, "rejected": "b"}, "'chosen' must be a string"),
    ({"chosen": "a", "rejected": "b"}, "no prompt"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "chosen": "b",
      "rejected": "c"}, "must end with the user's turn"),
    ({"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "user", "content": "a"}],
      "rejected": [{"role": "assistant", "content": "b"}]}, "one assistant answer"),
])
def test_bad_records_name_the_file_the_record_and_the_fix(record, needle) -> None:
    good = {"prompt": "ok", "chosen": "yes", "rejected": "no"}
    with pytest.raises(FtplanError) as caught:
        check_records([good, good, record], "train.jsonl")
    message = str(caught.value)
    assert message.startswith("train.jsonl: record 3: ") and needle in message and "\n" not in message


def test_notes_copied_from_the_seed_are_not_json(tmp_path) -> None:
    path = tmp_path / "rlhf.json"
    path.write_text('[{"prompt": "q", "chosen": "a", "rejected": "b",  // optional\n "score": 1}]')
    with pytest.raises(FtplanError, match=r"rlhf.json: not valid JSON .*JSON has no comments"):
        load_records(path)


def test_a_real_chat_template_splits_prompt_and_answers() -> None:
    """A tokenizer built here (no download) with a Jinja chat template: the prompt ends with the generation
    header, each answer is the assistant turn's tokens, and the history's answer stays in the prompt."""
    from diagnostics.data import HFTokenizer
    from tests.diagnostics.chat_tokenizer import chat_tokenizer

    words = ["<pad>", "<eos>", "<|user|>", "<|assistant|>", "hi", "hello", "two", "plus", "three", "five", "six"]
    hf = chat_tokenizer(words)
    record = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"},
                                {"from": "human", "value": "two plus three"}],
              "chosen": {"from": "gpt", "value": "five"}, "rejected": {"from": "gpt", "value": "six"}}
    (pair,) = build_pairs([record], HFTokenizer(hf), cutoff_len=64)
    assert [words[i] for i in pair.prompt] == ["<|user|>", "hi", "<|assistant|>", "hello", "<eos>", "<|user|>", "two",
                                               "plus", "three", "<|assistant|>"]
    assert [words[i] for i in pair.chosen] == ["five", "<eos>"] and [words[i] for i in pair.rejected] == ["six", "<eos>"]


def test_the_shipped_preference_sample() -> None:
    records = load_records(sample_path("preference"))
    assert len(records) >= 40
    texts = check_records(records, "sample")
    assert any(any("\u4e00" <= ch <= "\u9fff" for ch in prompt[-1][1]) for prompt, _, _ in texts)  # Chinese too
    assert all(set(r) == {"prompt", "chosen", "rejected"} for r in records)


def test_long_pairs_are_cut_as_llamafactory_cuts_them() -> None:
    """LLaMA-Factory's infer_seqlen with the longer answer as the target: prompt (1 + 9 + 200 + 1 + 14 = 225
    tokens) and answers (91 with the eos) share 64 in proportion: int(64 x 91 / 316) = 18 answer tokens."""
    tok = ByteTokenizer(512)
    (pair,) = build_pairs([{"prompt": "p" * 200, "chosen": "c" * 20, "rejected": "r" * 90}], tok, cutoff_len=64)
    assert (len(pair.prompt), len(pair.chosen), len(pair.rejected)) == (46, 18, 18)
    assert bytes(t - 3 for t in pair.prompt[-len("\n<|assistant|>\n"):]).decode() == "\n<|assistant|>\n"
    (short,) = build_pairs([{"prompt": "q", "chosen": "c" * 20, "rejected": "r" * 25}], tok, cutoff_len=64)
    assert (len(short.chosen), len(short.rejected)) == (21, 26)  # fits: nothing is cut


# ---------------------------------------------------------------- the formulas, on hand-made numbers


def test_margins_rewards_and_accuracy_on_a_hand_made_batch() -> None:
    import torch

    beta = 0.5
    policy_c, policy_r = torch.tensor([-10.0, -20.0, -5.0, -8.0]), torch.tensor([-12.0, -15.0, -5.0, -9.0])
    ref_c, ref_r = torch.tensor([-11.0, -18.0, -5.0, -8.0]), torch.tensor([-11.0, -18.0, -5.0, -8.5])
    losses, chosen_reward, rejected_reward = dpo_loss(policy_c, policy_r, ref_c, ref_r, beta)
    # by hand: chosen log-ratios 1, -2, 0, 0; rejected -1, 3, 0, -0.5; margins beta x (2, -5, 0, 0.5)
    assert chosen_reward.tolist() == [0.5, -1.0, 0.0, 0.0] and rejected_reward.tolist() == [-0.5, 1.5, 0.0, -0.25]
    margins = [1.0, -2.5, 0.0, 0.25]
    assert losses.tolist() == pytest.approx([math.log1p(math.exp(-m)) for m in margins])
    tokens = torch.tensor([4, 5, 1, 2])
    m, abs_m, cr, rr, acc, *_ = (t.item() for t in pair_metrics(chosen_reward, rejected_reward, policy_c, policy_r,
                                                                tokens, tokens))
    assert m == pytest.approx(sum(margins) / 4) and abs_m == pytest.approx(sum(map(abs, margins)) / 4)
    assert cr == pytest.approx(-0.125) and rr == pytest.approx(0.1875)
    assert acc == 0.5  # pairs 1 and 4 win; the tie (pair 3) does not count


def test_orpo_loss_on_hand_made_numbers() -> None:
    import torch

    c, r = torch.tensor([-0.5, -2.0]), torch.tensor([-1.0, -1.0])
    losses, nll, log_odds = orpo_loss(c, r, 0.1)

    def odds(x):  # log(p / (1 - p)) with p = e^x, the paper's odds
        return math.log(math.exp(x) / (1 - math.exp(x)))

    expected = [odds(-0.5) - odds(-1.0), odds(-2.0) - odds(-1.0)]
    assert log_odds.tolist() == pytest.approx(expected, rel=1e-5)
    assert nll.tolist() == [0.5, 2.0]
    assert losses.tolist() == pytest.approx([n + 0.1 * math.log1p(math.exp(-o)) for n, o in zip([0.5, 2.0], expected,
                                                                                                   strict=True)])


def test_completion_log_probs_count_only_the_answer_tokens() -> None:
    """Against a literal log_softmax over the positions each pair was built from (not the labels)."""
    import torch

    from diagnostics.models import build_model
    from planner.spec import resolve_model

    tok = ByteTokenizer(512)
    pairs = build_pairs([{"prompt": p, "chosen": c, "rejected": r} for p, c, r in PAIRS[:3]], tok, cutoff_len=64)
    batch = PairBatches(pairs, 3, tok.pad_id, seed=0).micro_batch(0)
    model = build_model(dict(resolve_model("tiny-llama").config), Plan(method="full", precision="fp32"), seed=0)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        sums, counts = completion_logps(logits, batch["labels"])
    order = [p for p in PairBatches(pairs, 3, tok.pad_id, seed=0).pick(0)]
    rows = [(p.prompt, p.chosen) for p in order] + [(p.prompt, p.rejected) for p in order]
    for i, (prompt, answer) in enumerate(rows):
        logp = torch.log_softmax(logits[i].double(), dim=-1)
        start = len(prompt)
        expected = sum(logp[t - 1, batch["input_ids"][i, t]].item() for t in range(start, start + len(answer)))
        assert sums[i].item() == pytest.approx(expected, abs=1e-3) and counts[i].item() == len(answer)


# ---------------------------------------------------------------- real runs on a tiny model


@pytest.mark.parametrize("method", ["full", "lora"])
def test_the_dpo_loss_of_the_first_step_is_log_2(method, pairs_file) -> None:
    """At step 1 the policy is its reference (a frozen copy, or the adapter disabled with lora_B = 0): every
    log-ratio is 0, so the loss is -log sigmoid(0) = log 2 exactly, margins 0 and no pair won."""
    report = run(settings("dpo", method, steps=2, data=pairs_file, lr=1e-3))
    first = report.records[0]
    assert first.loss == pytest.approx(LOG2, abs=1e-6)
    p = first.preference
    assert p.margin == 0 and p.abs_margin == 0 and p.accuracy == 0
    assert p.chosen_token_logratio == pytest.approx(0, abs=1e-6) and p.rejected_token_logratio == pytest.approx(0, abs=1e-6)
    assert report.records[1].preference.abs_margin > 0  # and the policy has left its reference after one step
    assert set(first.layer_norms) >= {f"block.{i}" for i in range(4)}  # the gradient monitor still runs


def test_precomputed_reference_log_probs_give_the_same_run(pairs_file) -> None:
    live = run(settings("dpo", steps=3, data=pairs_file, lr=1e-3))
    pre = run(settings("dpo", steps=3, data=pairs_file, lr=1e-3, precompute_ref_log_probs=True))
    assert [r.loss for r in pre.records] == pytest.approx([r.loss for r in live.records], rel=1e-5)


def test_a_healthy_dpo_run_raises_no_warning(pairs_file) -> None:
    report = run(settings("dpo", steps=12, data=pairs_file, lr=1e-4))
    assert report.status == "completed" and report.warnings == [], [f.evidence for f in report.warnings]
    prefs = [r.preference for r in report.records]
    assert prefs[-1].margin > 0.2 and prefs[-1].accuracy == 1.0 and report.records[-1].loss < 0.6
    assert "preference_not_learning" not in codes(report)


def test_a_learning_rate_100x_too_high_is_flagged(pairs_file) -> None:
    """lr 1e-2 instead of 1e-4: the margins pass 3 (the loss saturates near 0) and the policy's log-probs move
    over a nat per token from the reference's; seen on every seed tried (0-5)."""
    report = run(settings("dpo", steps=12, data=pairs_file, lr=1e-2))
    assert {"margin_explosion", "policy_drift"} <= codes(report)
    assert all(f.severity == "warning" for f in report.findings if f.code in ("margin_explosion", "policy_drift"))
    changes = {k: v for a in report.advice for k, v in a.changes.items()}
    assert changes["learning_rate"] < 1e-2 and changes["beta"] > 0.1


def test_orpo_runs_without_a_reference(pairs_file) -> None:
    report = run(settings("orpo", steps=3, data=pairs_file, lr=1e-3, beta=0.2))
    assert report.status == "completed" and len(report.records) == 3
    first = report.records[0].preference
    assert first.chosen_token_logratio is None and first.nll is not None
    # the loss is the chosen answers' NLL plus lambda x the odds-ratio loss (one micro-batch: means of the pairs)
    assert report.records[0].loss >= first.nll and first.nll == pytest.approx(-first.chosen_token_logp, rel=1e-5)
    assert first.chosen_reward == pytest.approx(0.2 * first.chosen_token_logp, rel=1e-5)


def test_the_default_data_of_a_preference_stage_is_the_shipped_sample() -> None:
    report = run(settings("dpo", "lora", steps=1, seq_len=128, batch_size=2))
    assert report.environment["data"] == str(sample_path("preference"))
    assert report.settings.learning_rate == 5e-6  # LLaMA-Factory's DPO example


# ---------------------------------------------------------------- the rules, on made-up records


def _records(losses, **series) -> list[StepRecord]:
    out = []
    for i, loss in enumerate(losses):
        values = {"margin": 0.0, "abs_margin": 0.0, "chosen_reward": 0.0, "rejected_reward": 0.0, "accuracy": 0.5,
                  "chosen_logp": -50.0, "rejected_logp": -50.0, "chosen_token_logp": -2.0,
                  "rejected_token_logp": -2.0, "chosen_token_logratio": 0.0, "rejected_token_logratio": 0.0}
        values.update({k: v[i] for k, v in series.items()})
        out.append(StepRecord(step=i + 1, loss=loss, lr=1e-6, grad_norm=1.0, clipped=False,
                              layer_norms={"block.0": 1.0, "block.1": 1.0}, kind_norms={},
                              preference=PreferenceRecord(**values)))
    return out


def test_falling_chosen_and_rejected_log_probs_are_likelihood_displacement() -> None:
    n = 15
    chosen = [-0.03 * i for i in range(n)]  # down to -0.42 nats per token against the reference
    rejected = [-0.05 * i for i in range(n)]
    margins = [0.1 * (c - r) * 40 for c, r in zip(chosen, rejected, strict=True)]
    records = _records([0.69 - 0.01 * i for i in range(n)], chosen_token_logratio=chosen,
                       rejected_token_logratio=rejected, margin=margins, abs_margin=margins)
    found = {f.code: f for f in analyze(records, settings("dpo"))}
    assert "chosen_logp_falling" in found and "pref_ftx" in found["chosen_logp_falling"].fix
    # the same fall with the rejected answers rising is not displacement (and too small to be drift)
    rising = _records([0.69] * n, chosen_token_logratio=chosen, rejected_token_logratio=[-r for r in rejected])
    assert "chosen_logp_falling" not in {f.code for f in analyze(rising, settings("dpo"))}


def test_a_dpo_loss_stuck_at_log_2_is_reported_and_one_above_it_is_an_error() -> None:
    stuck = _records([LOG2 + 0.001 * (-1) ** i for i in range(12)], abs_margin=[0.002] * 12)
    finding = next(f for f in analyze(stuck, settings("dpo")) if f.code == "preference_not_learning")
    assert finding.severity == "info"
    worse = _records([0.69] * 6 + [1.2] * 6, accuracy=[0.5] * 6 + [0.1] * 6)
    assert any(f.code == "loss_divergence" and f.severity == "error" for f in analyze(worse, settings("dpo")))
    # the SFT loss rules stay out of DPO: a noisy DPO loss is not a spike or a plateau
    assert not {"loss_spikes", "loss_plateau"} & {f.code for f in analyze(stuck, settings("dpo"))}


# ---------------------------------------------------------------- the command line


def test_cli_dpo_json_carries_the_preference_metrics(pairs_file, capsys) -> None:
    from tui.cli import main

    code = main(["diagnose", "--model", "tiny-llama", "--stage", "dpo", "--method", "full", "--precision", "fp32",
                 "--data", pairs_file, "--steps", "2", "--batch-size", "2", "--grad-accum", "1", "--seq-len", "64",
                 "--beta", "0.2", "--in-process", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data["settings"]["beta"] == 0.2 and data["settings"]["plan"]["stage"] == "dpo"
    assert data["records"][0]["preference"]["accuracy"] == 0 and "margin" in data["records"][1]["preference"]


def test_text_report_shows_the_preference_table(pairs_file) -> None:
    from io import StringIO

    from rich.console import Console

    from tui.diagnose_view import print_report

    report = run(settings("dpo", steps=2, data=pairs_file, lr=1e-3))
    out = StringIO()
    print_report(report, Console(file=out, width=120), plots=False)
    text = out.getvalue()
    assert "dpo (beta 0.1)" in text and "margin" in text and "vs ref c/r" in text


@pytest.mark.parametrize(("args", "needle"), [
    (["--stage", "kto"], "--stage dpo or orpo"),
    (["--stage", "dpo", "--beta", "0"], "--beta"),
])
def test_cli_bad_stage_input_is_one_line_exit_2(args, needle, capsys) -> None:
    from tui.cli import ExitCode, main

    try:
        code = main(["diagnose", "--model", "tiny-llama", *args])
    except SystemExit as exc:  # argparse
        code = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == ExitCode.BAD_INPUT and len(err) == 1 and needle in err[0]


def test_cli_names_a_bad_pair_before_loading_the_model(tmp_path, capsys) -> None:
    from tui.cli import ExitCode, main

    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n{"prompt": "q", "chosen": "a"}\n')
    assert main(["diagnose", "--model", "tiny-llama", "--stage", "orpo", "--data", str(path)]) == ExitCode.BAD_INPUT
    err = capsys.readouterr().err
    assert f"{path}: record 2: no 'rejected'" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("keys", "stage", "beta"), [
    ("stage: dpo\n", "dpo", 0.1),  # LLaMA-Factory's pref_beta default
    ("stage: dpo\npref_beta: 0.25\n", "dpo", 0.25),  # the config's own beta reaches the loop
    ("stage: dpo\npref_loss: orpo\npref_beta: 0.05\n", "orpo", 0.05),
    ("stage: kto\n", "sft", 0.1),  # diagnose has no KTO loop: preflight runs the SFT one and says so
])
def test_preflight_diagnoses_the_configs_own_stage(keys, stage, beta, tmp_path, monkeypatch) -> None:
    import diagnostics.runner
    from diagnostics.preflight import preflight
    from diagnostics.report import DiagnosticReport

    seen = []

    def fake_run(settings):
        seen.append(settings)
        return DiagnosticReport(status="completed", settings=settings)

    monkeypatch.setattr(diagnostics.runner, "run_isolated", fake_run)
    config = tmp_path / "pref.yaml"
    config.write_text("model_name_or_path: tiny-llama\n" + keys + "finetuning_type: lora\ncutoff_len: 128\n"
                      "per_device_train_batch_size: 1\nlearning_rate: 5.0e-6\nbf16: true\n")
    report = preflight(config, gpu="H100", diagnose_steps=4)
    assert seen[0].stage == stage and seen[0].steps == 4 and seen[0].beta == beta
    assert any("diagnose has no kto loop" in c.message for c in report.checks) == (stage == "sft")
