"""Pilot tests of the Textual app: the screen shows the planner's numbers and reacts to every field."""

from __future__ import annotations

from contextlib import asynccontextmanager

import pytest

from diagnostics.preflight import preflight
from planner.configs import read_run_config
from planner.hardware import find_gpu
from planner.service import plan_run as estimate
from planner.spec import load_spec
from planner.target import GpuTarget
from tui.app import FtplanApp, estimate_command
from tui.fits_pane import fit_cells
from tui.plan_pane import MODEL_DEBOUNCE_S, PlanPane, PlanState


@asynccontextmanager
async def running(size=(120, 40)):
    """The app, started and settled (the model loaded, the first plan drawn)."""
    app = FtplanApp()
    async with app.run_test(size=size) as pilot:
        await settle(app, pilot)
        yield app, pilot


async def settle(app, pilot) -> None:
    await pilot.pause()
    await app.workers.wait_for_complete()
    await pilot.pause()


def expected_total(state) -> int:
    return estimate(load_spec(state.model), state.plan, GpuTarget.of_catalog(state.target.name)).memory.total


def pane(app) -> PlanPane:
    return app.query_one("#plan-pane", PlanPane)


async def set_value(app, pilot, field: str, value) -> None:
    widget = app.query_one(f"#{field}")
    widget.value = value
    if field == "model":  # the model is read once typing pauses
        await pilot.pause(MODEL_DEBOUNCE_S + 0.2)
    await settle(app, pilot)


@pytest.mark.asyncio
async def test_fields_drive_the_breakdown_and_verdict() -> None:
    async with running() as (app, pilot):
        state = app.state
        assert state is not None and state.model == "7b" and state.plan.method == "lora"
        assert state.result.memory.total == expected_total(state)
        verdict = str(app.query_one("#summary").render())
        assert "fits RTX-4090" in verdict

        await set_value(app, pilot, "method", "full")
        assert app.state.plan.method == "full" and app.state.result.memory.total == expected_total(app.state)
        assert "does not fit RTX-4090" in str(app.query_one("#summary").render())

        await set_value(app, pilot, "batch_size", "4")
        assert app.state.plan.batch_size == 4 and app.state.result.memory.total == expected_total(app.state)

        await set_value(app, pilot, "gpu", "H200")
        assert app.state.target.name == "H200" and app.state.result.fit.capacity == find_gpu("H200").memory_bytes


@pytest.mark.asyncio
async def test_an_invalid_field_is_marked_and_the_last_plan_stays() -> None:
    async with running() as (app, pilot):
        before = app.state
        await set_value(app, pilot, "batch_size", "0")
        batch = app.query_one("#batch_size")
        assert batch.has_class("-invalid") and batch.border_subtitle == "invalid"
        assert "micro-batch must be at least 1" in str(app.query_one("#form-error").render())
        assert app.state is before  # nothing recomputed, nothing crashed
        await set_value(app, pilot, "batch_size", "2")
        assert app.state.plan.batch_size == 2 and str(app.query_one("#form-error").render()) == ""


@pytest.mark.asyncio
async def test_a_plan_error_names_its_field() -> None:
    async with running() as (app, pilot):
        await set_value(app, pilot, "offload_optimizer", True)  # offload needs ZeRO
        # worded in the form's own labels, never as a CLI flag, and marked on the field itself
        message = str(app.query_one("#form-error").render())
        assert message.startswith("offload optim.: needs ZeRO: set ZeRO stage to 1, 2 or 3") and "--" not in message
        assert app.query_one("#offload_optimizer").border_subtitle == "invalid"


@pytest.mark.asyncio
async def test_applying_a_suggestion_changes_the_form() -> None:
    async with running() as (app, pilot):
        await set_value(app, pilot, "method", "full")
        suggestion = app.state.result.suggestions[0]
        options = app.query_one("#suggestions")
        options.focus()
        options.highlighted = 0
        await pilot.press("enter")
        await settle(app, pilot)
        for field, value in suggestion.changes.items():
            assert getattr(app.state.plan, field) == value
        assert app.state.result.memory.total == suggestion.new_total


@pytest.mark.asyncio
async def test_export_writes_yaml_that_preflight_reads_back_to_the_same_plan(tmp_path) -> None:
    async with running() as (app, pilot):
        await set_value(app, pilot, "method", "qlora")
        await set_value(app, pilot, "seq_len", "2048")
        await set_value(app, pilot, "gradient_checkpointing", True)
        first = app.export_yaml(str(tmp_path / "train.yaml"))
        second = app.export_yaml(str(tmp_path / "train.yaml"))
        assert first.name == "train.yaml" and second.name == "train-1.yaml"  # nothing overwritten
        run = read_run_config(first)
        assert run.plan == app.state.plan.model_copy(update={"quant_bits": 4})
        report = preflight(first, gpu="RTX 4090")
        assert report.estimate.memory.total == app.state.result.memory.total


@pytest.mark.asyncio
async def test_zero3_export_writes_its_deepspeed_file(tmp_path) -> None:
    async with running() as (app, pilot):
        await set_value(app, pilot, "method", "full")
        await set_value(app, pilot, "gpus", "4")
        await set_value(app, pilot, "zero", 3)
        path = app.export_yaml(str(tmp_path / "train.yaml"))
        run = read_run_config(path)
        # the DeepSpeed file is named after the export, so two exports in one folder never share one
        assert run.plan.zero == 3 and (tmp_path / "train.ds_z3.json").exists()


@pytest.mark.asyncio
async def test_what_fits_and_gpus_tabs() -> None:
    async with running() as (app, pilot):
        await pilot.press("2")
        await settle(app, pilot)
        table = app.query_one("#fits-table")
        assert table.row_count >= 14
        await pilot.press("3")
        await settle(app, pilot)
        status = str(app.query_one("#gpus-status").render())
        assert "No NVIDIA GPU" in status or "driver" in status


@pytest.mark.asyncio
async def test_a_diagnose_run_completes_inside_the_app() -> None:
    async with running() as (app, pilot):
        await set_value(app, pilot, "model", "tiny-llama")
        await set_value(app, pilot, "seq_len", "128")
        await pilot.press("4")
        await pilot.pause()
        app.query_one("#diag-steps").value = "6"
        await pilot.press("r")
        await settle(app, pilot)
        diag = app.query_one("#diagnose-pane")
        assert diag.report is not None and diag.report.status == "completed" and len(diag.report.records) == 6
        text = str(app.query_one("#diag-findings").render())
        assert "no findings" in text or diag.report.findings


def test_copy_command_reproduces_the_plan() -> None:
    import shlex

    from planner.plan import Plan
    from tui.cli import build_parser
    from tui.flags import plan_from, target_from

    plan = Plan(method="qlora", batch_size=3, seq_len=2048, gradient_checkpointing=True, lora_rank=16,
                lora_target="q_proj,v_proj", double_quant=False, gpus=2, zero=2, offload_optimizer=True)
    target = GpuTarget.of_catalog("H100")
    state = PlanState("7b", load_spec("7b"), plan, target, None)
    args = build_parser().parse_args(shlex.split(estimate_command(state))[1:])
    assert plan_from(args) == plan and target_from(args).gpu == target.gpu


@pytest.mark.asyncio
async def test_typing_a_model_name_reads_it_once_typing_pauses(monkeypatch) -> None:
    import tui.plan_pane

    reads: list[str] = []

    def counting_load_spec(name: str):
        reads.append(name)
        return load_spec(name)

    monkeypatch.setattr(tui.plan_pane, "load_spec", counting_load_spec)
    async with running() as (app, pilot):
        reads.clear()
        model = app.query_one("#model")
        model.focus()
        model.value = ""
        await pilot.press(*"tiny-llama")
        await set_value(app, pilot, "batch_size", "1")  # settles, without waiting for the model
        assert reads == []  # nothing read while typing
        await pilot.pause(MODEL_DEBOUNCE_S + 0.2)
        await settle(app, pilot)
        assert reads == ["tiny-llama"]
        assert app.state.model == "tiny-llama" and app.state.spec == load_spec("tiny-llama")


@pytest.mark.asyncio
async def test_an_unexpected_error_reading_a_model_is_shown_not_raised(monkeypatch) -> None:
    import tui.plan_pane

    async with running() as (app, pilot):
        before = app.state

        def broken(name: str):
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")

        monkeypatch.setattr(tui.plan_pane, "load_spec", broken)
        await set_value(app, pilot, "model", "./corrupt")
        assert "could not read './corrupt'" in str(app.query_one("#spec").render())
        assert app.is_running and app.state is before


@pytest.mark.asyncio
async def test_an_unwritable_export_path_is_reported_and_nothing_is_left(tmp_path, monkeypatch) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("mine\n")
    async with running() as (app, _pilot):
        notes: list[tuple[str, str]] = []
        monkeypatch.setattr(app, "notify", lambda message, **kw: notes.append((message, kw.get("severity"))))
        assert app.export_yaml(str(blocker / "train.yaml")) is None
        assert app.save_json(str(blocker / "plan.json")) is None
        assert [severity for _, severity in notes] == ["error", "error"]
        assert all(str(blocker) in message for message, _ in notes)
        assert blocker.read_text() == "mine\n" and sorted(p.name for p in tmp_path.iterdir()) == ["not-a-folder"]


def test_what_fits_compares_methods_without_carrying_quantization_over() -> None:
    from planner.plan import Plan
    from planner.target import Machine

    spec = load_spec("7b")

    def state(plan):
        return PlanState("7b", spec, plan, Machine(), estimate(spec, plan, Machine()))

    qlora = fit_cells(state(Plan(method="qlora", quant_bits=4)))
    lora = fit_cells(state(Plan(method="lora")))
    assert qlora == lora  # the same table whichever method the form shows
    assert all(cells[0] != "n/a" for _, cells in qlora)  # full fine-tuning is never "n/a" from a QLoRA form


@pytest.mark.asyncio
async def test_a_second_diagnose_start_during_a_run_is_ignored(monkeypatch) -> None:
    import tui.diagnose_pane

    async with running() as (app, pilot):
        await pilot.press("4")
        await pilot.pause()
        diag = app.query_one("#diagnose-pane")
        started: list = []
        monkeypatch.setattr(tui.diagnose_pane.DiagnosePane, "_run", lambda self, settings: started.append(settings))
        await pilot.press("r")
        await pilot.press("r")  # the first run is still going: its Run button is disabled
        await pilot.pause()
        assert len(started) == 1 and app.query_one("#diag-run").disabled and diag.report is None


@pytest.mark.asyncio
async def test_the_gpus_tab_probes_only_while_shown(monkeypatch) -> None:
    import tui.gpus_pane

    calls: list[int] = []
    real_probe = tui.gpus_pane.probe
    monkeypatch.setattr(tui.gpus_pane, "REFRESH_SECONDS", 0.05)
    monkeypatch.setattr(tui.gpus_pane, "probe", lambda: calls.append(1) or real_probe())
    async with running() as (app, pilot):
        await pilot.pause(0.4)
        hidden = len(calls)
        assert hidden <= 1  # the first reading when the tab mounts, then nothing while on the Plan tab
        await pilot.press("3")
        await pilot.pause(0.4)
        await settle(app, pilot)
        assert len(calls) >= hidden + 3  # refreshed on showing, then every interval
