"""The stored CUDA-context calibration of this machine's GPUs (`ftplan gpus --calibrate` writes it).

Reading it is a machine fact the planner needs for every GPU target, so it lives here;
measuring it needs torch and CUDA and lives in `diagnostics.calibrate`. The file is kept in
the user cache (`$FTPLAN_CACHE_DIR`, else `$XDG_CACHE_HOME/ftplan`, else `~/.cache/ftplan`),
one entry per GPU model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel

from planner.files import check_output, write_text_atomic

FILE = "calibration.json"
_WHAT = "the calibration cache (its folder: $FTPLAN_CACHE_DIR)"


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


def stored_calibrations() -> dict[str, dict]:
    """Every stored entry, by NVML name, as the file holds it (read once per caller)."""
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


def calibration_for(device_name: str | None = None, catalog_name: str | None = None,
                    stored: dict[str, dict] | None = None) -> Calibration | None:
    """The stored calibration of a GPU model, by its NVML name or its catalog name ('H100-80GB');
    `stored` spares a caller looking up many GPUs a read of the file per GPU."""
    from planner.errors import FtplanError
    from planner.hardware import find_gpu

    stored = stored_calibrations() if stored is None else stored
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


def check_cache() -> Path:
    """Fail before a measurement, not after it, when the cache cannot be written (a folder in its place...)."""
    return check_output(cache_dir() / FILE, flag=_WHAT, existing="replace")


def save_calibration(cal: Calibration) -> Path:
    """Write it as planner.files writes (atomically, never over a device or a folder), keeping the
    calibrations of other GPU models."""
    data = stored_calibrations()
    data[cal.gpu] = cal.model_dump()
    return write_text_atomic(cache_dir() / FILE, json.dumps(data, indent=2) + "\n", what=_WHAT)
