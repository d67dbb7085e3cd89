"""Measure this machine's CUDA context overhead once, and remember it for the planner.

The planner's `overhead` assumes about 0.5 GiB for the CUDA context (driver state,
cuBLAS/cuDNN handles and workspaces). `calibrate()` measures it: NVML's count of
the memory this process holds after creating a context and running one matmul,
minus what PyTorch's allocator reserved. The result is stored in the user cache
(`$FTPLAN_CACHE_DIR`, else `$XDG_CACHE_HOME/ftplan`, else `~/.cache/ftplan`) per GPU
model, and `ftplan estimate` uses it, labelled "measured".
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel

from diagnostics.nvml import NvmlBackend, probe
from planner.errors import EnvironmentMissing
from planner.files import write_text_atomic

FILE = "calibration.json"


class Calibration(BaseModel):
    gpu: str  # NVML name, e.g. "NVIDIA H100 80GB HBM3"
    cuda_context: int  # bytes
    allocator_reserved: int  # bytes PyTorch reserved for the test matmul
    method: str  # "process" (NVML per-process memory) or "device" (device used-memory delta)
    driver_version: str | None = None
    torch_version: str | None = None
    measured_at: str


def cache_dir() -> Path:
    if os.environ.get("FTPLAN_CACHE_DIR"):
        return Path(os.environ["FTPLAN_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ftplan"


def _read_all() -> dict[str, dict]:
    path = cache_dir() / FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _parse(raw: dict | None) -> Calibration | None:
    try:
        return Calibration(**raw) if raw else None
    except (TypeError, ValueError):
        return None  # an old or hand-edited entry: ignore it rather than fail an estimate


def calibration_for(device_name: str | None = None, catalog_name: str | None = None) -> Calibration | None:
    """The stored calibration of a GPU model, by its NVML name or its catalog name ('H100-80GB')."""
    from planner.errors import FtplanError
    from planner.hardware import find_gpu

    stored = _read_all()  # one read of the cache file
    if device_name and (found := _parse(stored.get(device_name))):
        return found
    if catalog_name:
        for name, raw in stored.items():
            try:
                if find_gpu(name).name == catalog_name:
                    return _parse(raw)
            except FtplanError:
                continue
    return None


def save_calibration(cal: Calibration) -> Path:
    """Write atomically, keeping the calibrations of other GPU models."""
    data = _read_all()
    data[cal.gpu] = cal.model_dump()
    return write_text_atomic(cache_dir() / FILE, json.dumps(data, indent=2) + "\n")


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
