"""The NVML probe against scripted GPUs: every failure becomes data, CUDA_VISIBLE_DEVICES as CUDA applies it."""

from __future__ import annotations

import os

from diagnostics.nvml import NvmlFailure, probe
from tests.diagnostics.fake_nvml import GIB, FakeGpu, FakeNvml

H100_A = FakeGpu(uuid="GPU-aaaaaaaa-1111-2222-3333-444444444444")
H100_B = FakeGpu(uuid="GPU-bbbbbbbb-1111-2222-3333-444444444444", used=20 * GIB,
                 processes=[(4242, 20 * GIB)])


def test_no_library_is_a_status_not_a_traceback() -> None:
    result = probe(FakeNvml([], init_failure=NvmlFailure("library_not_found", "NVML Shared Library Not Found")))
    assert result.status == "no_library" and result.gpus == []
    assert "no NVIDIA driver" in result.summary() and "NVML Shared Library Not Found" in result.summary()


def test_driver_not_loaded_and_no_permission() -> None:
    assert probe(FakeNvml([], init_failure=NvmlFailure("driver_not_loaded", "x"))).status == "no_driver"
    assert probe(FakeNvml([], init_failure=NvmlFailure("no_permission", "x"))).status == "no_permission"


def test_driver_with_no_gpu() -> None:
    backend = FakeNvml([])
    result = probe(backend, environ={})
    assert result.status == "no_gpu" and backend.shutdowns == 1


def test_two_gpus_all_fields() -> None:
    backend = FakeNvml([H100_A, H100_B], names={4242: "python train.py"})
    result = probe(backend, environ={})
    assert result.status == "ok" and result.driver_version == "550.54.15" and result.cuda_driver_version == "12.4"
    a, b = result.gpus
    assert (a.index, a.cuda_index, a.memory_free, a.compute_capability) == (0, 0, a.memory_total, "9.0")
    assert b.memory_used == 20 * GIB and b.memory_free == b.memory_total - 20 * GIB
    assert b.processes[0].name == "python train.py" and b.foreign_memory == 20 * GIB
    assert a.power_w == 70.0 and a.power_limit_w == 700.0 and not backend.initialised


def test_cuda_visible_devices_by_index_reorders() -> None:
    result = probe(FakeNvml([H100_A, H100_B]), environ={"CUDA_VISIBLE_DEVICES": "1,0"})
    assert [(g.index, g.cuda_index) for g in result.visible] == [(1, 0), (0, 1)]


def test_cuda_visible_devices_by_uuid_prefix_and_invalid_entry_stops() -> None:
    result = probe(FakeNvml([H100_A, H100_B]), environ={"CUDA_VISIBLE_DEVICES": "GPU-bbbb,7,0"})
    assert [g.index for g in result.visible] == [1]
    assert any("'7' matches no device" in n for n in result.notes)


def test_empty_cuda_visible_devices_hides_everything() -> None:
    result = probe(FakeNvml([H100_A, H100_B]), environ={"CUDA_VISIBLE_DEVICES": ""})
    assert result.status == "ok" and result.visible == []
    assert "hides all 2" in result.summary()


def test_mig_slice_is_its_own_device_and_only_one_per_process() -> None:
    unsupported = {m: NvmlFailure("not_supported", "Not Supported")  # as NVML answers for MIG handles
                   for m in ("utilization", "temperature", "power", "compute_capability")}
    slices = [FakeGpu(name="NVIDIA A100-SXM4-80GB MIG 3g.40gb", uuid=f"MIG-{i}aaaaaaa-0000", total=40 * GIB,
                      fail=unsupported) for i in range(2)]
    parent = FakeGpu(name="NVIDIA A100-SXM4-80GB", uuid="GPU-cccc", total=80 * GIB, cc=(8, 0), mig=slices)
    result = probe(FakeNvml([parent]), environ={})
    whole, first, _second = result.gpus
    assert whole.mig_enabled and whole.cuda_index is None  # a MIG-mode GPU is not usable as a whole
    assert first.mig_index == 0 and first.memory_total == 40 * GIB and first.compute_capability == "8.0"
    assert first.temperature_c is None and first.problems == []
    assert [g.uuid for g in result.visible] == ["MIG-0aaaaaaa-0000"]
    chosen = probe(FakeNvml([parent]), environ={"CUDA_VISIBLE_DEVICES": "MIG-1aaaaaaa"})
    assert [g.mig_index for g in chosen.visible] == [1]


def test_foreign_processes_and_our_own_process() -> None:
    gpu = FakeGpu(used=30 * GIB, processes=[(os.getpid(), 10 * GIB), (111, 15 * GIB), (222, None)])
    info = probe(FakeNvml([gpu]), environ={}).gpus[0]
    assert [p.own for p in info.processes] == [True, False, False]
    assert info.foreign_memory == 15 * GIB  # the unknown-size process cannot be counted


def test_error_mid_query_keeps_the_gpu_and_says_what_failed() -> None:
    flaky = FakeGpu(fail={"processes": NvmlFailure("unknown", "Unknown Error"),
                          "temperature": NvmlFailure("not_supported", "Not Supported")})
    info = probe(FakeNvml([flaky]), environ={}).gpus[0]
    assert info.memory_total and info.temperature_c is None
    assert info.processes_known is False and info.problems == ["processes: Unknown Error"]


def test_gpu_lost_mid_query() -> None:
    lost = FakeGpu(fail={"utilization": NvmlFailure("gpu_lost", "GPU is lost")})
    result = probe(FakeNvml([lost, H100_A]), environ={})
    gone, fine = result.gpus
    assert gone.lost and "GPU lost" in gone.problems[0] and gone.cuda_index is None
    assert fine.cuda_index == 0


def test_heterogeneous_gpus_warn_about_device_order() -> None:
    result = probe(FakeNvml([H100_A, FakeGpu(name="NVIDIA L4", uuid="GPU-dddd")]), environ={})
    assert any("CUDA_DEVICE_ORDER" in n for n in result.notes)
    assert not probe(FakeNvml([H100_A, FakeGpu(name="NVIDIA L4", uuid="GPU-dddd")]),
                     environ={"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}).notes


def test_real_backend_on_this_machine_degrades_cleanly() -> None:
    """No GPU here: the real pynvml path must end in a status, not an exception."""
    result = probe()
    assert result.status in ("ok", "no_library", "no_driver", "no_permission", "no_gpu", "error")
    if result.status != "ok":
        assert result.reason


def test_process_memory_reader_finds_this_process_on_its_gpu() -> None:
    from diagnostics.nvml import ProcessMemoryReader

    ours = FakeGpu(uuid="GPU-ours", processes=[(os.getpid(), 3 * GIB), (77, GIB)])
    backend = FakeNvml([H100_A, ours])
    reader = ProcessMemoryReader("GPU-ours", backend)
    assert reader.read() == 3 * GIB
    ours.processes = [(os.getpid(), 5 * GIB)]
    assert reader.read() == 5 * GIB  # read live every step
    reader.close()
    assert backend.shutdowns == 1 and reader.read() is None


def test_process_memory_reader_degrades_without_nvml() -> None:
    from diagnostics.nvml import ProcessMemoryReader

    failing = FakeNvml([], init_failure=NvmlFailure("library_not_found", "x"))
    assert ProcessMemoryReader("GPU-any", failing).read() is None
    assert ProcessMemoryReader(None).read() is None
