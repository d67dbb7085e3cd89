"""Data formats, prompt masking, packing, the fallback tokenizer and a real chat template."""

from __future__ import annotations

import json

import pytest

from diagnostics.data import (
    IGNORE,
    Batches,
    ByteTokenizer,
    HFTokenizer,
    build_examples,
    load_records,
    sample_path,
    to_turns,
)
from planner.errors import FtplanError


def test_the_shipped_samples_load_in_every_format() -> None:
    alpaca = load_records(sample_path("alpaca"))
    chat = load_records(sample_path("chat"))
    assert len(alpaca) >= 40 and {"instruction", "output"} <= set(alpaca[0])
    assert any("conversations" in r for r in chat) and any("messages" in r for r in chat)


def test_alpaca_with_input_system_and_history() -> None:
    record = {"system": "Be brief.", "history": [["Hi", "Hello!"]], "instruction": "Add", "input": "2 and 3",
              "output": "5"}
    assert to_turns(record, "r") == [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello!"),
                                     ("user", "Add\n2 and 3"), ("assistant", "5")]


def test_sharegpt_and_openai_roles() -> None:
    share = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    openai = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    assert to_turns(share, "r") == to_turns(openai, "r") == [("user", "q"), ("assistant", "a")]
    with pytest.raises(FtplanError, match="unknown role 'robot'"):
        to_turns({"messages": [{"role": "robot", "content": "x"}]}, "r")
    with pytest.raises(FtplanError, match="not Alpaca"):
        to_turns({"question": "x"}, "file.jsonl: record 3")


def test_only_assistant_tokens_are_trained() -> None:
    tok = ByteTokenizer(512)
    ids, labels = tok.conversation([("user", "Hi"), ("assistant", "Yo")])
    trained = [i for i, label in zip(ids, labels, strict=True) if label != IGNORE]
    assert bytes(t - 3 for t in trained[:-1]).decode() == "Yo" and trained[-1] == tok.eos_id


def test_cutoff_truncates_and_drops_examples_with_nothing_to_train() -> None:
    tok = ByteTokenizer(512)
    long_prompt = {"instruction": "x" * 500, "output": "y"}
    short = {"instruction": "q", "output": "answer"}
    examples = build_examples([long_prompt, short], tok, cutoff_len=64)
    assert len(examples) == 1 and len(examples[0].input_ids) <= 64
    with pytest.raises(FtplanError, match="raise --seq-len"):
        build_examples([long_prompt], tok, cutoff_len=64)


def test_left_out_records_are_counted_with_the_cutoff_that_keeps_them() -> None:
    """Record 2's prompt is 1 (bos) + 9 (`<|user|>\\n`) + 500 + 1 (newline) + 14 (`<|assistant|>\\n`) = 525 tokens,
    so its first answer token is token 526; record 3 has no assistant turn at all."""
    tok = ByteTokenizer(512)
    records = [{"instruction": "q", "output": "a"}, {"instruction": "x" * 500, "output": "y"},
               {"messages": [{"role": "user", "content": "hello?"}]}, {"instruction": "r", "output": "b"}]
    built = build_examples(records, tok, cutoff_len=64)
    assert len(built) == 2 and built.dropped == [2] and built.unanswered == [3]
    assert built.needed_len == 526
    assert len(build_examples(records, tok, cutoff_len=526)) == 3


def test_plain_text_is_packed_into_full_blocks() -> None:
    tok = ByteTokenizer(512)
    examples = build_examples([{"text": "a" * 100}, {"text": "b" * 100}], tok, cutoff_len=50)
    assert len(examples) == 4 and all(len(e.input_ids) == 50 and e.labels == e.input_ids for e in examples)


def test_ranks_split_each_global_batch() -> None:
    tok = ByteTokenizer(512)
    examples = build_examples([{"instruction": f"q{i}", "output": f"a{i}"} for i in range(8)], tok, 64)
    whole = Batches(examples, 4, tok.pad_id, seed=0).micro_batch(1)["input_ids"]
    halves = [Batches(examples, 2, tok.pad_id, seed=0, rank=r, world=2).micro_batch(1)["input_ids"] for r in (0, 1)]
    rows = [row[row != 0].tolist() for row in whole]
    assert rows == [row[row != 0].tolist() for half in halves for row in half]


def test_bad_files_are_one_clear_error(tmp_path) -> None:
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"instruction": "a", "output": "b"}\n{nope\n')
    with pytest.raises(FtplanError, match="line 2 is not valid JSON"):
        load_records(broken)
    with pytest.raises(FtplanError, match="cannot read"):
        load_records(tmp_path / "missing.json")
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(FtplanError, match="no records"):
        load_records(tmp_path / "empty.json")


def test_tiny_vocabulary_rejects_the_byte_tokenizer() -> None:
    with pytest.raises(FtplanError, match="too small"):
        ByteTokenizer(100)


def test_a_real_chat_template_masks_the_prompt(tmp_path) -> None:
    """A tokenizer built here (no download) with a Jinja chat template: only the answer is trained."""
    from tests.diagnostics.chat_tokenizer import chat_tokenizer

    words = ["<pad>", "<eos>", "<|user|>", "<|assistant|>", "what", "is", "two", "plus", "three", "five", "."]
    hf = chat_tokenizer(words)
    tok = HFTokenizer(hf)
    ids, labels = tok.conversation([("user", "what is two plus three"), ("assistant", "five .")])
    trained = [words[i] for i, label in zip(ids, labels, strict=True) if label != IGNORE]
    assert trained == ["five", ".", "<eos>"]
    assert json.loads(json.dumps(labels))  # plain ints, serialisable
