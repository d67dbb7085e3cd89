"""The collapsed "more settings" section: its fields (issue 11's flags without a form field) reach the plan."""

from __future__ import annotations

import pytest

from planner.plan import Plan
from planner.service import plan_run as estimate
from planner.spec import load_spec
from planner.target import GpuTarget
from tests.tui.test_app import running, settle


@pytest.mark.asyncio
async def test_tensor_parallel_in_more_settings_changes_the_plan() -> None:
    async with running() as (app, pilot):
        before = app.state.result.memory.total
        app.query_one("#more-settings CollapsibleTitle").focus()  # keyboard: the form scrolls to it
        await pilot.press("enter")
        await settle(app, pilot)
        assert app.query_one("#tensor_parallel").region.height == 1  # laid out now that it is open
        app.query_one("#gpus").value = "2"
        app.query_one("#tensor_parallel").value = "2"
        await settle(app, pilot)
        state = app.state
        assert state.plan.tensor_parallel == 2 and state.plan.gpus == 2
        # the truth: the planner asked directly for the same run with TP 2 over 2 GPUs
        truth = estimate(load_spec("7b"), Plan.build(method="lora", lora_target="all", gpus=2, tensor_parallel=2),
                         GpuTarget.of_catalog(state.target.name)).memory.total
        assert state.result.memory.total == truth < before


@pytest.mark.asyncio
async def test_a_dropdown_steps_with_arrows_and_packing_switch_applies() -> None:
    async with running() as (app, pilot):
        app.query_one("#more-settings CollapsibleTitle").focus()  # keyboard: the form scrolls to it
        await pilot.press("enter")
        await settle(app, pilot)
        app.query_one("#packing").focus()
        await pilot.press("right")  # off -> on
        await settle(app, pilot)
        assert app.state.plan.packing is True
