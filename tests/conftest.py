"""Test-wide settings: GPU tests skip cleanly where there is no CUDA device."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config, items):
    try:
        from diagnostics.measure import gpu_available

        has_gpu = gpu_available()
    except Exception:  # no torch, or a broken one, means no GPU here
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run scripts/gpu_check.sh on one)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
