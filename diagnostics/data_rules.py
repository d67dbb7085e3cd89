"""What the examples give the loss to learn from: label tokens per example, one-token answers, repeats.

An SFT example trains the tokens whose label is not ignored, less the first (the loss predicts token t+1 from
t, so a label at position 0 has nothing before it). An answer that trains a single token (an empty answer, so
only the end-of-turn token, or one cut to its first token by the cutoff) teaches the model to stop, not to
answer. Examples repeated token for token weigh that record several times in every epoch, and a file of one
record repeated makes every micro-batch the same: no gradient noise to measure (diagnostics.rules).
"""

from __future__ import annotations

import statistics
from collections import Counter

from diagnostics.data import IGNORE
from diagnostics.report import DataSummary
from planner.findings import Finding

# a tenth of the examples, as for dropped records (diagnostics.rules.DROPPED_SHARE): past it the run learns
# from visibly different data than the file suggests
SHARE_WARNING = 0.1


def label_tokens(labels: list[int]) -> int:
    return sum(1 for label in labels[1:] if label != IGNORE)


def example_stats(examples) -> dict:
    """DataSummary's label-token and repeat fields for SFT examples (`Example`s: input_ids and labels)."""
    if not examples:
        return {}
    counts = [label_tokens(e.labels) for e in examples]
    copies = Counter((tuple(e.input_ids), tuple(e.labels)) for e in examples)
    return {"label_tokens_median": statistics.median(counts), "label_tokens_min": min(counts),
            "one_token": [i for i, n in enumerate(counts, 1) if n == 1],
            "duplicates": len(examples) - len(copies), "most_repeated": max(copies.values())}


def _numbers(xs: list[int], limit: int = 8) -> str:
    return ", ".join(str(x) for x in xs[:limit]) + (f" (+{len(xs) - limit} more)" if len(xs) > limit else "")


def example_findings(data: DataSummary | None) -> list[Finding]:
    if data is None or data.label_tokens_median is None or not data.examples:
        return []
    out = []
    if data.one_token:
        share = len(data.one_token) / data.examples
        out.append(Finding(
            code="one_token_answers", severity="warning" if share > SHARE_WARNING else "info",
            message="Answers that train one token",
            evidence=f"{len(data.one_token)} of {data.examples} examples ({share:.0%}; examples "
                     f"{_numbers(data.one_token)}) train a single token: an empty answer (only the end-of-turn "
                     f"token) or one cut to its first token by seq_len={data.seq_len}; the examples train a median "
                     f"{data.label_tokens_median:g} label tokens",
            data={"examples": data.one_token, "count": len(data.one_token),
                  "label_tokens_median": data.label_tokens_median},
            fix="give those records a real answer, or raise seq_len (cutoff_len) if the prompt leaves no room"))
    if data.duplicates:
        share = data.duplicates / data.examples
        out.append(Finding(
            code="duplicated_data", severity="warning" if share > SHARE_WARNING else "info",
            message="Repeated examples",
            evidence=f"{data.duplicates} of {data.examples} examples ({share:.0%}) repeat an earlier one token for "
                     f"token; the most repeated appears {data.most_repeated} times",
            data={"duplicates": data.duplicates, "most_repeated": data.most_repeated},
            fix="deduplicate the data: a repeated record weighs that much more in every epoch"))
    return out
