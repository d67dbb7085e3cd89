"""Measured GPUs in plans: `ftplan gpus`, `estimate --gpu auto`, and the stored calibration."""

from __future__ import annotations

import json

import pytest

import diagnostics.nvml as nvml
from diagnostics.calibrate import Calibration, calibrate, calibration_for, save_calibration
from diagnostics.gpus import measured_target
from diagnostics.nvml import NvmlFailure, probe
from planner.errors import EnvironmentMissing
from planner.plan import Plan
from planner.service import plan_run as estimate
from planner.spec import load_spec
from tests.diagnostics.fake_nvml import GIB, FakeGpu, FakeNvml
from tui.cli import ExitCode, main

BUSY = FakeGpu(name="NVIDIA GeForce RTX 4090", uuid="GPU-4090", total=24564 * (1 << 20), used=6 * GIB,
               processes=[(999, 6 * GIB)], cc=(8, 9))


@pytest.fixture
def fake_machine(monkeypatch):
    """Make the real code path (`probe()` with its default backend) see scripted GPUs."""
    def install(gpus, **kw):
        monkeypatch.setattr(nvml, "PynvmlBackend", lambda: FakeNvml(gpus, **kw))
    return install


@pytest.fixture(autouse=True)
def private_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("FTPLAN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_measured_target_is_the_free_memory_and_names_who_holds_the_rest() -> None:
    target = measured_target(probe(FakeNvml([BUSY], names={999: "jupyter"}), environ={}))
    assert target.capacity == BUSY.total - 6 * GIB and target.source == "measured"
    assert target.gpu is not None and target.gpu.name == "RTX-4090"  # speed and bf16 come from the catalog
    assert "other processes hold 6.00 GiB" in target.note and "jupyter" in target.note


def test_measured_target_uses_the_tightest_of_several_gpus() -> None:
    roomy = FakeGpu(name="NVIDIA GeForce RTX 4090", uuid="GPU-free", total=BUSY.total)
    target = measured_target(probe(FakeNvml([roomy, BUSY]), environ={}), gpus=2)
    assert target.capacity == BUSY.total - 6 * GIB and "×2" in target.name


def test_asking_for_more_gpus_than_visible_is_environment_missing() -> None:
    with pytest.raises(EnvironmentMissing, match="asks for 4 GPUs but 1"):
        measured_target(probe(FakeNvml([BUSY]), environ={}), gpus=4)


def test_estimate_gpu_auto_against_a_busy_gpu(fake_machine, capsys) -> None:
    fake_machine([BUSY], names={999: "jupyter"})
    code = main(["estimate", "--model", "7b", "--method", "qlora", "--gpu", "auto", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["fit"]["source"] == "measured" and out["fit"]["capacity"] == BUSY.total - 6 * GIB
    assert "jupyter" in out["fit"]["note"]
    expected = estimate(load_spec("7b"), Plan(method="qlora")).memory.total
    assert out["memory"]["total"] == expected
    assert code == (ExitCode.OK if expected <= out["fit"]["capacity"] else ExitCode.CHECK_FAILED)


def test_estimate_gpu_auto_without_gpu_exits_3(fake_machine, capsys) -> None:
    fake_machine([], init_failure=NvmlFailure("driver_not_loaded", "Driver Not Loaded"))
    assert main(["estimate", "--model", "7b", "--gpu", "auto"]) == ExitCode.ENVIRONMENT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "driver is installed but not loaded" in err[0]


def test_gpus_command_table_and_json(fake_machine, capsys) -> None:
    fake_machine([BUSY], names={999: "jupyter"})
    assert main(["gpus"]) == ExitCode.OK
    text = capsys.readouterr().out
    assert "RTX 4090" in text and "pid 999 jupyter" in text
    assert main(["gpus", "--json"]) == ExitCode.OK
    data = json.loads(capsys.readouterr().out)
    assert data["status"] == "ok" and data["gpus"][0]["processes"][0]["pid"] == 999


def test_gpus_command_without_driver_is_one_line_exit_0(fake_machine, capsys) -> None:
    fake_machine([], init_failure=NvmlFailure("library_not_found", "NVML Shared Library Not Found"))
    assert main(["gpus"]) == ExitCode.OK
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("no usable NVIDIA GPU")


def test_calibration_is_stored_and_used_by_estimates(capsys) -> None:
    cal = Calibration(gpu="NVIDIA H100 80GB HBM3", cuda_context=700 * (1 << 20), allocator_reserved=2 << 20,
                      method="process", measured_at="2026-11-27T00:00:00+00:00")
    save_calibration(cal)
    assert calibration_for(catalog_name="H100-80GB") == cal
    assert calibration_for(device_name="NVIDIA H100 80GB HBM3") == cal
    main(["estimate", "--model", "7b", "--method", "lora", "--gpu", "H100", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["memory"]["details"]["cuda_context"] == cal.cuda_context
    assert any("(measured)" in a for a in out["assumptions"])
    main(["estimate", "--model", "7b", "--method", "lora", "--gpu", "4090", "--json"])
    other = json.loads(capsys.readouterr().out)
    assert any("(assumed)" in a for a in other["assumptions"])


def test_a_damaged_calibration_file_is_ignored(tmp_path) -> None:
    from planner.calibration import cache_dir

    cache_dir().mkdir(parents=True, exist_ok=True)
    (cache_dir() / "calibration.json").write_text("{ broken")
    assert calibration_for(device_name="NVIDIA H100 80GB HBM3") is None


def test_calibrate_needs_cuda() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: scripts/gpu_check.sh covers calibration")
    with pytest.raises(EnvironmentMissing, match="CUDA"):
        calibrate()
