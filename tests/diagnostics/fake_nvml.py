"""A scripted NVML for tests: GPUs, MIG instances, processes and failures on demand.

It implements `diagnostics.nvml.NvmlBackend`, the same narrow seam the real
pynvml backend implements, so the probe code under test is the production code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from diagnostics.nvml import NvmlFailure

GIB = 1 << 30


@dataclass
class FakeGpu:
    name: str = "NVIDIA H100 80GB HBM3"
    uuid: str = "GPU-00000000-0000-0000-0000-000000000000"
    total: int = 81559 * (1 << 20)
    used: int = 0
    utilization: tuple[int, int] = (0, 0)
    temperature: int = 35
    power_mw: tuple[int, int] = (70_000, 700_000)
    cc: tuple[int, int] = (9, 0)
    mig: list[FakeGpu] | None = None  # MIG instances when MIG mode is on
    processes: list[tuple[int, int | None]] = field(default_factory=list)
    fail: dict[str, NvmlFailure] = field(default_factory=dict)  # method name -> failure to raise


class FakeNvml:
    """`FakeNvml([FakeGpu(...), ...])`; `init_failure` makes nvmlInit itself fail."""

    def __init__(self, gpus: list[FakeGpu], *, init_failure: NvmlFailure | None = None,
                 driver: str = "550.54.15", cuda: int = 12040, names: dict[int, str] | None = None):
        self.gpus = gpus
        self.init_failure = init_failure
        self.driver = driver
        self.cuda = cuda
        self.names = names or {}
        self.initialised = False
        self.shutdowns = 0

    def _gpu(self, handle: FakeGpu, method: str) -> FakeGpu:
        if method in handle.fail:
            raise handle.fail[method]
        return handle

    def init(self) -> None:
        if self.init_failure:
            raise self.init_failure
        self.initialised = True

    def shutdown(self) -> None:
        self.shutdowns += 1
        self.initialised = False

    def driver_version(self) -> str:
        return self.driver

    def cuda_driver_version(self) -> int:
        return self.cuda

    def device_count(self) -> int:
        return len(self.gpus)

    def handle(self, index: int) -> FakeGpu:
        return self.gpus[index]

    def name(self, h: FakeGpu) -> str:
        return self._gpu(h, "name").name

    def uuid(self, h: FakeGpu) -> str:
        return self._gpu(h, "uuid").uuid

    def memory(self, h: FakeGpu) -> tuple[int, int, int]:
        g = self._gpu(h, "memory")
        return g.total, g.total - g.used, g.used

    def utilization(self, h: FakeGpu) -> tuple[int, int]:
        return self._gpu(h, "utilization").utilization

    def temperature(self, h: FakeGpu) -> int:
        return self._gpu(h, "temperature").temperature

    def power(self, h: FakeGpu) -> tuple[int, int]:
        return self._gpu(h, "power").power_mw

    def compute_capability(self, h: FakeGpu) -> tuple[int, int]:
        return self._gpu(h, "compute_capability").cc

    def mig_enabled(self, h: FakeGpu) -> bool:
        return self._gpu(h, "mig_enabled").mig is not None

    def mig_devices(self, h: FakeGpu) -> list[FakeGpu]:
        return list(self._gpu(h, "mig_devices").mig or [])

    def processes(self, h: FakeGpu) -> list[tuple[int, int | None]]:
        return list(self._gpu(h, "processes").processes)

    def process_name(self, pid: int) -> str:
        if pid not in self.names:
            raise NvmlFailure("not_found", "Not Found")
        return self.names[pid]
