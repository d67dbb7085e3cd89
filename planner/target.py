"""Where a plan runs: the machine facts that are not training settings, and the GPU it must fit.

`Machine` holds what the memory total needs beyond the plan (the CUDA context, the
allocator's fragmentation, the device). `GpuTarget` adds the memory a job can use per GPU
and where that number came from. `resolve_target` is the one way every front end turns
what the user said (a catalog name, a memory size, or `auto`) into a target: `auto`
measures this machine's visible GPUs through NVML and plans over all of them unless told
otherwise, and a stored CUDA-context calibration (`ftplan gpus --calibrate`) replaces the
assumed context wherever it matches the GPU.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from planner.errors import FtplanError, validation_error
from planner.hardware import GpuSpec, find_gpu
from planner.units import GIB, parse_bytes

# Assumed when nothing is measured: PyTorch's CUDA context with lazy module loading
# is 0.3-0.6 GiB on recent GPUs (cuBLAS/cuDNN handles included), and the caching
# allocator reserves some memory beyond what is allocated (fragmentation).
DEFAULT_CUDA_CONTEXT = GIB // 2
DEFAULT_FRAGMENTATION = 0.08


class Machine(BaseModel):
    """Facts about the machine that change the total but not the training run."""

    model_config = ConfigDict(frozen=True)

    cuda_context: int = DEFAULT_CUDA_CONTEXT
    cuda_context_source: Literal["assumed", "given", "measured"] = "assumed"
    fragmentation: float = DEFAULT_FRAGMENTATION
    device: Literal["cuda", "cpu"] = "cuda"

    @model_validator(mode="after")
    def _check(self) -> Machine:
        if not 0.0 <= self.fragmentation < 1.0:
            raise FtplanError(f"must be in [0, 1), got {self.fragmentation}", field="fragmentation")
        if self.cuda_context < 0:
            raise FtplanError("must not be negative", field="cuda_context")
        if self.cuda_context > 16 * GIB:  # a bare number is GiB: "600" meant MiB
            raise FtplanError(f"{self.cuda_context / GIB:g} GiB is not a CUDA context (0.3-2 GiB); give a unit, "
                              "e.g. 600MiB", field="cuda_context")
        return self

    @property
    def given_context(self) -> int | None:
        """The CUDA context the user set, if they did (to carry over to other GPUs)."""
        return self.cuda_context if self.cuda_context_source == "given" else None

    @property
    def context_bytes(self) -> int:
        """The CUDA context counts only on a GPU."""
        return self.cuda_context if self.device == "cuda" else 0

    @property
    def capacity_bytes(self) -> int | None:
        """Memory per GPU, where the machine is a GPU target (vLLM colocate reserves a share of it)."""
        capacity = getattr(self, "capacity", None)
        return capacity if isinstance(capacity, int) else None

    def facts(self) -> Machine:
        """The machine facts alone (a GpuTarget without its GPU)."""
        return Machine(**{name: getattr(self, name) for name in Machine.model_fields})


class GpuTarget(Machine):
    """The memory a plan must fit in, per GPU, and where that number came from."""

    name: str
    capacity: int  # bytes a job can use on each GPU
    source: Literal["catalog", "given", "measured"]
    gpu: GpuSpec | None = None  # catalog entry, for speed and bf16 support
    device_name: str | None = None  # the name NVML reports, for a measured GPU
    note: str | None = None  # e.g. memory held by other processes
    gpus: int | None = None  # GPUs the run uses when the target decides it (auto: every visible GPU)

    @classmethod
    def of_catalog(cls, name: str) -> GpuTarget:
        """A catalog GPU, matched leniently ('RTX 4090', 'rtx4090', '4090')."""
        gpu = find_gpu(name)
        return cls(name=gpu.name, capacity=gpu.memory_bytes, source="catalog", gpu=gpu)

    @classmethod
    def of_memory(cls, size: str) -> GpuTarget:
        """A GPU known only by its usable memory ('24GiB', '80GB')."""
        return cls(name=f"{size} GPU", capacity=parse_bytes(size, "gpu_memory"), source="given")


def resolve_target(gpu: str | None = None, gpu_memory: str | None = None, *, gpus: int | None = None,
                   cuda_context: int | None = None, fragmentation: float | None = None,
                   probe=None, calibrations: dict[str, dict] | None = None) -> Machine:
    """What the user said about the machine -> the `Machine` (or `GpuTarget`) a plan is made for.

    `gpus` is the GPU count the user gave, if any: with `auto` and no count the run is planned over
    the launcher's WORLD_SIZE, else every visible GPU (as `llamafactory-cli` and `accelerate launch`
    use them). `probe` replaces the NVML reading (tests); `calibrations`, the calibration file already read.
    """
    if gpu and gpu_memory:
        raise FtplanError("give {gpu} or {gpu_memory}, not both", field="gpu")
    target: Machine
    if gpu_memory:
        target = GpuTarget.of_memory(gpu_memory)
    elif gpu and gpu.strip().lower() == "auto":
        target = _measured(gpus, probe)
    elif gpu:
        target = GpuTarget.of_catalog(gpu)
    else:
        target = Machine()
    overrides: dict = {}
    if cuda_context is not None:
        overrides.update(cuda_context=cuda_context, cuda_context_source="given")
    elif isinstance(target, GpuTarget) and target.source != "given":
        target = with_calibration(target, calibrations)
    if fragmentation is not None:
        overrides["fragmentation"] = fragmentation
    if gpus is not None and isinstance(target, GpuTarget):
        overrides["gpus"] = gpus
    if not overrides:
        return target
    try:
        return type(target)(**{**dict(target), **overrides})
    except ValidationError as exc:
        raise validation_error(exc) from None


def with_calibration(target: GpuTarget, stored: dict[str, dict] | None = None) -> GpuTarget:
    """The target with this GPU model's stored CUDA context (`ftplan gpus --calibrate`), if there is one;
    `stored`: the calibration file already read (planner.calibration.stored_calibrations)."""
    from planner.calibration import calibration_for

    cal = calibration_for(target.device_name, target.gpu.name if target.gpu else None, stored)
    if cal is None:
        return target
    return target.model_copy(update={"cuda_context": cal.cuda_context, "cuda_context_source": "measured"})


def _measured(gpus: int | None, probe) -> GpuTarget:
    # NVML is read by diagnostics (the only pynvml importer); imported here only for `auto`
    from diagnostics.gpus import measured_target
    from diagnostics.nvml import probe as nvml_probe

    result = (probe or nvml_probe)()
    if gpus is None and result.status == "ok" and result.visible:
        world = os.environ.get("WORLD_SIZE", "")
        gpus = int(world) if world.isdigit() and int(world) > 0 else len(result.visible)
    target = measured_target(result, gpus or 1)
    return target.model_copy(update={"gpus": gpus or 1})


def catalog_targets(cuda_context: int | None = None, fragmentation: float | None = None) -> list[GpuTarget]:
    """Every catalog GPU as a target, each with its own stored calibration unless a context is given."""
    from planner.calibration import stored_calibrations
    from planner.hardware import catalog

    stored = stored_calibrations()  # once, not once per GPU
    return [resolve_target(g.name, cuda_context=cuda_context, fragmentation=fragmentation, calibrations=stored)
            for g in catalog()]
