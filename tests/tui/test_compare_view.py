"""The Compare screen (key `c` from the Plan tab): a row per method for the plan's model and GPU, each the service's
plan for that method, and the reason where the model cannot take one."""

from __future__ import annotations

import pytest

from planner.plan import Plan
from planner.service import plan_run
from planner.spec import load_spec
from tests.tui.test_app import running, set_value, settle
from tui.compare_pane import CompareScreen

LABELS = ["full", "freeze", "lora", "lora+DoRA", "qlora", "prefix", "prompt", "ptuning", "ia3", "adapter", "oft"]


async def open_compare(app, pilot) -> CompareScreen:
    await pilot.press("c")
    await settle(app, pilot)
    screen = app.screen
    assert isinstance(screen, CompareScreen)
    await screen.workers.wait_for_complete()
    await pilot.pause()
    return screen


@pytest.mark.asyncio
async def test_compare_shows_a_row_per_method_of_the_plans_model() -> None:
    async with running() as (app, pilot):
        state = app.state
        screen = await open_compare(app, pilot)
        table = screen.query_one("#compare-table")
        assert [key.value for key in table.rows] == LABELS
        lora = table.get_row("lora")
        trainable = plan_run(load_spec(state.model), Plan(method="lora"), state.target).params.trainable
        assert str(lora[1]) == f"{trainable / 1e6:.2f}M"  # 7B LoRA: millions of parameters
        assert "RTX-4090" in str(screen.query_one("#compare-title").render())
        assert "LoRA vs Adapter" in str(screen.query_one("#compare-summary").render())
        await pilot.press("escape")
        assert not isinstance(app.screen, CompareScreen)


@pytest.mark.asyncio
async def test_a_method_the_model_cannot_take_shows_its_reason() -> None:
    async with running() as (app, pilot):
        await set_value(app, pilot, "method", "full")  # the form's LoRA cannot target GPT-2's Conv1D by `all`
        await set_value(app, pilot, "model", "gpt2")
        assert app.state.spec.model_type == "gpt2"
        screen = await open_compare(app, pilot)
        oft = screen.query_one("#compare-table").get_row("oft")
        assert str(oft[1]) == "not planned"
        assert "oft not planned" in str(screen.query_one("#compare-notes").render())
