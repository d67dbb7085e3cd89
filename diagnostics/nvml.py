"""The one module that talks to NVML (nvidia-ml-py, imported as `pynvml`).

Everything NVML can say goes through a small `NvmlBackend` interface, so tests run
against a scripted fake (tests/diagnostics/fake_nvml.py) and nothing here assumes a
GPU exists. Every NVML failure becomes data: a probe-level `status` and `reason`
(no library, no driver, no permission, no GPU) or a per-GPU `problems` entry (a
field that failed mid-query, a GPU that fell off the bus); unsupported fields are
simply `None`. Callers never see a traceback.

`CUDA_VISIBLE_DEVICES` is applied the way CUDA applies it (indices or UUID prefixes,
stopping at the first invalid entry, one MIG device per process), so `visible` lists
the GPUs a job launched from this environment will actually get, in its order.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping
from typing import Any, Literal, Protocol

from pydantic import BaseModel

FailureKind = Literal["library_not_found", "driver_not_loaded", "no_permission", "gpu_lost", "not_supported",
                      "not_found", "unknown"]


class NvmlFailure(Exception):
    """An NVML call that failed, reduced to a kind ftplan acts on and NVML's own words."""

    def __init__(self, kind: FailureKind, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


class NvmlBackend(Protocol):
    """The NVML calls ftplan makes. Every method raises `NvmlFailure` and nothing else."""

    def init(self) -> None: ...
    def shutdown(self) -> None: ...
    def driver_version(self) -> str: ...
    def cuda_driver_version(self) -> int: ...
    def device_count(self) -> int: ...
    def handle(self, index: int) -> Any: ...
    def name(self, handle: Any) -> str: ...
    def uuid(self, handle: Any) -> str: ...
    def memory(self, handle: Any) -> tuple[int, int, int]: ...  # total, free, used (bytes)
    def utilization(self, handle: Any) -> tuple[int, int]: ...  # gpu %, memory %
    def temperature(self, handle: Any) -> int: ...
    def power(self, handle: Any) -> tuple[int, int]: ...  # usage, limit (milliwatts)
    def compute_capability(self, handle: Any) -> tuple[int, int]: ...
    def mig_enabled(self, handle: Any) -> bool: ...
    def mig_devices(self, handle: Any) -> list[Any]: ...
    def processes(self, handle: Any) -> list[tuple[int, int | None]]: ...  # pid, used bytes
    def process_name(self, pid: int) -> str: ...


class GpuProcess(BaseModel):
    pid: int
    name: str | None = None
    used_memory: int | None = None  # None where NVML cannot tell (containers, permissions)
    own: bool = False  # this very process


class GpuInfo(BaseModel):
    index: int  # NVML / nvidia-smi index of the physical GPU
    mig_index: int | None = None  # set for a MIG instance of GPU `index`
    cuda_index: int | None = None  # the device number a job sees (None: not visible)
    name: str
    uuid: str | None = None
    memory_total: int | None = None
    memory_free: int | None = None
    memory_used: int | None = None
    utilization_gpu: int | None = None
    utilization_memory: int | None = None
    temperature_c: int | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    compute_capability: str | None = None
    mig_enabled: bool | None = None
    processes: list[GpuProcess] = []
    processes_known: bool = True
    problems: list[str] = []

    @property
    def label(self) -> str:
        return f"GPU {self.index}" + (f" MIG {self.mig_index}" if self.mig_index is not None else "")

    @property
    def lost(self) -> bool:
        return self.memory_total is None

    @property
    def foreign_memory(self) -> int:
        """Memory held by other processes (those NVML can account for)."""
        return sum(p.used_memory or 0 for p in self.processes if not p.own)


ProbeStatus = Literal["ok", "no_library", "no_driver", "no_permission", "no_gpu", "error"]


class GpuProbe(BaseModel):
    status: ProbeStatus
    reason: str | None = None
    driver_version: str | None = None
    cuda_driver_version: str | None = None
    cuda_visible_devices: str | None = None
    gpus: list[GpuInfo] = []  # every device NVML reports (physical GPUs and MIG instances)
    notes: list[str] = []

    @property
    def visible(self) -> list[GpuInfo]:
        return sorted((g for g in self.gpus if g.cuda_index is not None), key=lambda g: g.cuda_index)

    def summary(self) -> str:
        """One line for humans, e.g. when there is no GPU to plan against."""
        if self.status != "ok":
            return f"no usable NVIDIA GPU: {self.reason}"
        if not self.visible:
            return (f"no GPU is visible to CUDA: CUDA_VISIBLE_DEVICES={self.cuda_visible_devices!r} hides all "
                    f"{len(self.gpus)} device(s)")
        return f"{len(self.visible)} GPU(s) visible: " + ", ".join(f"{g.cuda_index}: {g.name}" for g in self.visible)


# ------------------------------------------------------------------ the real backend

_KINDS = {
    "NVMLError_LibraryNotFound": "library_not_found", "NVMLError_DriverNotLoaded": "driver_not_loaded",
    "NVMLError_NoPermission": "no_permission", "NVMLError_GpuIsLost": "gpu_lost",
    "NVMLError_NotSupported": "not_supported", "NVMLError_NotFound": "not_found",
    "NVMLError_FunctionNotFound": "not_supported",
}
_NOT_AVAILABLE = (1 << 64) - 1  # NVML_VALUE_NOT_AVAILABLE for usedGpuMemory


class PynvmlBackend:
    """nvidia-ml-py, with every NVMLError translated into an `NvmlFailure`."""

    def __init__(self) -> None:
        try:
            import pynvml
        except ImportError as exc:  # nvidia-ml-py is a core dependency, but be kind to broken envs
            raise NvmlFailure("library_not_found", f"nvidia-ml-py is not installed ({exc})") from None
        self._nvml = pynvml

    def _call(self, fn: Callable, *args):
        try:
            return fn(*args)
        except self._nvml.NVMLError as exc:
            raise NvmlFailure(_KINDS.get(type(exc).__name__, "unknown"), str(exc)) from None

    def init(self) -> None:
        self._call(self._nvml.nvmlInit)

    def shutdown(self) -> None:
        self._call(self._nvml.nvmlShutdown)

    def driver_version(self) -> str:
        value = self._call(self._nvml.nvmlSystemGetDriverVersion)
        return value.decode() if isinstance(value, bytes) else str(value)

    def cuda_driver_version(self) -> int:
        return int(self._call(self._nvml.nvmlSystemGetCudaDriverVersion))

    def device_count(self) -> int:
        return int(self._call(self._nvml.nvmlDeviceGetCount))

    def handle(self, index: int):
        return self._call(self._nvml.nvmlDeviceGetHandleByIndex, index)

    def name(self, handle) -> str:
        value = self._call(self._nvml.nvmlDeviceGetName, handle)
        return value.decode() if isinstance(value, bytes) else str(value)

    def uuid(self, handle) -> str:
        value = self._call(self._nvml.nvmlDeviceGetUUID, handle)
        return value.decode() if isinstance(value, bytes) else str(value)

    def memory(self, handle) -> tuple[int, int, int]:
        info = self._call(self._nvml.nvmlDeviceGetMemoryInfo, handle)
        return int(info.total), int(info.free), int(info.used)

    def utilization(self, handle) -> tuple[int, int]:
        rates = self._call(self._nvml.nvmlDeviceGetUtilizationRates, handle)
        return int(rates.gpu), int(rates.memory)

    def temperature(self, handle) -> int:
        return int(self._call(self._nvml.nvmlDeviceGetTemperature, handle, self._nvml.NVML_TEMPERATURE_GPU))

    def power(self, handle) -> tuple[int, int]:
        usage = self._call(self._nvml.nvmlDeviceGetPowerUsage, handle)
        limit = self._call(self._nvml.nvmlDeviceGetEnforcedPowerLimit, handle)
        return int(usage), int(limit)

    def compute_capability(self, handle) -> tuple[int, int]:
        major, minor = self._call(self._nvml.nvmlDeviceGetCudaComputeCapability, handle)
        return int(major), int(minor)

    def mig_enabled(self, handle) -> bool:
        current, _pending = self._call(self._nvml.nvmlDeviceGetMigMode, handle)
        return bool(current == self._nvml.NVML_DEVICE_MIG_ENABLE)

    def mig_devices(self, handle) -> list:
        out = []
        for i in range(int(self._call(self._nvml.nvmlDeviceGetMaxMigDeviceCount, handle))):
            try:
                out.append(self._call(self._nvml.nvmlDeviceGetMigDeviceHandleByIndex, handle, i))
            except NvmlFailure as failure:
                if failure.kind != "not_found":  # unused slots answer NOT_FOUND
                    raise
        return out

    def processes(self, handle) -> list[tuple[int, int | None]]:
        procs = self._call(self._nvml.nvmlDeviceGetComputeRunningProcesses, handle)
        out = []
        for p in procs:
            used = getattr(p, "usedGpuMemory", None)
            out.append((int(p.pid), None if used is None or used >= _NOT_AVAILABLE else int(used)))
        return out

    def process_name(self, pid: int) -> str:
        value = self._call(self._nvml.nvmlSystemGetProcessName, pid)
        return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


# ------------------------------------------------------------------ probing

_STATUS = {"library_not_found": "no_library", "driver_not_loaded": "no_driver", "no_permission": "no_permission"}
_REASONS = {
    "library_not_found": "the NVIDIA driver library (libnvidia-ml) was not found; no NVIDIA driver is installed here",
    "driver_not_loaded": "the NVIDIA driver is installed but not loaded",
    "no_permission": "NVML refused access (no permission on /dev/nvidia*)",
}


def probe(backend: NvmlBackend | None = None, environ: Mapping[str, str] | None = None) -> GpuProbe:
    """Read every GPU once. Never raises: failures are in the result."""
    env = os.environ if environ is None else environ
    cvd = env.get("CUDA_VISIBLE_DEVICES")
    try:
        backend = backend or PynvmlBackend()
        backend.init()
    except NvmlFailure as failure:
        status = _STATUS.get(failure.kind, "error")
        reason = _REASONS.get(failure.kind, "NVML failed to start")
        return GpuProbe(status=status, reason=f"{reason} ({failure.message})", cuda_visible_devices=cvd)
    try:
        return _probe_initialised(backend, cvd, env)
    finally:
        with contextlib.suppress(NvmlFailure):
            backend.shutdown()


def _probe_initialised(backend: NvmlBackend, cvd: str | None, env: Mapping[str, str]) -> GpuProbe:
    driver = _quiet(backend.driver_version)
    cuda = _quiet(backend.cuda_driver_version)
    cuda_text = f"{cuda // 1000}.{cuda % 1000 // 10}" if isinstance(cuda, int) else None
    try:
        count = backend.device_count()
    except NvmlFailure as failure:
        return GpuProbe(status="error", reason=f"NVML could not count the GPUs ({failure.message})",
                        driver_version=driver, cuda_driver_version=cuda_text, cuda_visible_devices=cvd)
    if count == 0:
        return GpuProbe(status="no_gpu", reason="the NVIDIA driver is loaded but reports no GPU",
                        driver_version=driver, cuda_driver_version=cuda_text, cuda_visible_devices=cvd)
    gpus: list[GpuInfo] = []
    for index in range(count):
        gpus += _read_gpu(backend, index)
    notes = []
    names = {g.name for g in gpus if g.mig_index is None}
    if len(names) > 1 and env.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID":
        notes.append("GPUs of different models: CUDA numbers them fastest-first unless "
                     "CUDA_DEVICE_ORDER=PCI_BUS_ID; the numbering below assumes PCI bus order (nvidia-smi's)")
    notes += _assign_cuda_indices(gpus, cvd)
    return GpuProbe(status="ok", driver_version=driver, cuda_driver_version=cuda_text, cuda_visible_devices=cvd,
                    gpus=gpus, notes=notes)


def _quiet(fn: Callable, *args):
    try:
        return fn(*args)
    except NvmlFailure:
        return None


def _read_gpu(backend: NvmlBackend, index: int) -> list[GpuInfo]:
    try:
        handle = backend.handle(index)
    except NvmlFailure as failure:
        return [GpuInfo(index=index, name="unknown", problems=[f"cannot open GPU {index}: {failure.message}"])]
    info = _read_device(backend, handle, GpuInfo(index=index, name="unknown"))
    if not info.mig_enabled or info.lost:
        return [info]
    out = [info]
    try:
        children = backend.mig_devices(handle)
    except NvmlFailure as failure:
        info.problems.append(f"MIG instances: {failure.message}")
        return out
    for i, child in enumerate(children):
        mig = _read_device(backend, child, GpuInfo(index=index, mig_index=i, name=info.name))
        mig.compute_capability = mig.compute_capability or info.compute_capability
        out.append(mig)
    return out


def _read_device(backend: NvmlBackend, handle, info: GpuInfo) -> GpuInfo:
    """Fill `info` field by field; a failing field is recorded, a lost GPU stops the read."""

    def field(label: str, fn: Callable):
        try:
            return fn(handle)
        except NvmlFailure as failure:
            if failure.kind == "gpu_lost":
                raise
            if failure.kind != "not_supported":
                info.problems.append(f"{label}: {failure.message}")
            return None

    try:
        info.name = field("name", backend.name) or info.name
        info.uuid = field("uuid", backend.uuid)
        memory = field("memory", backend.memory)
        if memory:
            info.memory_total, info.memory_free, info.memory_used = memory
        util = field("utilization", backend.utilization)
        if util:
            info.utilization_gpu, info.utilization_memory = util
        info.temperature_c = field("temperature", backend.temperature)
        power = field("power", backend.power)
        if power:
            info.power_w, info.power_limit_w = power[0] / 1000, power[1] / 1000
        cc = field("compute capability", backend.compute_capability)
        if cc:
            info.compute_capability = f"{cc[0]}.{cc[1]}"
        if info.mig_index is None:
            info.mig_enabled = field("MIG mode", backend.mig_enabled)
        procs = field("processes", backend.processes)
        if procs is None:
            info.processes_known = False
        else:
            own = os.getpid()
            info.processes = [GpuProcess(pid=pid, used_memory=used, own=pid == own,
                                         name=_quiet(backend.process_name, pid)) for pid, used in procs]
    except NvmlFailure as failure:  # the GPU is gone: keep what identifies it, drop its numbers
        info.memory_total = info.memory_free = info.memory_used = None
        info.problems.append(f"GPU lost during the query ({failure.message}); it may need a reset")
    return info


def _assign_cuda_indices(gpus: list[GpuInfo], cvd: str | None) -> list[str]:
    """Number the devices as CUDA will, honouring CUDA_VISIBLE_DEVICES. Returns notes."""
    # CUDA enumerates whole GPUs that are not in MIG mode, and MIG instances of the others
    enumerable = [g for g in gpus if (g.mig_index is None and not g.mig_enabled) or g.mig_index is not None]
    enumerable = [g for g in enumerable if not g.lost]
    notes: list[str] = []
    if cvd is None:
        chosen = enumerable
    else:
        chosen = []
        for entry in (e.strip() for e in cvd.split(",")):
            match = _match_entry(entry, enumerable)
            if match is None:
                if entry:
                    notes.append(f"CUDA_VISIBLE_DEVICES entry {entry!r} matches no device; CUDA ignores it "
                                 "and every entry after it")
                break
            if match not in chosen:
                chosen.append(match)
    migs = [g for g in chosen if g.mig_index is not None]
    if len(migs) > 1:
        notes.append("CUDA gives a process only one MIG device; the others listed are not visible to one job")
        chosen = [g for g in chosen if g.mig_index is None or g is migs[0]]
    for i, g in enumerate(chosen):
        g.cuda_index = i
    return notes


def _match_entry(entry: str, devices: list[GpuInfo]) -> GpuInfo | None:
    if entry.isdigit() or (entry.startswith("-") and entry[1:].isdigit()):
        i = int(entry)
        return devices[i] if 0 <= i < len(devices) else None
    if entry.upper().startswith(("GPU-", "MIG-")):
        found = [g for g in devices if g.uuid and g.uuid.lower().startswith(entry.lower())]
        return found[0] if len(found) == 1 else None
    return None


class ProcessMemoryReader:
    """This process's memory on one GPU, read each training step without re-initialising NVML.

    `read()` returns None where NVML cannot tell (no driver, containers that hide PIDs).
    """

    def __init__(self, uuid: str | None, backend: NvmlBackend | None = None):
        self._backend = None
        self._handle = None
        if uuid is None:
            return
        try:
            backend = backend or PynvmlBackend()
            backend.init()
            for index in range(backend.device_count()):
                handle = backend.handle(index)
                if backend.uuid(handle) == uuid:
                    self._backend, self._handle = backend, handle
                    return
                if backend.mig_enabled(handle):
                    for child in backend.mig_devices(handle):
                        if backend.uuid(child) == uuid:
                            self._backend, self._handle = backend, child
                            return
            backend.shutdown()
        except NvmlFailure:
            self._backend = None

    def read(self) -> int | None:
        if self._backend is None:
            return None
        try:
            own = os.getpid()
            return next((used for pid, used in self._backend.processes(self._handle) if pid == own), None)
        except NvmlFailure:
            return None

    def close(self) -> None:
        if self._backend is not None:
            with contextlib.suppress(NvmlFailure):
                self._backend.shutdown()
            self._backend = None


def cuda_uuid(cuda_index: int, result: GpuProbe | None = None) -> str | None:
    """The UUID of the device a job calls `cuda:<cuda_index>`."""
    result = result or probe()
    return next((g.uuid for g in result.visible if g.cuda_index == cuda_index), None)
