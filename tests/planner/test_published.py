"""Golden test: totals against published *measured* peaks (benchmarks/published_measurements.yaml).

The headline rows are chosen by a rule over each row's data (`kind`, `unmodelled`), never by id;
docs/accuracy.md prints the rule and every row.
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
from functools import cache
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "benchmarks" / "published_measurements.yaml"


@cache
def _accuracy_module():
    spec = importlib.util.spec_from_file_location("accuracy", ROOT / "benchmarks" / "accuracy.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["accuracy"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@cache
def _compared():
    return _accuracy_module().compare()


def _yaml_rows() -> list[dict]:
    return yaml.safe_load(DATA.read_text(encoding="utf-8"))


def test_every_row_states_kind_confidence_and_its_unmodelled_list() -> None:
    rows = _yaml_rows()
    assert len({r["id"] for r in rows}) == len(rows)
    for r in rows:
        assert r["kind"] in ("measured", "estimated"), r["id"]
        assert r["confidence"] in ("full", "partial"), r["id"]
        assert isinstance(r.get("unmodelled"), list), f"{r['id']}: no unmodelled list"
        assert all(isinstance(x, str) and x.strip() for x in r["unmodelled"]), r["id"]
        assert len(set(r["unmodelled"])) == len(r["unmodelled"]), r["id"]


def test_headline_is_exactly_the_rows_the_rule_accepts() -> None:
    """Measured, with nothing unmodelled: computed here from the YAML alone, then compared."""
    expected = {r["id"] for r in _yaml_rows() if r["kind"] == "measured" and r["unmodelled"] == []}
    rows = _compared()
    assert [r.id for r in rows] == [r["id"] for r in _yaml_rows()]  # every row is reported
    assert {r.id for r in rows if r.headline} == expected
    for r in rows:
        assert r.headline == (not r.reasons), (r.id, r.reasons)  # a reason for every row left out
        if r.headline:
            assert r.ours is not None, f"{r.id}: in the headline but without an estimate ({r.no_estimate})"


def test_no_row_is_chosen_by_its_id() -> None:
    source = (ROOT / "benchmarks" / "accuracy.py").read_text(encoding="utf-8")
    named = [r["id"] for r in _yaml_rows() if r["id"] in source]
    assert not named, f"benchmarks/accuracy.py names rows: {named}"


def test_headline_rows_are_matched_within_the_stated_bounds() -> None:
    bounds = _accuracy_module().BOUNDS
    errors = {r.id: abs(r.ours - r.measured) / r.measured for r in _compared() if r.headline}
    assert len(errors) >= bounds["rows"], errors
    assert statistics.mean(errors.values()) <= bounds["mean"], errors
    assert statistics.median(errors.values()) <= bounds["median"], errors
    assert max(errors.values()) <= bounds["worst"], errors


def test_accuracy_doc_is_current() -> None:
    module = _accuracy_module()
    assert (ROOT / "docs" / "accuracy.md").read_text(encoding="utf-8") == module.render(_compared()), \
        "docs/accuracy.md is stale: run python benchmarks/accuracy.py --write"
