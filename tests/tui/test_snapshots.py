"""Snapshots of the main screens at 80x24 and 160x48 (pytest-textual-snapshot; textual is pinned).

Refresh them after an intended change with `pytest tests/tui/test_snapshots.py --snapshot-update`.
"""

from __future__ import annotations

import pytest

from tui.app import FtplanApp

SIZES = [(80, 24), (160, 48)]  # a laptop's tmux pane, and a wide screen that uses the right column


async def settled(pilot) -> None:
    # a worker's result can start another (the model read, then the plan, then its advice) and each redraw can
    # relayout once more: wait until both are quiet, so the capture does not depend on the machine's load
    for _ in range(3):
        await pilot.pause()
        await pilot.app.workers.wait_for_complete()
    await pilot.pause(0.1)


def after(*keys: str, setup=None):
    async def run_before(pilot) -> None:
        await settled(pilot)
        if setup is not None:
            await setup(pilot)
            await settled(pilot)
        for key in keys:
            await pilot.press(key)
            await settled(pilot)
    return run_before


async def full_fine_tune(pilot) -> None:
    pilot.app.query_one("#method").value = "full"


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_plan_tab(snap_compare, size) -> None:
    assert snap_compare(FtplanApp(), terminal_size=size, run_before=after())


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_plan_tab_with_suggestions(snap_compare, size) -> None:
    assert snap_compare(FtplanApp(), terminal_size=size, run_before=after(setup=full_fine_tune))


async def past_the_context(pilot) -> None:
    pilot.app.query_one("#seq_len").value = "8192"  # 7b's context is 4,096: a warning


def test_plan_tab_with_a_warning(snap_compare) -> None:
    assert snap_compare(FtplanApp(), terminal_size=(80, 24), run_before=after(setup=past_the_context))


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_what_fits_tab(snap_compare, size) -> None:
    assert snap_compare(FtplanApp(), terminal_size=size, run_before=after("2"))


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_gpus_tab_without_a_gpu(snap_compare, size, monkeypatch) -> None:
    import diagnostics.nvml as nvml
    from tests.diagnostics.fake_nvml import FakeNvml

    monkeypatch.setattr(nvml, "PynvmlBackend", lambda: FakeNvml([], init_failure=nvml.NvmlFailure(
        "library_not_found", "NVML Shared Library Not Found")))
    assert snap_compare(FtplanApp(), terminal_size=size, run_before=after("3"))


def test_diagnose_tab_idle(snap_compare) -> None:
    assert snap_compare(FtplanApp(), terminal_size=(160, 48), run_before=after("4"))


def test_help_screen(snap_compare) -> None:
    assert snap_compare(FtplanApp(), terminal_size=(80, 24), run_before=after("question_mark"))


async def steady_cursor(pilot) -> None:
    pilot.app.query_one("#model").cursor_blink = False  # a blinking cursor would differ between runs


def test_a_text_field_focused(snap_compare) -> None:
    # the focus mark on the field, and the footer while typing: esc and ctrl+q, no letter keys
    assert snap_compare(FtplanApp(), terminal_size=(80, 24), run_before=after("m", setup=steady_cursor))
