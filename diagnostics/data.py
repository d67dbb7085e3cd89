"""Training data for a diagnostics run: the formats people fine-tune on, tokenized and masked.

Accepted files (a JSON array or JSON Lines, one record per line):

* Alpaca (the seed notes' format): `instruction`, optional `input`, `output`, optional
  `system` and `history` ([[question, answer], ...]);
* ShareGPT: `conversations` = [{"from": "human"|"gpt"|"system", "value": ...}];
* OpenAI chat: `messages` = [{"role": "user"|"assistant"|"system", "content": ...}];
* plain text: `text` (every token is trained on; texts are packed into full-length blocks).

Prompt tokens are masked out of the loss (label -100); only assistant turns train.
A tokenizer with a chat template formats the conversation; without one (a
config-only model has no tokenizer) the documented fallback is `ByteTokenizer`:
UTF-8 bytes shifted by 3 (0 = pad, 1 = bos, 2 = eos) and a plain
`<|role|>` text template, which needs a vocabulary of at least 259 tokens.

Preference pairs (`chosen` / `rejected`, for --stage dpo and orpo) are read by diagnostics.preference,
through the same tokenizers and templates.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from planner.errors import FtplanError

IGNORE = -100
Turn = tuple[str, str]  # (role, content); role in system | user | assistant
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "model": "assistant",
          "bot": "assistant", "system": "system"}


def sample_path(kind: str = "alpaca") -> Path:
    """The small dataset written for ftplan that ships with it (`alpaca`, `chat`, or `preference` for
    DPO / ORPO: prompt, chosen and rejected)."""
    return Path(str(resources.files("profiles") / "data" / f"sample_{kind}.jsonl"))


def load_records(path: str | Path) -> list[dict]:
    path = Path(path)
    if path.exists() and not path.is_file():  # a FIFO would block the run forever, a device never end
        raise FtplanError(f"--data {path}: not a regular file; give the path of a JSON or JSONL data file")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise FtplanError(f"--data {path}: cannot read it ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise FtplanError(f"--data {path}: not UTF-8 text (offset {exc.start:,}); JSON data is UTF-8: convert "
                          "it, or check that this is the data file") from None
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FtplanError(f"--data {path}: not valid JSON (line {exc.lineno}: {exc.msg})"
                              + _comment_hint(text.splitlines()[exc.lineno - 1:exc.lineno])) from None
    else:
        records = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise FtplanError(f"--data {path}: line {number} is not valid JSON ({exc.msg})"
                                  + _comment_hint([line])) from None
    if not records:
        raise FtplanError(f"--data {path}: no records; expected a JSON array or JSON Lines")
    if not all(isinstance(r, dict) for r in records):
        raise FtplanError(f"--data {path}: every record must be a JSON object")
    return records


def _comment_hint(lines: list[str]) -> str:
    """Notes copied from annotated examples (the seed's RLHF sample has `// optional: ...`) are not JSON."""
    return "; JSON has no comments: delete the `// ...` notes" if any("//" in line for line in lines) else ""


def to_turns(record: dict, where: str) -> list[Turn] | str:
    """A conversation as (role, content) turns, or the raw text of a plain-text record."""
    if "chosen" in record and "rejected" in record and "output" not in record:
        raise FtplanError(f"{where}: a preference pair (chosen/rejected): run it with --stage dpo or orpo, or give "
                          "SFT data (instruction/output)")
    if "instruction" in record and "output" in record:
        turns: list[Turn] = []
        if record.get("system"):
            turns.append(("system", str(record["system"])))
        for pair in record.get("history") or []:
            turns += [("user", str(pair[0])), ("assistant", str(pair[1]))]
        prompt = str(record["instruction"])
        if record.get("input"):
            prompt += "\n" + str(record["input"])
        return [*turns, ("user", prompt), ("assistant", str(record["output"]))]
    if isinstance(record.get("conversations"), list):
        return [(_role(m.get("from"), where), str(m.get("value", ""))) for m in record["conversations"]]
    if isinstance(record.get("messages"), list):
        return [(_role(m.get("role"), where), str(m.get("content", ""))) for m in record["messages"]]
    if isinstance(record.get("text"), str):
        return record["text"]
    raise FtplanError(f"{where}: not Alpaca (instruction/output), ShareGPT (conversations), OpenAI (messages) "
                      "or plain text (text)")


def _role(name, where: str) -> str:
    role = _ROLES.get(str(name).lower())
    if role is None:
        raise FtplanError(f"{where}: unknown role {name!r}; use user/assistant/system (or human/gpt)")
    return role


class ByteTokenizer:
    """The fallback tokenizer for config-only models: UTF-8 bytes + 3, with pad/bos/eos = 0/1/2."""

    pad_id, bos_id, eos_id = 0, 1, 2
    name = "fallback byte tokenizer"

    def __init__(self, vocab_size: int):
        if vocab_size < 259:
            raise FtplanError(f"the model's vocabulary ({vocab_size}) is too small for the fallback byte tokenizer "
                              "(needs 259); give a model directory with a tokenizer")

    def encode(self, text: str) -> list[int]:
        return [b + 3 for b in text.encode("utf-8")]

    def conversation(self, turns: list[Turn]) -> tuple[list[int], list[int]]:
        ids, labels = ByteTemplate(self).conversation(turns)
        return [self.bos_id, *ids], [IGNORE, *labels]


class HFTokenizer:
    """A model's own tokenizer; its chat template formats conversations when it has one."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.name = type(tokenizer).__name__
        self.eos_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id

    def encode(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def conversation(self, turns: list[Turn]) -> tuple[list[int], list[int]]:
        if not getattr(self.tok, "chat_template", None):
            return ByteTemplate(self).conversation(turns)
        messages = [{"role": r, "content": c} for r, c in turns]
        ids: list[int] = []
        labels: list[int] = []
        for i, (role, _) in enumerate(turns):
            if role != "assistant":
                continue
            prompt = self._apply(messages[:i], generation_prompt=True)
            full = self._apply(messages[: i + 1], generation_prompt=False)
            start = len(prompt) if full[: len(prompt)] == prompt else len(ids)
            labels += [IGNORE] * (start - len(ids)) + full[start:]
            ids = full
        labels += [IGNORE] * (len(ids) - len(labels))
        return ids, labels

    def _apply(self, messages: list[dict], generation_prompt: bool) -> list[int]:
        if not messages:
            return []
        out = self.tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt)
        return list(out["input_ids"] if hasattr(out, "keys") else out)  # BatchEncoding in transformers 5


@dataclass
class ByteTemplate:
    """The `<|role|>` template over any tokenizer's `encode` and `eos_id` (tokenizers without a chat template)."""

    tok: HFTokenizer | ByteTokenizer

    def conversation(self, turns: list[Turn]) -> tuple[list[int], list[int]]:
        ids: list[int] = []
        labels: list[int] = []
        for role, content in turns:
            head = self.tok.encode(f"<|{role}|>\n")
            body = self.tok.encode(content) + ([self.tok.eos_id] if role == "assistant" else self.tok.encode("\n"))
            ids += head + body
            labels += [IGNORE] * len(head) + (body if role == "assistant" else [IGNORE] * len(body))
        return ids, labels


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]


class Built(list):
    """The examples (or pairs) built from a file's records, and the records that train nothing: `dropped`, whose
    prompt alone fills the cutoff (`needed_len`: the shortest cutoff that keeps an answer token of each, None
    where the rule that cut them gives no single number), and `unanswered`, with no assistant answer at all.
    Record numbers are 1-based."""

    def __init__(self, items=(), dropped: list[int] | None = None, needed_len: int | None = None,
                 unanswered: list[int] | None = None):
        super().__init__(items)
        self.dropped = dropped or []
        self.needed_len = needed_len
        self.unanswered = unanswered or []


def build_examples(records: list[dict], tokenizer, cutoff_len: int, source: str = "data") -> Built:
    """Tokenize and mask every record; plain texts are packed into `cutoff_len` blocks."""
    examples = Built()
    stream: list[int] = []
    for number, record in enumerate(records, 1):
        turns = to_turns(record, f"{source}: record {number}")
        if isinstance(turns, str):
            stream += [*tokenizer.encode(turns), tokenizer.eos_id]
            continue
        ids, labels = tokenizer.conversation(turns)
        first = next((i for i, label in enumerate(labels) if label != IGNORE), None)
        if first is not None and first < cutoff_len:
            examples.append(Example(ids[:cutoff_len], labels[:cutoff_len]))
        elif first is None:
            examples.unanswered.append(number)
        else:
            examples.dropped.append(number)
            examples.needed_len = max(examples.needed_len or 0, first + 1)
    for start in range(0, len(stream) - cutoff_len + 1, cutoff_len):
        block = stream[start:start + cutoff_len]
        examples.append(Example(block, list(block)))
    if not examples:
        raise FtplanError(f"{source}: no example keeps a trainable token within cutoff_len={cutoff_len}; "
                          "raise --seq-len or check the data")
    return examples


class Batches:
    """Deterministic micro-batches: global batch k holds examples order[k*G:(k+1)*G] (G = batch x world),
    and rank r takes its slice, so N processes see exactly what one process with N x batch sees."""

    def __init__(self, examples: list[Example], batch_size: int, pad_id: int, seed: int, rank: int = 0,
                 world: int = 1):
        self.examples = examples
        self.batch_size = batch_size
        self.pad_id = pad_id
        self.rank, self.world = rank, world
        self.order = list(range(len(examples)))
        random.Random(seed).shuffle(self.order)

    def pick(self, index: int) -> list:
        """This rank's examples of micro-batch `index`."""
        span = self.batch_size * self.world
        return [self.examples[self.order[(index * span + self.rank * self.batch_size + i) % len(self.order)]]
                for i in range(self.batch_size)]

    def micro_batch(self, index: int):
        return self.collate(self.pick(index))

    def collate(self, rows: list[Example]):
        """Right-padded tensors: pad id, label -100 and attention mask 0 past each row's end."""
        import torch

        width = max(len(r.input_ids) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r.input_ids)
            ids[i, :n] = torch.tensor(r.input_ids)
            labels[i, :n] = torch.tensor(r.labels)
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def load_tokenizer(weights: str | Path | None, vocab_size: int):
    """The model directory's tokenizer when it has one, else the fallback byte tokenizer."""
    if weights is not None and any(Path(weights, f).exists() for f in ("tokenizer.json", "tokenizer_config.json",
                                                                        "tokenizer.model")):
        from transformers import AutoTokenizer

        return HFTokenizer(AutoTokenizer.from_pretrained(weights))
    return ByteTokenizer(vocab_size)
