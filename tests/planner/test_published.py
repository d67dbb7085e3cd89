"""Golden test: totals against published *measured* peaks (benchmarks/published_measurements.yaml).

Only rows whose runs used nothing ftplan does not model count; see docs/accuracy.md for all rows.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _accuracy_module():
    spec = importlib.util.spec_from_file_location("accuracy", ROOT / "benchmarks" / "accuracy.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["accuracy"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_clean_published_rows_are_matched() -> None:
    rows, _ = _accuracy_module().compare()
    clean = [r for r in rows if r.clean]
    assert len(clean) >= 10
    errors = {r.id: (r.ours - r.measured) / r.measured for r in clean}
    assert all(abs(e) <= 0.25 for e in errors.values()), errors
    assert sum(abs(e) for e in errors.values()) / len(errors) <= 0.10, errors


def test_accuracy_doc_is_current() -> None:
    module = _accuracy_module()
    rows, skipped = module.compare()
    assert (ROOT / "docs" / "accuracy.md").read_text(encoding="utf-8") == module.render(rows, skipped), \
        "docs/accuracy.md is stale: run python benchmarks/accuracy.py --write"
