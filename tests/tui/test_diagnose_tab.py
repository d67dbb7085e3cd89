"""The Diagnose tab (issue 14): its own run size, what it does not use, the random-weights banner, the CPU
refusal, the finished run's advice and memory, an interrupted status said once and an ETA that moves."""

from __future__ import annotations

import pytest

from diagnostics.report import DiagnoseSettings, DiagnosticReport, StepRecord
from planner.findings import Change
from tests.tui.test_app import running, set_value, settle


async def diagnose_tab(app, pilot):
    await pilot.press("4")
    await settle(app, pilot)
    return app.query_one("#diagnose-pane")


def text(app, widget_id: str) -> str:
    return str(app.query_one(widget_id).render())


@pytest.fixture
def no_child(monkeypatch) -> list[DiagnoseSettings]:
    """The settings a run would start with; no child process."""
    import tui.diagnose_pane

    started: list[DiagnoseSettings] = []
    monkeypatch.setattr(tui.diagnose_pane.DiagnosePane, "_run", lambda self, settings: started.append(settings))
    return started


@pytest.mark.asyncio
async def test_a_cpu_run_has_its_own_small_size_and_says_what_it_drops(no_child) -> None:
    async with running() as (app, pilot):
        await set_value(app, pilot, "model", "tiny-llama")
        for field, value in (("batch_size", "8"), ("grad_accum", "16"), ("seq_len", "2048"), ("gpus", "4")):
            await set_value(app, pilot, field, value)
        await set_value(app, pilot, "zero", 3)
        diag = await diagnose_tab(app, pilot)
        assert not diag.on_gpu  # no NVML on the test machine
        # blank fields: a small CPU run, not the plan's 8 x 16 x 2048 (a 40-minute ETA on a CPU)
        assert app.query_one("#diag-batch").placeholder.startswith("2 ")
        assert app.query_one("#diag-seq").placeholder.startswith("256 ")
        scope = text(app, "#diag-scope")
        assert "4 GPUs" in scope and "ZeRO-3" in scope and "not used" in scope
        await pilot.press("r")
        await settle(app, pilot)
        plan = no_child[-1].plan
        assert (plan.batch_size, plan.grad_accum, plan.seq_len, plan.gpus, plan.zero) == (2, 1, 256, 1, 0)
        assert plan.method == app.state.plan.method

        app.query_one("#diag-batch").value = "3"  # a typed size wins over the default
        app.query_one("#diag-seq").value = "64"
        app.query_one("#diag-steps").value = "7"
        diag._finished(type("M", (), {"report": DiagnosticReport(status="completed", settings=no_child[-1])})())
        await pilot.press("r")
        await settle(app, pilot)
        assert (no_child[-1].plan.batch_size, no_child[-1].plan.seq_len, no_child[-1].steps) == (3, 64, 7)


@pytest.mark.asyncio
async def test_a_bad_size_names_its_field(no_child) -> None:
    async with running() as (app, pilot):
        await diagnose_tab(app, pilot)
        app.query_one("#diag-seq").value = "0"
        await pilot.press("r")
        await settle(app, pilot)
        assert not no_child and "sequence length" in text(app, "#diag-status")


@pytest.mark.asyncio
async def test_a_long_cpu_run_is_refused_with_its_reason(no_child) -> None:
    async with running() as (app, pilot):
        # 7B parameters: about 6 x 7e9 FLOPs per token for 20 steps x 2 x 256 tokens is ~4e14 FLOPs; a CPU that
        # does a (generous) 1e12 FLOP/s takes 7 minutes, more than the few minutes a check may take
        assert app.state.spec.name == "7b" or "7" in app.state.spec.name
        await diagnose_tab(app, pilot)
        await pilot.press("r")
        await settle(app, pilot)
        status = text(app, "#diag-status")
        assert not no_child and "not run" in status and "CPU" in status and "steps" in status
        assert not app.query_one("#diag-run").disabled  # nothing is running


@pytest.mark.asyncio
async def test_a_config_only_model_carries_the_random_weights_banner(no_child) -> None:
    async with running() as (app, pilot):
        await set_value(app, pilot, "model", "tiny-llama")  # a preset: a config.json and no weights
        await diagnose_tab(app, pilot)
        banner = text(app, "#diag-banner")
        assert app.query_one("#diag-banner").display and "random weights" in banner and "plateau" in banner


def _record(step: int) -> StepRecord:
    return StepRecord(step=step, loss=5.0, lr=1e-4, grad_norm=1.0, clipped=False, layer_norms={"block.0": 0.5},
                      kind_norms={})


@pytest.mark.asyncio
async def test_the_eta_moves_between_steps_and_an_interrupted_run_says_so_once(no_child) -> None:
    from tui.diagnose_pane import RunFinished, StepArrived

    async with running() as (app, pilot):
        await set_value(app, pilot, "model", "tiny-llama")
        diag = await diagnose_tab(app, pilot)
        app.query_one("#diag-steps").value = "10"
        await pilot.press("r")
        await settle(app, pilot)
        for step in (1, 2):
            diag.post_message(StepArrived(_record(step)))
            await pilot.pause(0.3)
        now = diag._step_times[-1]
        per_step = diag._step_times[1] - diag._step_times[0]
        # 8 steps left at the mean step time so far, less the time into the third
        assert diag.eta(now + 0.1) == pytest.approx(8 * per_step - 0.1)
        assert diag.eta(now + 0.2) < diag.eta(now + 0.1)  # it counts down while no step arrives

        report = DiagnosticReport(status="interrupted", settings=no_child[-1], records=[_record(1), _record(2)],
                                  message="stopped on request (Ctrl-C or Cancel); the report covers the steps "
                                          "before it")
        diag.cancel()
        diag.post_message(RunFinished(report))
        diag.post_message(StepArrived(_record(3)))  # a late step changes nothing after the report
        await settle(app, pilot)
        await pilot.pause(1.2)  # a tick of the ETA timer after the end
        status = text(app, "#diag-status")
        whole = status + text(app, "#diag-findings")
        assert whole.count("interrupted") == 1 and "left" not in status and "cancelling" not in status
        assert len(diag.records) == 2


@pytest.mark.asyncio
async def test_a_finished_run_shows_its_advice_and_memory(no_child) -> None:
    from diagnostics.report import MemoryComparison
    from tui.diagnose_pane import RunFinished

    async with running() as (app, pilot):
        await set_value(app, pilot, "model", "tiny-llama")
        diag = await diagnose_tab(app, pilot)
        await pilot.press("r")
        await settle(app, pilot)
        advice = Change(title="Clip harder", reason="grad norm spikes", changes={"max_grad_norm": 0.5},
                        current={"max_grad_norm": 1.0})
        memory = MemoryComparison(estimate_allocated=3 * 2**30, estimate_total=4 * 2**30,
                                  measured_allocated=2 * 2**30, error=0.5)
        report = DiagnosticReport(status="completed", settings=no_child[-1], records=[_record(1)], advice=[advice],
                                  memory=memory, environment={"random_init": False, "tokenizer": "Qwen2Tokenizer"})
        diag.post_message(RunFinished(report))
        await settle(app, pilot)
        table = app.query_one("#diag-advice")
        assert table.display and table.row_count == 1
        row = [str(c) for c in table.get_row_at(0)]
        assert row[1:] == ["1.0", "0.5", "grad norm spikes"]
        line = text(app, "#diag-memory")
        assert "planner 3.00 GiB" in line and "measured 2.00 GiB (+50.0%)" in line
        # the run used real weights and a real tokenizer: no banner
        assert not app.query_one("#diag-banner").display
