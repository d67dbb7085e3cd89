"""Preference data for a DPO / ORPO diagnostics run: pairs of answers to one prompt, tokenized.

Accepted records (a JSON array or JSON Lines, as for SFT data):

* TRL / the seed notes: `prompt`, `chosen`, `rejected` as strings (extra keys such as the seed's
  `score` and `reject_reason` are ignored);
* TRL conversational: `prompt` a list of {"role", "content"} messages and `chosen` / `rejected`
  one-message lists ({"role": "assistant", ...}); or, with no `prompt` (TRL's implicit prompt),
  `chosen` and `rejected` whole conversations that share every turn but the last;
* LLaMA-Factory alpaca-style (`ranking: true`): `instruction`, optional `input`, `system`, `history`,
  and `chosen` / `rejected` strings;
* LLaMA-Factory sharegpt / OpenAI style: `conversations` ({"from", "value"}) or `messages`
  ({"role", "content"}) ending with the user's turn, and `chosen` / `rejected` the answer as one
  message ({"from": "gpt", "value": ...}) or a string.

Each pair becomes (prompt tokens, chosen tokens, rejected tokens) through the same tokenizer and
template as the SFT loop (`diagnostics.data`): the completion is the last assistant turn of the
formatted conversation, and everything before it, history included, is prompt (masked out of the
log-probs, as TRL and LLaMA-Factory mask it).
"""

from __future__ import annotations

from dataclasses import dataclass

from diagnostics.data import IGNORE, Batches, Built, Example, Turn, _role
from planner.errors import FtplanError

_SHAPE = ('a preference record is {"prompt": ..., "chosen": ..., "rejected": ...} (TRL, the seed notes), '
          '{"instruction": ..., "input": ..., "chosen": ..., "rejected": ...} (LLaMA-Factory alpaca) or '
          '{"conversations"/"messages": [...], "chosen": {...}, "rejected": {...}} (LLaMA-Factory sharegpt)')


@dataclass
class Pair:
    prompt: list[int]
    chosen: list[int]
    rejected: list[int]


def to_preference(record: dict, where: str) -> tuple[list[Turn], str, str]:
    """(prompt turns, chosen answer, rejected answer) of one record in any accepted format."""
    if "chosen" not in record or "rejected" not in record:
        missing = " and ".join(k for k in ("chosen", "rejected") if k not in record)
        sft = "output" in record or "conversations" in record or "messages" in record or "text" in record
        hint = ("; this looks like SFT data: --stage dpo/orpo needs two answers per prompt, the preferred one "
                "under 'chosen' and the worse one under 'rejected'" if sft else f"; {_SHAPE}")
        raise FtplanError(f"{where}: no '{missing}'{hint}")
    chosen, rejected = record["chosen"], record["rejected"]
    if isinstance(chosen, list) and isinstance(rejected, list):
        prompt = record.get("prompt", record.get("messages", record.get("conversations")))
        if prompt is None:
            return _implicit_prompt(chosen, rejected, where)
        turns = [("user", prompt)] if isinstance(prompt, str) else _messages(prompt, where, "prompt")
        return (_with_system(turns, record), _answer(chosen, where, "chosen"), _answer(rejected, where, "rejected"))
    if "instruction" in record:
        turns: list[Turn] = []
        if record.get("system"):
            turns.append(("system", str(record["system"])))
        for pair in record.get("history") or []:
            if not (isinstance(pair, list | tuple) and len(pair) == 2):
                raise FtplanError(f"{where}: 'history' must be a list of [question, answer] pairs")
            turns += [("user", str(pair[0])), ("assistant", str(pair[1]))]
        prompt_text = str(record["instruction"])
        if record.get("input"):
            prompt_text += "\n" + str(record["input"])
        turns.append(("user", prompt_text))
    elif "prompt" in record:
        prompt = record["prompt"]
        turns = _with_system(_messages(prompt, where, "prompt") if isinstance(prompt, list)
                             else [("user", _text(prompt, where, "prompt"))], record)
    elif isinstance(record.get("conversations"), list) or isinstance(record.get("messages"), list):
        key = "conversations" if isinstance(record.get("conversations"), list) else "messages"
        turns = _with_system(_messages(record[key], where, key), record)
    else:
        raise FtplanError(f"{where}: no prompt: give 'prompt' (or 'instruction', 'conversations', 'messages'); "
                          f"{_SHAPE}")
    if not turns or turns[-1][0] != "user":
        raise FtplanError(f"{where}: the prompt must end with the user's turn (chosen and rejected are the two "
                          "answers to it); move the last assistant message into 'chosen'")
    return turns, _answer(chosen, where, "chosen"), _answer(rejected, where, "rejected")


def _with_system(turns: list[Turn], record: dict) -> list[Turn]:
    """A `system` column (LLaMA-Factory's dataset_info `system`) opens the conversation unless it has one."""
    if record.get("system") and not (turns and turns[0][0] == "system"):
        return [("system", str(record["system"])), *turns]
    return turns


def _text(value, where: str, key: str) -> str:
    if not isinstance(value, str):
        raise FtplanError(f"{where}: '{key}' must be a string, got {type(value).__name__}")
    return value


def _messages(messages, where: str, key: str) -> list[Turn]:
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise FtplanError(f"{where}: '{key}' must be a list of messages ({{\"role\": ..., \"content\": ...}})")
    return [(_role(m.get("role", m.get("from")), where), str(m.get("content", m.get("value", ""))))
            for m in messages]


def _answer(value, where: str, key: str) -> str:
    """One answer: a string, a message ({"role"/"from", "content"/"value"}) or a one-message list."""
    if isinstance(value, list):
        turns = _messages(value, where, key)
        if len(turns) != 1 or turns[0][0] != "assistant":
            raise FtplanError(f"{where}: '{key}' must hold the one assistant answer (e.g. [{{\"role\": "
                              "\"assistant\", \"content\": ...}]); put earlier turns in 'prompt'")
        text = turns[0][1]
    elif isinstance(value, dict):
        (role, text), = _messages([value], where, key)
        if role != "assistant":
            raise FtplanError(f"{where}: '{key}' must be the assistant's answer, got role {role!r}")
    else:
        text = _text(value, where, key)
    if not text.strip():
        raise FtplanError(f"{where}: '{key}' is empty; every pair needs two non-empty answers")
    return text


def _implicit_prompt(chosen: list, rejected: list, where: str) -> tuple[list[Turn], str, str]:
    """TRL's implicit prompt: the turns both conversations share are the prompt; each must then end in
    one assistant answer (trl.data_utils.extract_prompt)."""
    a, b = _messages(chosen, where, "chosen"), _messages(rejected, where, "rejected")
    shared = 0
    while shared < min(len(a), len(b)) and a[shared] == b[shared]:
        shared += 1
    if len(a) != shared + 1 or len(b) != shared + 1 or a[-1][0] != "assistant" or b[-1][0] != "assistant":
        raise FtplanError(f"{where}: with no 'prompt', 'chosen' and 'rejected' must be conversations that "
                          "differ only in their last, assistant, message; or give the shared turns as 'prompt'")
    if not shared:
        raise FtplanError(f"{where}: no prompt: 'chosen' and 'rejected' share no turns; give 'prompt'")
    return a[:shared], _answer(a[-1][1], where, "chosen"), _answer(b[-1][1], where, "rejected")


def _split(tokenizer, prompt: list[Turn], answer: str) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids): the completion is the trailing run of trained tokens, the last
    assistant turn; the template's header for that turn stays in the prompt."""
    ids, labels = tokenizer.conversation([*prompt, ("assistant", answer)])
    start = len(labels)
    while start > 0 and labels[start - 1] != IGNORE:
        start -= 1
    return ids[:start], ids[start:]


def infer_seqlen(source_len: int, target_len: int, cutoff_len: int) -> tuple[int, int]:
    """How many prompt and answer tokens fit in `cutoff_len`: LLaMA-Factory's rule (data/processor/
    processor_utils.py, `infer_seqlen`), with the longer of the two answers as the target."""
    if target_len * 2 < cutoff_len:
        max_target = cutoff_len
    elif source_len * 2 < cutoff_len:
        max_target = cutoff_len - source_len
    else:
        max_target = int(cutoff_len * (target_len / (source_len + target_len)))
    new_target = min(max_target, target_len)
    new_source = min(max(cutoff_len - new_target, 0), source_len)
    return new_source, new_target


def check_records(records: list[dict], source: str = "data") -> list[tuple[list[Turn], str, str]]:
    """Every record as (prompt turns, chosen, rejected), or a one-line error naming the first bad one;
    needs no tokenizer, so the command line checks a file before it starts a run."""
    out = []
    for number, record in enumerate(records, 1):
        where = f"{source}: record {number}"
        prompt, chosen, rejected = to_preference(record, where)
        if chosen == rejected:
            raise FtplanError(f"{where}: 'chosen' and 'rejected' are the same answer, so the pair teaches nothing "
                              "(its DPO loss stays at log 2); drop it or give a worse 'rejected'")
        out.append((prompt, chosen, rejected))
    return out


def build_pairs(records: list[dict], tokenizer, cutoff_len: int, source: str = "data") -> Built:
    """Tokenize every pair; each row (prompt + answer) fits `cutoff_len`, the prompt cut from the left."""
    pairs = Built()
    for number, (prompt, chosen, rejected) in enumerate(check_records(records, source), 1):
        prompt_ids, chosen_ids = _split(tokenizer, prompt, chosen)
        _, rejected_ids = _split(tokenizer, prompt, rejected)
        keep_prompt, keep_answer = infer_seqlen(len(prompt_ids), max(len(chosen_ids), len(rejected_ids)),
                                                cutoff_len)
        if keep_answer == 0:
            pairs.dropped.append(number)
            continue
        # the end of the prompt (the question and the assistant header) matters most: cut from the left
        prompt_ids = prompt_ids[len(prompt_ids) - keep_prompt:]
        pairs.append(Pair(prompt_ids, chosen_ids[:keep_answer], rejected_ids[:keep_answer]))
    if not pairs:
        raise FtplanError(f"{source}: no pair keeps an answer token within cutoff_len={cutoff_len}; raise "
                          "--seq-len or check the data")
    return pairs


class PairBatches(Batches):
    """Micro-batches of B pairs as 2B rows, the chosen rows first, then the rejected in the same order
    (TRL's DataCollatorForPreference / LLaMA-Factory's PairwiseDataCollatorWithPadding): one forward
    scores both answers. Prompt and padding positions carry label -100."""

    def micro_batch(self, index: int):
        pairs = self.pick(index)
        rows = [Example(p.prompt + p.chosen, [IGNORE] * len(p.prompt) + p.chosen) for p in pairs]
        rows += [Example(p.prompt + p.rejected, [IGNORE] * len(p.prompt) + p.rejected) for p in pairs]
        return self.collate(rows)
