"""Measure this machine's CUDA context overhead once, and remember it for the planner.

The planner's `overhead` assumes about 0.5 GiB for the CUDA context (driver state,
cuBLAS/cuDNN handles and workspaces). `calibrate()` measures it: NVML's count of
the memory this process holds after creating a context and running one matmul,
minus what PyTorch's allocator reserved. The result is stored per GPU model
(`planner.calibration`), and every GPU target the planner resolves uses it, labelled "measured".
"""

from __future__ import annotations

from datetime import datetime, timezone

from diagnostics.nvml import NvmlBackend, probe
from planner.calibration import Calibration, calibration_for, save_calibration
from planner.errors import EnvironmentMissing

__all__ = ["Calibration", "calibrate", "calibration_for", "save_calibration"]

def calibrate(device: int = 0, backend: NvmlBackend | None = None) -> Calibration:
    """Create a CUDA context on `device` (a CUDA index) and measure what it costs. Needs torch with CUDA."""
    try:
        import torch
    except ImportError:
        raise EnvironmentMissing("--calibrate needs PyTorch: pip install 'ftplan[diagnostics]'") from None
    if not torch.cuda.is_available():
        raise EnvironmentMissing("--calibrate needs a CUDA GPU visible to PyTorch (torch.cuda.is_available() "
                                 "is False here)")
    before = probe(backend)
    gpu = next((g for g in before.visible if g.cuda_index == device), None)
    if gpu is None:
        raise EnvironmentMissing(f"--calibrate: CUDA device {device} is not visible ({before.summary()})")
    torch.cuda.set_device(device)
    x = torch.randn(1024, 1024, device="cuda")
    (x @ x).sum().item()  # forces cuBLAS initialisation and its workspace
    torch.cuda.synchronize()
    reserved = torch.cuda.memory_reserved()
    after = probe(backend)
    now = next(g for g in after.gpus if g.uuid == gpu.uuid)
    own = [p.used_memory for p in now.processes if p.own and p.used_memory is not None]
    if own:
        held, method = own[0], "process"
    else:  # containers often hide per-process numbers: use the device's used-memory delta
        held, method = (now.memory_used or 0) - (gpu.memory_used or 0), "device"
    return Calibration(gpu=gpu.name, cuda_context=max(0, held - reserved), allocator_reserved=reserved,
                       method=method, driver_version=after.driver_version, torch_version=torch.__version__,
                       measured_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
