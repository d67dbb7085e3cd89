"""Path to fit on screen (issue 14): the Plan tab and `ftplan estimate` show the cheapest changes that fit and
the smallest catalog GPU; Enter on the path applies all of its changes, and the plan then fits."""

from __future__ import annotations

import pytest

from planner.service import plan_run
from planner.spec import load_spec
from planner.target import GpuTarget
from tests.tui.test_app import running, set_value, settle
from tui.cli import main


@pytest.mark.asyncio
async def test_the_plan_tab_shows_the_path_and_enter_applies_it() -> None:
    async with running() as (app, pilot):
        # 7b full at sequence 4096 on an RTX 4090: far too big, and no single change fits
        await set_value(app, pilot, "method", "full")
        await set_value(app, pilot, "seq_len", "4096")
        await settle(app, pilot)
        assert not any(s.fits for s in app.state.result.suggestions if "seq_len" not in s.changes)
        assert not app.state.result.fit.fits
        shown = str(app.query_one("#path-to-fit").render())
        assert "path to fit RTX-4090" in shown and "smallest catalog GPU that fits as is" in shown
        options = app.query_one("#suggestions")
        assert options.get_option_at_index(0).id == "path"
        options.focus()
        await pilot.press("enter")
        await settle(app, pilot)
        await settle(app, pilot)
        result = app.state.result
        assert result.fit.fits and not app.query_one("#path-to-fit").display
        # the service agrees on the applied plan
        check = plan_run(load_spec("7b"), app.state.plan, GpuTarget.of_catalog("RTX-4090"))
        assert check.fit.fits and check.memory.total == result.memory.total


def test_ftplan_estimate_prints_the_path(capsys) -> None:
    code = main(["estimate", "--model", "7b", "--method", "full", "--gpu", "RTX-4090"])
    out = capsys.readouterr().out
    assert code == 1
    assert "path to fit RTX-4090:" in out and "smallest catalog GPU that fits as is:" in out
    assert out.index("path to fit") < out.index("what to change")
    code = main(["estimate", "--model", "tiny-llama", "--gpu", "RTX-4090"])
    assert code == 0 and "path to fit" not in capsys.readouterr().out


def test_ftplan_estimate_json_carries_the_path(capsys) -> None:
    """`--json` adds `path_to_fit` to the Estimate's dump; the service confirms it: the changes fit, the smallest
    GPU fits as is and every catalog GPU with less memory does not."""
    import json

    from planner.hardware import catalog
    from planner.plan import Plan

    code = main(["estimate", "--model", "7b", "--method", "full", "--gpu", "RTX-4090", "--json"])
    dump = json.loads(capsys.readouterr().out)
    assert code == 1 and not dump["fit"]["fits"]
    path = dump["path_to_fit"]
    spec, plan = load_spec("7b"), Plan.build(**dump["plan"])
    changed = plan_run(spec, plan.with_(**path["change"]["changes"]), GpuTarget.of_catalog("RTX-4090"))
    assert changed.fit.fits and changed.memory.total == path["change"]["new_total"]
    smallest = plan_run(spec, plan, GpuTarget.of_catalog(path["smallest_gpu"]))
    assert smallest.fit.fits and smallest.memory.total == path["smallest_gpu_total"]
    smaller = [g.name for g in catalog() if GpuTarget.of_catalog(g.name).capacity < smallest.fit.capacity]
    assert smaller and not any(plan_run(spec, plan, GpuTarget.of_catalog(g)).fit.fits for g in smaller)
    assert main(["estimate", "--model", "tiny-llama", "--gpu", "RTX-4090", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["path_to_fit"] is None
