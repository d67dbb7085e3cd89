"""One pipeline: every front end plans through the same service, with the same machine and the same names.

* the same run gives the same total in `ftplan estimate`, the TUI and `ftplan preflight`, with and
  without a stored CUDA-context calibration, and `--gpu auto` plans over every visible GPU in all three;
* one entry in the field table (plus its field on the model) reaches the CLI flags, the TUI form, the
  exports and every front end's wording of an error;
* the public Python API is pinned.
"""

from __future__ import annotations

import json

import pytest

import diagnostics.nvml as nvml
import planner
from planner.calibration import Calibration, save_calibration
from planner.errors import FtplanError
from tests.diagnostics.fake_nvml import GIB, FakeGpu, FakeNvml
from tests.tui.test_app import running, set_value
from tui.cli import main
from tui.plan_pane import AUTO

# two H100s, one of them partly taken by another process: the tighter one decides
GPUS = [FakeGpu(uuid="GPU-a"), FakeGpu(uuid="GPU-b", used=6 * GIB, processes=[(4242, 6 * GIB)])]
CONFIG = """\
model_name_or_path: 7b
stage: sft
finetuning_type: lora
lora_target: all
lora_rank: 8
cutoff_len: 1024
per_device_train_batch_size: 1
gradient_accumulation_steps: 1
bf16: true
optim: adamw_torch
flash_attn: sdpa
disable_gradient_checkpointing: true
"""


@pytest.fixture
def machine(monkeypatch, tmp_path):
    """This machine, as every front end sees it: two scripted GPUs and a private calibration store."""
    monkeypatch.setattr(nvml, "PynvmlBackend", lambda: FakeNvml(GPUS))
    monkeypatch.setenv("FTPLAN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    return tmp_path


@pytest.mark.asyncio
@pytest.mark.parametrize("calibrated", [False, True], ids=["assumed-context", "calibrated"])
async def test_the_same_run_has_the_same_total_in_every_front_end(machine, capsys, calibrated) -> None:
    from diagnostics.preflight import preflight

    context = 777 * (1 << 20)
    if calibrated:
        save_calibration(Calibration(gpu=GPUS[0].name, cuda_context=context, allocator_reserved=0,
                                     method="process", measured_at="2026-11-30T00:00:00+00:00"))
    assert main(["estimate", "--model", "7b", "--method", "lora", "--gpu", "auto", "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)

    config = machine / "train.yaml"
    config.write_text(CONFIG)
    pre = preflight(config, gpu="auto").estimate

    async with running() as (app, pilot):
        await set_value(app, pilot, "gpu", AUTO)
        tui = app.state.result

    assert cli["plan"]["gpus"] == pre.plan.gpus == tui.plan.gpus == len(GPUS)
    assert cli["memory"]["total"] == pre.memory.total == tui.memory.total
    assert cli["fit"]["capacity"] == pre.fit.capacity == tui.fit.capacity == GPUS[1].total - GPUS[1].used
    expected = context if calibrated else planner.Machine().cuda_context
    assert cli["machine"]["cuda_context"] == pre.machine.cuda_context == tui.machine.cuda_context == expected
    assert (cli["machine"]["cuda_context_source"] == "measured") is calibrated


def test_an_explicit_gpu_count_wins_over_the_visible_count(machine, capsys) -> None:
    main(["estimate", "--model", "7b", "--method", "lora", "--gpu", "auto", "--gpus", "1", "--json"])
    assert json.loads(capsys.readouterr().out)["plan"]["gpus"] == 1


@pytest.fixture
def warp_field(monkeypatch):
    """A made-up setting: one table entry plus its field on the model, and nothing else."""
    from planner import fields
    from planner import plan as plan_module

    class WarpPlan(plan_module.Plan):
        warp_factor: int = 1

    entry = fields.Setting("warp_factor", "plan", "--warp-factor", "warp factor", "how far space is folded",
                           {"llamafactory": "warp", "hf": "warp_factor", "axolotl": "warp_speed"}, widget="int")
    monkeypatch.setattr(plan_module, "Plan", WarpPlan)
    monkeypatch.setattr(fields, "FIELDS", [*fields.FIELDS, entry])
    return WarpPlan


def test_a_made_up_field_reaches_flags_and_messages(warp_field) -> None:
    from planner.configs import config_changes_for, llamafactory_yaml
    from planner.fields import worded
    from tui.cli import build_parser
    from tui.flags import plan_from

    parser = build_parser()
    args = parser.parse_args(["estimate", "--model", "7b", "--warp-factor", "9"])
    plan = plan_from(args)
    assert isinstance(plan, warp_field) and plan.warp_factor == 9
    estimate_help = parser._subparsers._group_actions[0].choices["estimate"].format_help()
    assert "--warp-factor" in estimate_help and "how far space is folded" in estimate_help

    assert "warp: 9" in llamafactory_yaml("7b", plan)
    assert config_changes_for("axolotl", {"warp_factor": 9}) == {"warp_speed": 9}

    with pytest.raises(FtplanError) as info:
        plan.with_(warp_factor="fast")
    assert info.value.field == "warp_factor"
    assert worded(info.value, "cli").startswith("--warp-factor: ")
    assert worded(info.value, "tui").startswith("warp factor: ")
    assert worded(info.value, "llamafactory", where="train.yaml").startswith("train.yaml: key 'warp': ")


@pytest.mark.asyncio
async def test_a_made_up_field_reaches_the_form_and_the_command_line(warp_field) -> None:
    from tui.app import estimate_command

    async with running() as (app, pilot):
        labels = [str(label.render()) for label in app.query(".field-label")]
        assert "warp factor" in labels
        await set_value(app, pilot, "warp_factor", "4")
        assert app.state.plan.warp_factor == 4
        assert "--warp-factor 4" in estimate_command(app.state)


def test_the_public_api_is_pinned() -> None:
    assert sorted(planner.__all__) == sorted([
        "FIELDS", "EnvironmentMissing", "Estimate", "FtplanError", "GpuTarget", "Machine", "ModelSpec", "Plan",
        "estimate", "load_spec", "plan_run", "resolve_target"])
    for name in planner.__all__:
        assert getattr(planner, name) is not None


def test_estimate_from_python_matches_the_cli(capsys) -> None:
    est = planner.estimate("7b", method="lora", gpu="RTX 4090", batch_size=2)
    main(["estimate", "--model", "7b", "--method", "lora", "--gpu", "RTX 4090", "--batch-size", "2", "--json"])
    cli = json.loads(capsys.readouterr().out)
    # the CLI adds the path to fit (planner.path_to_fit) to the Estimate; null when the plan fits
    path = cli.pop("path_to_fit")
    assert cli == json.loads(est.model_dump_json())
    assert est.fit.fits == (path is None)
    with pytest.raises(FtplanError) as info:
        planner.estimate("7b", batch_size=0)
    assert info.value.field == "batch_size"


def test_what_fits_uses_the_same_machine_as_estimate(machine, capsys) -> None:
    """`ftplan fits` applies each GPU's stored calibration, and `--gpu auto` is the measured GPUs."""
    save_calibration(Calibration(gpu=GPUS[0].name, cuda_context=1 << 30, allocator_reserved=0, method="process",
                                 measured_at="2026-11-30T00:00:00+00:00"))
    main(["estimate", "--model", "7b", "--method", "lora", "--gpu", "H100", "--json"])
    estimate_total = json.loads(capsys.readouterr().out)["memory"]["total"]
    main(["fits", "--model", "7b", "--methods", "lora", "--gpu", "H100", "--json"])
    assert json.loads(capsys.readouterr().out)["rows"][0]["cells"][0]["need"] == estimate_total
    assert main(["fits", "--model", "7b", "--methods", "lora", "--gpu", "auto", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["rows"][0]
    assert row["capacity"] == GPUS[1].total - GPUS[1].used  # the tighter of the two visible GPUs


def test_preflight_words_planning_errors_and_keeps_its_memory_fix(tmp_path) -> None:
    from diagnostics.preflight import preflight

    bad = tmp_path / "bad.yaml"
    bad.write_text("model_name_or_path: 7b\nfinetuning_type: lora\nlora_target: foo_proj\n")
    with pytest.raises(FtplanError) as info:
        preflight(bad, gpu="H100")
    assert str(info.value).startswith(f"{bad}: key 'lora_target': ") and "--" not in str(info.value)
    # the context finding shortens to 4096; the memory fix needs shorter still: the shorter one is written
    long = tmp_path / "long.yaml"
    long.write_text(CONFIG.replace("cutoff_len: 1024", "cutoff_len: 8192").replace("lora_rank: 8", "lora_rank: 8\n"
                                                                                  "quantization_bit: 4"))
    report = preflight(long, gpu_memory="6GiB", fix=tmp_path / "fixed.yaml")
    assert report.fix_changes["cutoff_len"] < 4096
    assert preflight(tmp_path / "fixed.yaml", gpu_memory="6GiB").estimate.fit.fits
