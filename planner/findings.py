"""One shape for everything ftplan says about a run, and one for everything it proposes to change.

A `Finding` is an estimate warning, a static config check or a diagnostics-run finding; a
`Change` is a memory suggestion, a check's fix or the diagnostics' advice. Both name
settings by their field (`planner.fields`), never by a front end's name: the texts in them
are worded for whoever asked (`vocabulary` of `planner.service.plan_run`), and a config
writer turns `Change.changes` into its own keys.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

Severity = Literal["error", "warning", "info"]


class Change(BaseModel):
    """Set these fields to these values: why, and (for memory suggestions) what it does to the total."""

    title: str
    changes: dict[str, Any]  # field -> new value
    current: dict[str, Any] = {}  # field -> value now, when known
    reason: str = ""
    how: str = ""  # the same change in the asker's vocabulary: flags, config keys or form labels
    new_total: int | None = None  # bytes per GPU after the change
    saved: int | None = None
    fits: bool | None = None


class Finding(BaseModel):
    severity: Severity
    code: str  # stable identifier, e.g. "seq_beyond_context", "high_lr", "exploding_gradients"
    message: str
    evidence: str | None = None
    field: str | None = None  # the setting concerned, if one is
    data: dict[str, Any] = {}  # numbers behind the evidence (steps, layers, values)
    fix: str | None = None  # what to do, in words, when no single change says it
    change: Change | None = None
