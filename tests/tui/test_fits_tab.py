"""What fits (issue 14): 1/2/4/8-GPU views, sorting by a column, `/` to filter GPUs by name."""

from __future__ import annotations

import pytest

from planner.hardware import find_gpu
from tests.tui.test_app import active_tab, running, set_value, settle


async def fits_tab(app, pilot):
    await pilot.press("2")
    await settle(app, pilot)
    return app.query_one("#fits-pane")


def names(pane) -> list[str]:
    return [r.gpu for r in pane.rows]


@pytest.mark.asyncio
async def test_the_gpu_view_replans_every_cell_over_that_many_gpus() -> None:
    async with running() as (app, pilot):
        await set_value(app, pilot, "method", "full")
        await set_value(app, pilot, "zero", 3)  # ZeRO-3 divides weights, gradients and optimizer by the GPU count
        pane = await fits_tab(app, pilot)
        one = {r.gpu: r for r in pane.all_rows}
        await pilot.press("g", "g", "g")  # plan's -> 1 -> 2 -> 4
        await settle(app, pilot)
        assert pane.gpus == 4 and "4 GPUs" in str(app.query_one("#fits-title").render())
        four = {r.gpu: r for r in pane.all_rows}

        def cell(row):
            return next(c for c in row.cells if c.method == "full")

        # sharded four ways, the full fine-tune needs less per GPU on every GPU, and fits on at least as many
        assert all(cell(four[g]).need < cell(one[g]).need for g in one if cell(one[g]).need)
        assert sum(cell(r).max_batch > 0 for r in four.values()) >= sum(cell(r).max_batch > 0 for r in one.values())
        # enter plans the cell with the view's GPU count
        table = app.query_one("#fits-table")
        table.focus()
        row = names(pane).index("H100-80GB")
        table.cursor_coordinate = (row, 1 + [c.method for c in pane.rows[row].cells].index("full"))
        await pilot.press("enter")
        await settle(app, pilot)
        assert active_tab(app) == "plan" and app.state.plan.gpus == 4 and app.state.plan.method == "full"


@pytest.mark.asyncio
async def test_t_sorts_by_the_cursor_column_and_slash_filters_by_name() -> None:
    async with running() as (app, pilot):
        pane = await fits_tab(app, pilot)
        catalog = names(pane)
        table = app.query_one("#fits-table")
        table.cursor_coordinate = (0, 0)
        await pilot.press("t")  # the GPU column: by memory, smallest first
        await settle(app, pilot)
        memory = [find_gpu(n).memory_bytes for n in names(pane)]
        assert memory == sorted(memory) and sorted(names(pane)) == sorted(catalog)
        column = 1 + [c.method for c in pane.rows[0].cells].index("qlora")
        table.cursor_coordinate = (0, column)
        await pilot.press("t")  # the QLoRA column: the largest micro-batch first, then the least memory short
        await settle(app, pilot)
        batches = [r.cells[column - 1].max_batch for r in pane.rows]
        fitting = [b for b in batches if b]
        assert fitting == sorted(fitting, reverse=True) and batches[:len(fitting)] == fitting
        await pilot.press("t")  # again: catalog order
        await settle(app, pilot)
        assert names(pane) == catalog

        await pilot.press("slash")
        await pilot.pause()
        assert app.focused is app.query_one("#fits-search") and active_tab(app) == "fits"
        await pilot.press("h", "1", "0", "0")
        await settle(app, pilot)
        assert names(pane) and all("h100" in n.lower() for n in names(pane))
        assert table.row_count == len(names(pane)) == sum("h100" in n.lower() for n in catalog)
        await pilot.press("escape")
        await pilot.pause()
        assert app.focused is table


@pytest.mark.asyncio
async def test_v_shows_each_fitting_cells_time_per_epoch_as_the_service_plans_it() -> None:
    from planner.service import plan_run
    from planner.spec import load_spec
    from planner.target import GpuTarget

    async with running() as (app, pilot):
        await set_value(app, pilot, "time-samples", "5000")
        pane = await fits_tab(app, pilot)
        table = app.query_one("#fits-table")
        before = str(table.get_cell_at((0, 1)))
        await pilot.press("v")
        await settle(app, pilot)
        assert "time per epoch of 5,000 samples" in str(app.query_one("#fits-view").render())
        column = [c.method for c in pane.rows[0].cells].index("lora")
        fitting = [i for i, r in enumerate(pane.rows) if r.cells[column].max_batch]
        assert fitting
        for i in fitting[:3]:
            row, cell = pane.rows[i], pane.rows[i].cells[column]
            # the Plan tab's time to train for that GPU and method at the cell's micro-batch, one epoch
            truth = plan_run(load_spec("7b"), app.state.result.plan.with_(method="lora", batch_size=cell.max_batch),
                             GpuTarget.of_catalog(row.gpu), samples=5000).time.total_seconds
            assert pane.times[pane.all_rows.index(row)][column] == pytest.approx(truth, rel=1e-9)
            shown = str(table.get_cell_at((i, column + 1)))
            assert shown.startswith("✓") and "b≤" not in shown
        await pilot.press("v")  # back to the largest micro-batch
        await settle(app, pilot)
        assert str(table.get_cell_at((0, 1))) == before
