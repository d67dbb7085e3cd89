"""Data findings with the data built here: one record repeated, answers that train a single token, and label
tokens counted by hand from the token ids the test writes."""

from __future__ import annotations

import json

from diagnostics.data import IGNORE, Example
from diagnostics.data_rules import example_findings, example_stats
from diagnostics.loop import run
from diagnostics.report import DataSummary, DiagnoseSettings
from planner.plan import Plan


def test_label_tokens_one_token_answers_and_repeats_from_built_examples() -> None:
    x = IGNORE
    examples = [
        Example([1, 2, 3, 4, 5], [x, x, 3, 4, 5]),  # 3 labels, the shift keeps all 3 (none at position 0)
        Example([1, 2, 9], [x, x, 9]),  # an answer of one token: only the end-of-turn id
        Example([7, 8], [7, 8]),  # a label at position 0 has no token before it: 1 trainable
        Example([1, 2, 3, 4, 5], [x, x, 3, 4, 5]),  # a repeat of the first
    ]
    stats = example_stats(examples)
    assert stats == {"label_tokens_median": 2.0, "label_tokens_min": 1, "one_token": [2, 3], "duplicates": 1,
                     "most_repeated": 2}
    found = {f.code: f for f in example_findings(DataSummary(records=4, examples=4, seq_len=8, **stats))}
    assert found["one_token_answers"].severity == "warning" and found["one_token_answers"].data["count"] == 2
    assert found["duplicated_data"].data == {"duplicates": 1, "most_repeated": 2}


def settings(data: str, grad_accum: int = 2) -> DiagnoseSettings:
    return DiagnoseSettings(model="tiny-llama", data=data, steps=7, lr=1e-4,
                            plan=Plan(method="lora", lora_rank=4, batch_size=2, grad_accum=grad_accum, seq_len=96))


def test_one_record_repeated_gives_identical_micro_batches(tmp_path) -> None:
    record = {"instruction": "Name a primary colour.", "input": "", "output": "Red is a primary colour."}
    path = tmp_path / "same.jsonl"
    path.write_text("\n".join(json.dumps(record) for _ in range(40)) + "\n")
    report = run(settings(str(path)))
    found = {f.code: f for f in report.findings}
    assert found["identical_micro_batches"].severity == "warning"
    assert found["duplicated_data"].data == {"duplicates": 39, "most_repeated": 40}
    assert report.noise_scale is None


def test_empty_answers_train_one_token_and_the_sample_data_is_quiet(tmp_path) -> None:
    records = [{"instruction": f"Count to {i}.", "input": "", "output": " ".join(map(str, range(1, i + 2)))}
               for i in range(20)]
    for i in (3, 11, 17):
        records[i]["output"] = ""
    path = tmp_path / "empty.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    report = run(settings(str(path), grad_accum=1))
    finding = next(f for f in report.findings if f.code == "one_token_answers")
    assert finding.data["examples"] == [4, 12, 18] and finding.severity == "warning"  # 3 of 20 > a tenth
    sample = run(settings(None))  # the shipped sample: distinct records with real answers
    assert not {"one_token_answers", "duplicated_data", "identical_micro_batches"} & {f.code for f in sample.findings}
