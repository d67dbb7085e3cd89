"""The typed results of a diagnostics run: per-step records, findings, advice, the report.

Findings and advice are the planner's `Finding` and `Change` (planner.findings): advice names
settings by their planner field (`learning_rate`, `grad_accum`, `precision`, ...), never by a
framework's key. `DiagnosticReport.model_dump(mode="json")` is what `--json` prints and `--out`
writes (atomically); the TUI and preflight read the same object.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from planner.files import write_text_atomic
from planner.findings import Change, Finding
from planner.plan import Plan

Status = Literal["completed", "interrupted", "non_finite", "oom", "does_not_fit", "crashed", "failed"]


class StepRecord(BaseModel):
    step: int  # 1-based optimizer step
    loss: float
    lr: float
    grad_norm: float  # total L2 norm before clipping (after unscaling)
    clipped: bool
    layer_norms: dict[str, float]  # embeddings, block.N, final_norm, head
    kind_norms: dict[str, float]  # block.N.attention / mlp / experts / router / norm / lora_A / lora_B
    update_ratio: dict[str, float] | None = None  # |dW| / |W| per layer
    unchanged_fraction: dict[str, float] | None = None  # weights left bit-identical by the step
    zero_fraction: dict[str, float] | None = None  # gradient elements exactly zero, per layer
    zero_params: list[str] = []  # trainable tensors whose whole gradient was zero (or absent)
    nonfinite_param: str | None = None  # first parameter (model order) with a NaN/Inf gradient
    micro_grad_sq: float | None = None  # |g|^2 of one micro-batch, for the gradient noise scale
    loss_scale: float | None = None  # fp16 GradScaler scale
    tokens: int = 0  # tokens in the global batch
    step_time: float = 0.0
    tokens_per_s: float = 0.0
    memory: dict[str, int | None] = {}  # max_allocated, max_reserved, process (NVML) or rss


class MemoryComparison(BaseModel):
    estimate_total: int
    estimate_allocated: int
    measured_allocated: int | None = None
    measured_reserved: int | None = None
    measured_process: int | None = None
    error: float | None = None  # (estimate - measured) / measured, on the allocated peak


class DiagnoseSettings(BaseModel):
    model: str
    data: str | None = None  # None: the sample dataset shipped with ftplan
    steps: int = 30
    lr: float | None = None  # None: 1e-4 for LoRA/QLoRA, 1e-5 otherwise
    warmup_ratio: float = 0.0
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    max_grad_norm: float | None = 1.0
    weight_decay: float = 0.0
    seed: int = 42
    device: str = "auto"
    loss_scaling: bool = True  # fp16: use a GradScaler (HF's default)
    init_std: float | None = None  # config-only models: override initializer_range
    ratio_every: int | None = None  # update ratios every N steps; None: every step for LoRA/QLoRA, every 4th else
    plan: Plan = Field(default_factory=lambda: Plan(batch_size=2, grad_accum=2, seq_len=256))

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return 1e-4 if self.plan.method in ("lora", "qlora") else 1e-5

    @property
    def update_ratio_every(self) -> int:
        """Update ratios need a copy of the trainable weights around the step: cheap for adapters, a few
        percent of a step for full fine-tuning, so those sample every 4th step (benchmarks/bench_monitor.py)."""
        if self.ratio_every is not None:
            return max(1, self.ratio_every)
        return 1 if self.plan.method in ("lora", "qlora") else 4

    @property
    def warmup_steps(self) -> int:
        return int(self.warmup_ratio * self.steps)


class DiagnosticReport(BaseModel):
    status: Status
    message: str | None = None
    error_kind: Literal["input", "environment"] | None = None  # why a "failed" run failed before training
    settings: DiagnoseSettings
    environment: dict[str, Any] = {}
    records: list[StepRecord] = []
    findings: list[Finding] = []
    advice: list[Change] = []  # settings to change, by planner field
    memory: MemoryComparison | None = None
    noise_scale: float | None = None  # gradient noise scale B_simple, in sequences (None: not measurable)

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity in ("warning", "error")]


def write_report(report: DiagnosticReport, path: str | Path) -> Path:
    """Write atomically: a reader never sees half a file, and a failed write leaves the old one intact."""
    return write_text_atomic(path, report.model_dump_json(indent=2) + "\n")
