"""Pilot tests of the Textual app: the screen shows the planner's numbers and reacts to every field."""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path

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
        options.highlighted = options.get_option_index("0")  # the path to fit, when there is one, comes first
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

    monkeypatch.setattr("tui.diagnose_run.CPU_LIMIT_S", float("inf"))  # 7b on a CPU is refused otherwise

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


# ------------------------------------------------------------ keys (issue 14)

def active_tab(app) -> str:
    return app.query_one("#tabs").active.removeprefix("tab-")


@pytest.mark.asyncio
async def test_digits_and_r_from_a_focused_dropdown_switch_for_good(monkeypatch) -> None:
    import tui.diagnose_pane

    monkeypatch.setattr("tui.diagnose_run.CPU_LIMIT_S", float("inf"))  # 7b on a CPU is refused otherwise

    started: list = []
    monkeypatch.setattr(tui.diagnose_pane.DiagnosePane, "_run", lambda self, settings: started.append(settings))
    async with running() as (app, pilot):
        app.query_one("#method").focus()
        await pilot.pause()
        await pilot.press("2")
        await pilot.pause(0.3)
        await settle(app, pilot)
        assert active_tab(app) == "fits" and app.focused is app.query_one("#fits-table")  # no bounce back
        await pilot.press("1")
        await settle(app, pilot)
        app.query_one("#zero").focus()
        await pilot.pause()
        await pilot.press("r")
        await pilot.pause(0.3)
        await settle(app, pilot)
        # the run starts in view, not behind the Plan tab
        assert active_tab(app) == "diagnose" and len(started) == 1
        assert app.query_one("#diagnose-pane") in app.focused.ancestors


@pytest.mark.asyncio
async def test_an_open_dropdown_takes_typed_keys() -> None:
    async with running() as (app, pilot):
        quits: list = []
        app.exit = lambda *a, **k: quits.append(1)
        app.query_one("#zero").focus()
        await pilot.pause()
        await pilot.press("enter")  # opens the list
        await pilot.press("3", "q")  # type-to-search in the list: no tab switch, no quit
        await pilot.press("enter")
        await settle(app, pilot)
        assert active_tab(app) == "plan" and not quits and app.state.plan.zero == 3


@pytest.mark.asyncio
async def test_a_text_field_types_q_and_esc_leaves_it() -> None:
    async with running() as (app, pilot):
        quits: list = []
        app.exit = lambda *a, **k: quits.append(1)
        targets = app.query_one("#lora_target")
        targets.focus()
        await pilot.pause()
        targets.value = ""
        await pilot.press("q", "2", "r")
        assert targets.value == "q2r" and not quits and active_tab(app) == "plan"
        keys = set(app.active_bindings)
        assert "ctrl+q" in keys and "escape" in keys and not {"q", "r", "2"} & keys  # the footer tells the truth
        await pilot.press("escape")
        assert app.focused is app.query_one("#results")
        assert {"q", "r", "2", "ctrl+q"} <= set(app.active_bindings)
        await pilot.press("q")
        assert quits == [1]


@pytest.mark.asyncio
async def test_slash_and_m_jump_to_the_model_field_from_any_tab() -> None:
    async with running() as (app, pilot):
        # m from any tab; / from any tab but What fits, where it searches the table (k9s's filter)
        for tab, key in (("2", "m"), ("3", "slash"), ("4", "m")):
            await pilot.press(tab)
            await settle(app, pilot)
            await pilot.press(key)
            await pilot.pause()
            assert active_tab(app) == "plan" and app.focused is app.query_one("#model")
            await pilot.press("escape")


@pytest.mark.asyncio
async def test_every_tab_stop_does_something() -> None:
    from textual.containers import HorizontalScroll, VerticalScroll
    from textual.widgets import DataTable

    async with running() as (app, pilot):
        for tab in ("1", "2", "4"):
            await pilot.press(tab)
            await settle(app, pilot)
            for widget in app.screen.focus_chain:
                # a table without a cursor, or a scroll area other than the results Esc returns to, is a dead stop
                assert not (isinstance(widget, DataTable) and widget.cursor_type == "none"), widget
                assert not isinstance(widget, (VerticalScroll, HorizontalScroll)) or widget.id == "results", widget


@pytest.mark.asyncio
async def test_help_opens_on_the_shown_tab() -> None:
    async with running(size=(100, 40)) as (app, pilot):
        await pilot.press("2")
        await settle(app, pilot)
        await pilot.press("question_mark")
        await settle(app, pilot)
        source = app.screen.query_one("Markdown").source
        assert source.index("## What fits") < source.index("## Keys") < source.index("## Plan")
        await pilot.press("question_mark")  # closes it, the app's own ? stands aside on a modal screen
        await pilot.press("1", "question_mark")
        await settle(app, pilot)
        source = app.screen.query_one("Markdown").source
        assert source.index("## Plan") < source.index("## Keys") < source.index("## What fits")


@pytest.mark.asyncio
async def test_j_and_k_move_in_the_what_fits_table() -> None:
    async with running() as (app, pilot):
        await pilot.press("2")
        await settle(app, pilot)
        table = app.query_one("#fits-table")
        await pilot.press("j", "j", "k")
        assert table.cursor_row == 1


@pytest.mark.asyncio
async def test_the_command_palette_lists_ftplan_commands_when_opened() -> None:
    from textual.command import CommandList

    async with running() as (app, pilot):
        await pilot.press("ctrl+p")
        await pilot.pause(0.5)
        await settle(app, pilot)
        commands = app.screen.query_one(CommandList)
        prompts = [str(commands.get_option_at_index(i).prompt) for i in range(commands.option_count)]
        assert any("LLaMA-Factory YAML" in p for p in prompts) and any("ftplan estimate" in p for p in prompts)


@pytest.mark.asyncio
async def test_the_first_enter_on_the_suggestions_applies_one() -> None:
    async with running() as (app, pilot):
        await set_value(app, pilot, "method", "full")
        options = app.query_one("#suggestions")
        head = options.get_option_at_index(0).id  # the path to fit heads the list unless it is a single change
        first = pane(app).path.change if head == "path" else app.state.result.suggestions[int(head)]
        options.focus()  # focused as Tab would, nothing highlighted by hand
        await pilot.pause()
        await pilot.press("enter")
        await settle(app, pilot)
        assert all(getattr(app.state.plan, k) == v for k, v in first.changes.items())


# ------------------------------------------------------------ what the planner computed, on screen

@pytest.mark.asyncio
async def test_warnings_time_and_suggestion_flags_are_shown() -> None:
    import shlex

    from tui.cli import build_parser
    from tui.flags import plan_from

    async with running() as (app, pilot):
        context = load_spec("7b").max_position_embeddings
        await set_value(app, pilot, "seq_len", str(context * 2))
        assert "⚠ 1 warning" in str(app.query_one("#summary").render())
        assert f"{context:,}" in str(app.query_one("#warnings").render())

        await set_value(app, pilot, "seq_len", "1024")
        await set_value(app, pilot, "time-samples", "1000")
        assert "1,000 steps" in str(app.query_one("#time").render())  # micro-batch 1, no accumulation, 1 GPU
        await set_value(app, pilot, "time-epochs", "2")
        await set_value(app, pilot, "grad_accum", "4")
        assert "500 steps" in str(app.query_one("#time").render())  # 1000 x 2 / (1 x 4)

        await set_value(app, pilot, "method", "full")
        options = app.query_one("#suggestions")
        for i, change in enumerate(app.state.result.suggestions):
            prompt = str(options.get_option(str(i)).prompt)
            assert change.reason in prompt
            flags = prompt.rsplit("flags: ", 1)[1]
            # the flags shown set what the suggestion changes, as the command line reads them
            parsed = plan_from(build_parser().parse_args(["estimate", "--model", "7b", *shlex.split(flags)]))
            assert all(getattr(parsed, k) == v for k, v in change.changes.items()), flags


@pytest.mark.asyncio
async def test_absurd_sizes_are_shown_in_larger_units() -> None:
    import re

    async with running() as (app, pilot):
        await set_value(app, pilot, "batch_size", str(10**14))
        text = str(app.query_one("#summary").render()) + str(app.query_one("#bar").render())
        sizes = re.findall(r"([\d.,]+) ([GTPEZY]iB)", text)
        assert sizes and all(float(n.replace(",", "")) < 1024 for n, _ in sizes), sizes


@pytest.mark.asyncio
async def test_gpu_memory_takes_the_placeholders_form_and_gpus_reach_the_plan() -> None:
    async with running() as (app, pilot):
        memory = app.query_one("#gpu_memory")
        memory.focus()
        await pilot.pause()
        await pilot.press(*"24GiB")
        await settle(app, pilot)
        assert app.state.target.capacity == 24 * 2**30 and str(app.query_one("#form-error").render()) == ""
        await set_value(app, pilot, "gpus", "4")
        assert app.state.result.plan.gpus == 4 and "× 4 GPUs" in str(app.query_one("#summary").render())


@pytest.mark.asyncio
async def test_a_json_model_file_is_named_after_the_file(tmp_path) -> None:
    import shutil

    from planner.spec import preset_index

    models = Path(__file__).resolve().parents[2] / "profiles" / "models"
    shutil.copy(models / preset_index().presets["tiny-llama"].file, tmp_path / "my-model.json")
    async with running() as (app, pilot):
        await set_value(app, pilot, "model", str(tmp_path / "my-model.json"))
        # the name is the file's (the planner capitalises it), never its folder's
        summary = str(app.query_one("#summary").render())
        assert summary.lower().startswith("my-model ·") and tmp_path.name not in summary


# ------------------------------------------------------------ what fits

@pytest.mark.asyncio
async def test_what_fits_names_its_setup_and_enter_applies_a_cell() -> None:
    from planner.plan import METHODS

    async with running() as (app, pilot):
        await set_value(app, pilot, "gpus", "4")
        await set_value(app, pilot, "zero", 3)
        await pilot.press("2")
        await settle(app, pilot)
        title = str(app.query_one("#fits-title").render())
        assert "4 GPUs" in title and "ZeRO-3" in title
        table = app.query_one("#fits-table")
        pane = app.query_one("#fits-pane")
        row = next(i for i, r in enumerate(pane.rows) if r.gpu == "H100-80GB")
        column = METHODS.index("qlora") + 1
        table.cursor_coordinate = (row, column)
        cell = table.get_cell_at((row, column))
        assert cell.style == ("green" if str(cell).startswith("✓") else "red")
        await pilot.press("enter")
        await settle(app, pilot)
        assert active_tab(app) == "plan" and app.state.target.name == "H100-80GB" and app.state.plan.method == "qlora"
