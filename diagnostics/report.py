"""The typed results of a diagnostics run: per-step records, findings, advice, the report.

Findings and advice are the planner's `Finding` and `Change` (planner.findings): advice names
settings by their planner field (`learning_rate`, `grad_accum`, `precision`, ...), never by a
framework's key. `DiagnosticReport.model_dump(mode="json")` is what `--json` prints and `--out`
writes (atomically); the TUI and preflight read the same object.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from planner.files import Existing, Inputs, write_output
from planner.findings import Change, Finding
from planner.plan import Plan

Status = Literal["completed", "interrupted", "non_finite", "oom", "does_not_fit", "crashed", "failed"]


class PreferenceRecord(BaseModel):
    """One step's preference metrics, means over its pairs; the names TRL's DPOTrainer logs in comments.

    Rewards are beta x log-probability ratios: for DPO the policy's completion log-prob minus the
    reference's, for ORPO (no reference) the policy's mean per-token log-prob, as LLaMA-Factory logs them.
    """

    margin: float  # rewards/margins: chosen_reward - rejected_reward
    abs_margin: float  # mean |margin| over the pairs (a mean margin near 0 can hide large ones of both signs)
    chosen_reward: float  # rewards/chosen
    rejected_reward: float  # rewards/rejected
    accuracy: float  # rewards/accuracies: share of pairs whose chosen reward beats the rejected one
    chosen_logp: float  # logps/chosen: summed log-prob of the chosen completion under the policy
    rejected_logp: float  # logps/rejected
    chosen_token_logp: float  # mean per-token log-prob of the chosen completions (comparable across batches)
    rejected_token_logp: float
    # DPO: (policy - reference) log-prob per completion token (the rewards are beta x these sums); how far the
    # policy has moved from the reference, in nats per token
    chosen_token_logratio: float | None = None
    rejected_token_logratio: float | None = None
    nll: float | None = None  # ORPO: the NLL term on the chosen completions (mean per token)
    log_odds: float | None = None  # ORPO: log odds ratio of chosen over rejected


class NonFiniteOrigin(BaseModel):
    """Where the step that stopped the run went non-finite: diagnostics.origin replays its micro-batches with
    hooks, at the weights that produced it, to name the module."""

    # forward: the loss (or a module's output) went non-finite; backward: the loss stayed finite, gradients did not
    phase: Literal["forward", "backward"]
    module: str | None = None  # the first module to make a non-finite value (normalised name); None: not found
    # output (from finite inputs), weights (non-finite weights), input gradient (from a finite output gradient),
    # parameter gradient (of `parameter`, from a finite output gradient), loss (outside every module)
    where: Literal["output", "weights", "input gradient", "parameter gradient", "loss"] | None = None
    parameter: str | None = None  # the parameter, when its gradient is the origin
    micro_batch: int | None = None  # which micro-batch of the step (0-based)
    layers: list[str] = []  # layers whose gradient norm was non-finite on the step
    note: str | None = None  # why no module is named


class StepRecord(BaseModel):
    # a non-finite loss or norm is written "NaN" / "Infinity" (JSON has neither), so it reads back; the default
    # null would not validate as a float, and would look like a missing value
    model_config = ConfigDict(ser_json_inf_nan="strings")

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
    origin: NonFiniteOrigin | None = None  # on the step that stopped the run: where it went non-finite
    micro_grad_sq: float | None = None  # |g|^2 of one micro-batch, for the gradient noise scale
    # fp16 GradScaler: the scale this step's backward ran at (before update(); after it, the next step's)
    loss_scale: float | None = None
    skipped: bool = False  # fp16: the GradScaler skipped this optimizer step (non-finite gradients at that scale)
    # when this step's loss jumped: the previous step's micro-batches re-evaluated at this step's weights (before
    # its update), against which diagnostics.spikes tells a hard batch from an instability
    recheck_loss: float | None = None
    tokens: int = 0  # tokens in the global batch
    step_time: float = 0.0
    tokens_per_s: float = 0.0
    memory: dict[str, int | None] = {}  # max_allocated, max_reserved, process (NVML) or rss
    preference: PreferenceRecord | None = None  # --stage dpo / orpo

    @property
    def stops_run(self) -> bool:
        """A non-finite loss, or non-finite gradients the GradScaler did not skip: the run stops at this step."""
        return not math.isfinite(self.loss) or (not math.isfinite(self.grad_norm) and not self.skipped)

    @property
    def nonfinite_layers(self) -> list[str]:
        return [k for k, v in self.layer_norms.items() if not math.isfinite(v)]


class DataSummary(BaseModel):
    """What the run trains on, out of what the data file holds."""

    records: int  # records in the file
    examples: int  # examples built from them (SFT, pairs for DPO / ORPO; plain text is packed into blocks)
    seq_len: int
    dropped: list[int] = []  # 1-based numbers of the records left out: no answer token within seq_len
    needed_len: int | None = None  # the shortest seq_len that keeps an answer token of every dropped record
    unanswered: list[int] = []  # 1-based numbers of the records with no assistant answer to train on
    # trainable (label) tokens per SFT example, after the one-token shift the loss makes: their median and least
    label_tokens_median: float | None = None
    label_tokens_min: int | None = None
    one_token: list[int] = []  # 1-based numbers of the examples that train a single token
    duplicates: int = 0  # examples that repeat an earlier one token for token
    most_repeated: int = 1  # copies of the most repeated example


class MemoryComparison(BaseModel):
    estimate_total: int
    estimate_allocated: int
    measured_allocated: int | None = None
    measured_reserved: int | None = None
    measured_process: int | None = None
    error: float | None = None  # (estimate - measured) / measured, on the allocated peak


class DiagnoseSettings(BaseModel):
    model: str
    data: str | None = None  # None: the sample dataset shipped with ftplan (the preference one for dpo/orpo)
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
    lr_find: bool = False  # the steps run an LR range test instead (diagnostics.lr_find)
    # DPO's beta (TRL DPOConfig.beta, LLaMA-Factory pref_beta: 0.1); for ORPO the weight lambda of the odds-ratio
    # term, which both frameworks also call beta (TRL ORPOConfig.beta, LLaMA-Factory pref_beta: 0.1)
    beta: float = Field(0.1, gt=0)
    plan: Plan = Field(default_factory=lambda: Plan(batch_size=2, grad_accum=2, seq_len=256))

    @property
    def stage(self) -> str:
        return self.plan.stage

    @property
    def preference(self) -> bool:
        return self.plan.stage in ("dpo", "orpo")

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        if self.preference:  # LLaMA-Factory examples/train_lora/llama3_lora_dpo.yaml (LoRA too): 5e-6
            return 5e-6
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
    data: DataSummary | None = None

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity in ("warning", "error")]


def write_report(report: DiagnosticReport, path: str | Path, *, flag: str | None = None,
                 inputs: Inputs | None = None, existing: Existing = "refuse") -> Path:
    """Write as planner.files writes every output (checked, atomic; `existing` and `inputs` as there)."""
    return write_output(path, report.model_dump_json(indent=2) + "\n", flag=flag, inputs=inputs, existing=existing)
