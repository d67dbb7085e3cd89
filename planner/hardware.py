"""The GPU catalog (`profiles/gpus.yaml`) and lenient GPU-name matching."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

from pydantic import BaseModel, ConfigDict

from planner.errors import FtplanError
from planner.units import MIB


class GpuSpec(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    aliases: tuple[str, ...] = ()
    memory_mib: int
    bf16_tflops: float | None = None
    fp16_tflops: float
    bandwidth_gbps: float | None = None
    compute_capability: str | None = None

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * MIB

    @property
    def supports_bf16(self) -> bool:
        return self.bf16_tflops is not None

    @property
    def predates_flash_attention(self) -> bool:
        """flash-attention 2 needs compute capability 8.0 (Ampere); an unknown capability gets the benefit of
        the doubt."""
        return bool(self.compute_capability) and float(self.compute_capability) < 8.0

    def peak_tflops(self, compute_dtype: str) -> float:
        """Dense tensor-core peak for the compute dtype; fp32 runs as TF32 at half the bf16 rate."""
        if compute_dtype == "bf16":
            return self.bf16_tflops or self.fp16_tflops / 4  # emulated bf16 is far slower
        if compute_dtype == "fp16":
            return self.fp16_tflops
        return (self.bf16_tflops or self.fp16_tflops / 4) / 2


def _norm(name: str) -> str:
    key = re.sub(r"[^a-z0-9]", "", name.lower())
    for noise in ("nvidia", "geforce", "tesla"):
        key = key.replace(noise, "")
    return key


@cache
def catalog() -> tuple[GpuSpec, ...]:
    import yaml

    text = (resources.files("profiles") / "gpus.yaml").read_text(encoding="utf-8")
    raw = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # libyaml's, as preset_index
    return tuple(GpuSpec(**{**g, "aliases": tuple(str(a) for a in g.get("aliases", ()))}) for g in raw["gpus"])


def find_gpu(name: str) -> GpuSpec:
    """Match 'RTX 4090', 'rtx4090', '4090', 'NVIDIA H100 80GB HBM3' to a catalog entry."""
    key = _norm(name)
    if not key:
        raise FtplanError("--gpu: empty name; run `ftplan gpus --catalog` to list known GPUs")
    exact = [g for g in catalog() if key in {_norm(g.name), *(_norm(a) for a in g.aliases)}]
    if exact:
        return exact[0]
    stripped = key.removeprefix("rtx") or key
    names_of = {g.name: [_norm(n) for n in (g.name, *g.aliases)] for g in catalog()}
    within = [g for g in catalog() if any(stripped in n for n in names_of[g.name])]
    if len(within) == 1:
        return within[0]
    if within:
        listed = ", ".join(g.name for g in within)
        raise FtplanError(f"--gpu {name}: ambiguous, it matches {listed}; name one of them")
    # a longer description around a known name (e.g. NVML's "NVIDIA A100-SXM4-80GB PCIe"): the longest wins
    around = [(max(len(n) for n in names_of[g.name] if n in key), g) for g in catalog()
              if any(n in key for n in names_of[g.name])]
    if around:
        return max(around, key=lambda pair: pair[0])[1]
    listed = ", ".join(g.name for g in catalog())
    raise FtplanError(f"--gpu {name}: not in the GPU catalog ({listed}); or give --gpu-memory 24GiB")
