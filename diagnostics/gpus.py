"""What a measured GPU means for a plan: the memory a job really gets, as a planner `GpuTarget`."""

from __future__ import annotations

from diagnostics.nvml import GpuInfo, GpuProbe
from planner.errors import EnvironmentMissing, FtplanError
from planner.hardware import find_gpu
from planner.target import GpuTarget
from planner.units import fmt_gib


def measured_target(result: GpuProbe, gpus: int = 1) -> GpuTarget:
    """The tightest of the first `gpus` visible GPUs, by measured free memory.

    Memory other processes hold is already gone from `memory_free`; the note says
    who holds it, so the user knows why a 80 GB card offers less.
    """
    if result.status != "ok" or not result.visible:
        raise EnvironmentMissing(f"--gpu auto: {result.summary()}; name a GPU (--gpu H100) or give --gpu-memory")
    usable = [g for g in result.visible if not g.lost and g.memory_free is not None]
    if len(usable) < gpus:
        raise EnvironmentMissing(
            f"--gpu auto: the plan asks for {gpus} GPUs but {len(usable)} usable GPU(s) are visible "
            f"({result.summary()})")
    chosen = usable[:gpus]
    tightest = min(chosen, key=lambda g: g.memory_free)
    try:
        catalog = find_gpu(tightest.name)
    except FtplanError:
        catalog = None
    label = tightest.name + (f" ×{gpus}" if gpus > 1 else "") + f" (CUDA device {tightest.cuda_index})"
    return GpuTarget(name=label, capacity=tightest.memory_free, source="measured", gpu=catalog,
                     device_name=tightest.name, note=_occupancy_note(chosen))


def _occupancy_note(gpus: list[GpuInfo]) -> str | None:
    parts = []
    for g in gpus:
        foreign = [p for p in g.processes if not p.own]
        held = g.foreign_memory
        if held:
            who = ", ".join(f"{p.pid} {p.name or ''}".strip() for p in foreign[:3])
            parts.append(f"other processes hold {fmt_gib(held)} on CUDA device {g.cuda_index} ({who}); "
                         f"the job gets the {fmt_gib(g.memory_free)} left")
        elif g.memory_used and g.memory_total and g.memory_used > 0.02 * g.memory_total:
            parts.append(f"{fmt_gib(g.memory_used)} is already in use on CUDA device {g.cuda_index}"
                         + ("" if g.processes_known else " (NVML cannot list the processes here)"))
    return "; ".join(parts) or None
