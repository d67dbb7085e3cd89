"""`ftplan preflight CONFIG`: is this training config ready for a long run?

1. the plan on the GPUs it will run on (NVML, honouring CUDA_VISIBLE_DEVICES and the
   launcher's process count) or on a named GPU: fits, headroom, largest micro-batch;
2. the estimate's findings and static checks that need no run (planner.configs.checks);
3. optionally a short diagnostics run with the config's own model, data and settings;
4. a verdict, and with `fix` a corrected copy of the config (the input is never touched).

The `fix` path is checked (planner.files) right after the config is read, before the estimate and any
diagnostics run: a folder, a device, an input of the run, or an existing file without `force` fails at once.
A write that still fails at the end (a full disk) does not lose the report: `fix_error` says why.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from diagnostics.report import DiagnoseSettings, DiagnosticReport
from planner.configs import Format, RunConfig, config_changes_for, fix_config, read_run_config, static_checks
from planner.configs.common import resolve_path
from planner.configs.fix import writable
from planner.configs.read import FRAMEWORKS
from planner.errors import EnvironmentMissing, FtplanError
from planner.fields import word, worded
from planner.files import check_output, model_input
from planner.findings import Finding
from planner.result import Estimate
from planner.service import plan_run
from planner.spec import load_spec
from planner.target import GpuTarget, resolve_target
from planner.units import fmt_gib

Verdict = Literal["ready", "ready_with_warnings", "will_not_fit", "not_ready", "diagnostics_failed"]


class PreflightReport(BaseModel):
    config: str
    format: Format
    model: str
    run: RunConfig
    estimate: Estimate
    gpus: int
    checks: list[Finding]  # the estimate's findings, then the config's, worded with the framework's keys
    diagnostics: DiagnosticReport | None = None
    verdict: Verdict
    summary: str
    fixed: str | None = None  # the corrected copy written with --fix
    fix_error: str | None = None  # why --fix could not be written at the end (the report stands)
    fix_changes: dict[str, Any] = {}

    @property
    def warnings(self) -> list[Finding]:
        """The findings that make the verdict conditional (and fail --strict): errors, and warnings that
        `conservative` does not clear."""
        fits = self.estimate.fit is not None and self.estimate.fit.fits
        return [c for c in self.checks if c.severity == "error" or (c.severity == "warning"
                                                                     and not conservative(c, fits))]

    @property
    def conditional(self) -> list[Finding]:
        """Settings ftplan does not model that would only lower memory: printed, but the verdict stands."""
        fits = self.estimate.fit is not None and self.estimate.fit.fits
        return [c for c in self.checks if c.severity == "warning" and conservative(c, fits)]


def conservative(finding: Finding, fits: bool) -> bool:
    """Whether a warning leaves a fitting plan's verdict standing (and `--strict` passing).

    A reader's "not modelled" warning (a setting the framework applies that the plan leaves out: it carries the
    config keys in `data["keys"]` and `data["direction"]`) whose direction is `overstates` says the real run needs
    *less* memory than planned. When the plan fits, the run fits too, so the estimate is conservative, not wrong:
    the warning is printed as "conditional: ...", the verdict stays `ready` and says how many such settings there
    are. Everything else still counts: a not-modelled setting that understates memory or whose direction is
    unknown, the static checks' warnings (stability and schedule: they carry no direction), the estimate's own
    warnings, and any warning on a plan that does not fit (there the direction cannot rescue the verdict).
    """
    return (fits and finding.severity == "warning" and "keys" in finding.data
            and finding.data.get("direction") == "overstates")


def _target(gpu: str | None, gpu_memory: str | None, gpus: int | None,
            implied: int | None = None) -> tuple[GpuTarget, list[str]]:
    """Where the run will happen: a named GPU, a memory size, or (default) this machine's GPUs.

    `gpu` None means the user named no GPU: this machine's, as with `auto`. The GPU count is, in order: `--gpus`;
    with an explicit `--gpu auto`, the launcher's WORLD_SIZE or every visible GPU; else the count the config
    implies (`implied`: accelerate's num_processes, Ray workers, parallel sizes), said in a note; else
    WORLD_SIZE / every visible GPU (no GPU named) or 1 (a named GPU or a memory size)."""
    explicit_auto = gpu is not None and gpu.strip().lower() == "auto"
    auto = not gpu_memory and (not gpu or explicit_auto)
    from_config = gpus is None and not explicit_auto and implied is not None and implied > 1
    try:
        target = resolve_target("auto" if auto else gpu, gpu_memory, gpus=implied if from_config else gpus)
    except EnvironmentMissing as exc:
        raise EnvironmentMissing(f"{worded(exc, 'cli')}; on a machine without the GPUs, pass --gpu NAME (and --gpus N) to check "
                                 "against the catalog") from None
    notes: list[str] = []
    if from_config:
        notes.append(f"{implied} GPUs: the count the config implies (its launcher, Ray or parallel settings); "
                     "pass --gpus N to plan another count")
    elif auto and gpus is None:
        notes.append(f"{target.gpus} GPU(s): " + ("the launcher's WORLD_SIZE" if os.environ.get("WORLD_SIZE") else
                                                  "every visible GPU, as llamafactory-cli and accelerate launch use "
                                                  "them"))
    return target, notes


def _model_key(run: RunConfig) -> str:
    """The key the user wrote the model under (LLaMA-Factory v1 writes `model:`)."""
    framework = FRAMEWORKS[run.format]
    for key in (framework.model_key, "model_name_or_path", "base_model", "model"):
        if key in run.treatment:
            return key
    return framework.model_key


def _load_spec(run: RunConfig):
    """The model's spec; an error names the config key the user wrote, never a `--model` flag."""
    try:
        return load_spec(_model_for(run))
    except FtplanError as exc:
        if exc.field not in (None, "model"):
            raise FtplanError(f"{run.path}: {worded(exc, run.format)}") from None
        # planner.spec words its own errors for the CLI ("--model X: ..."): here the setting is a config key
        reason = re.sub(r"^--model(?: .*?)?: ", "", word(exc.reason, run.format))
        for model in (run.model, _model_for(run)):
            reason = reason.removeprefix(f"{model}: ")
        reason = reason.replace("or pass a local directory", "or set it to a local directory")
        error = type(exc)(f"{run.path}: key '{_model_key(run)}': {run.model}: {reason}")
        raise error from None


def _model_for(run: RunConfig) -> str:
    """A model path in the config is relative to the config's folder, as the frameworks resolve it."""
    candidate = Path(run.path).parent / run.model
    return str(candidate) if not Path(run.model).is_absolute() and candidate.exists() else run.model


def preflight(path: str | Path, *, gpu: str | None = None, gpu_memory: str | None = None, gpus: int | None = None,
              diagnose_steps: int | None = None, strict: bool = False, fix: str | Path | None = None,
              fmt: Format | None = None, stage: str | None = None, force: bool = False) -> PreflightReport:
    run = read_run_config(path, fmt, stage=stage)
    if fix is not None:
        fix = check_output(fix, flag="--fix", inputs=_inputs(run), existing="replace" if force else "refuse")
    spec = _load_spec(run)
    target, notes = _target(gpu, gpu_memory, gpus, run.gpus)
    try:
        result = plan_run(spec, run.plan, target, search_batch=True, vocabulary=run.format)
    except FtplanError as exc:  # a setting this model cannot take (e.g. a LoRA target it lacks): the key
        raise type(exc)(worded(exc, run.format, where=run.path)) from None
    gpus = result.plan.gpus
    checks = [Finding(severity="info", code="note", message=n) for n in [*run.notes, *notes]]
    if run.data.datasets and not run.data.files and run.format == "llamafactory":
        checks.append(Finding(severity="info", code="dataset_not_found",
                              message=f"dataset {', '.join(run.data.datasets)} not found through "
                                      f"{run.data.dataset_dir}/dataset_info.json: steps per epoch unknown"))
    reader = [f.model_copy(update={"message": word(f.message, run.format)}) for f in static_checks(run, target.gpu, gpus)]
    # the reader's wording of a warning names the config keys: it replaces the planner's generic one
    said = {f.code for f in reader}
    if "generation_batch" in said:  # the config sizes GRPO's generation batch itself, so the planner's whole-
        said.add("prompt_groups")  # group check on micro-batch x accumulation is not what TRL will check
    checks += [f for f in result.warnings if f.code not in said] + reader
    fits = result.fit is not None and result.fit.fits

    diag = None
    if diagnose_steps:
        from diagnostics.objectives import SUPPORTED_STAGES
        from diagnostics.runner import run_isolated

        plan = run.plan
        if plan.stage not in SUPPORTED_STAGES:  # the gradients of its SFT loop still say something about the run
            checks.append(Finding(severity="info", code="note", message=word(
                f"the diagnostics ran an SFT loop: diagnose has no {plan.stage} loop ({{stage}} sft, dpo or orpo)",
                run.format)))
            plan = plan.model_copy(update={"stage": "sft"})
        settings = DiagnoseSettings(
            model=_model_for(run), data=run.data.files[0] if run.data.files else None, steps=diagnose_steps,
            lr=run.hyper.learning_rate, warmup_ratio=run.hyper.warmup_ratio,
            lr_scheduler=run.hyper.lr_scheduler if run.hyper.lr_scheduler in ("cosine", "linear", "constant")
            else "cosine", max_grad_norm=run.hyper.max_grad_norm or None, plan=plan,
            **({"beta": run.hyper.beta} if (run.hyper.beta or 0) > 0 and plan.stage != "sft" else {}))
        diag = run_isolated(settings)

    changes = _fixes(run, result, checks, diag)
    errors = [c for c in checks if c.severity == "error"]
    if not fits:
        verdict: Verdict = "will_not_fit"
    elif errors:
        verdict = "not_ready"
    elif diag is not None and (diag.status != "completed" or any(f.severity == "error" for f in diag.findings)):
        verdict = "diagnostics_failed"
    elif any(c.severity == "warning" and not conservative(c, fits) for c in checks) or (
            diag is not None and diag.warnings):
        verdict = "ready_with_warnings"
    else:
        verdict = "ready"
    conditional = [c for c in checks if c.severity == "warning" and conservative(c, fits)]
    fixed = fix_error = None
    if fix is not None:
        try:
            fixed = str(fix_config(run.path, changes, fix, force=force, inputs=_inputs(run)))
        except FtplanError as exc:
            fix_error = str(exc)
    return PreflightReport(config=str(path), format=run.format, model=run.model, run=run, estimate=result,
                           gpus=gpus, checks=checks, diagnostics=diag, verdict=verdict,
                           summary=_summary(verdict, result, errors, diag, strict, conditional), fixed=fixed,
                           fix_error=fix_error, fix_changes=changes)


def _inputs(run: RunConfig) -> dict[str, str | Path | None]:
    """The files this run reads, which --fix must never overwrite."""
    inputs: dict[str, str | Path | None] = {"the config": run.path,
                                            "the model's config.json": model_input(_model_for(run))}
    files = run.data.files
    inputs.update({"the config's data file" + (f" #{i}" if len(files) > 1 else ""): name
                   for i, name in enumerate(files, 1)})
    if run.format == "llamafactory":
        folder = resolve_path(run.data.dataset_dir or "data", Path(run.path).parent)
        inputs["the config's dataset_info.json"] = folder / "dataset_info.json"
    return inputs


def _fixes(run: RunConfig, result: Estimate, checks: list[Finding], diag: DiagnosticReport | None) -> dict[str, Any]:
    """The config keys to change: the findings' changes, then the diagnostics' advice, then the first memory
    suggestion that fits and is expressible as plain keys (last, so nothing undoes it; of two sequence
    lengths the shorter stays)."""
    allowed = writable(run.format, run.dialect)
    changes: dict[str, Any] = {}
    for finding in checks:
        if finding.change is not None:
            changes.update(finding.change.changes)
    for advice in diag.advice if diag is not None else ():
        changes.update(advice.changes)
    if result.fit is not None and not result.fit.fits:
        fitting = [s for s in result.suggestions if s.fits and set(s.changes) <= allowed]
        # least invasive first: keep the method and the data, then change the method, then cut sequences
        fitting.sort(key=lambda s: ("seq_len" in s.changes, "method" in s.changes))
        if fitting:
            memory = dict(fitting[0].changes)
            if "seq_len" in memory and "seq_len" in changes:
                memory["seq_len"] = min(memory["seq_len"], changes["seq_len"])
            changes.update(memory)
    return config_changes_for(run.format, changes, run.dialect)


def _summary(verdict: Verdict, result: Estimate, errors: list[Finding], diag: DiagnosticReport | None,
             strict: bool, conditional: list[Finding] = ()) -> str:
    fit = result.fit
    room = f"{fmt_gib(fit.headroom, 1)} headroom on {fit.gpu}" if fit and fit.fits else ""
    n = len({k for c in conditional for k in c.data.get("keys", ())} or conditional)
    lower = (f" (estimate conservative: {n} setting{'s' if n > 1 else ''} not modelled would lower it)"
             if conditional else "")
    return {
        "ready": f"READY{lower}: fits with {room}",
        "ready_with_warnings": f"READY with warnings{' (--strict: not ready)' if strict else ''}{lower}: fits with "
                               f"{room}",
        "will_not_fit": f"NOT READY: needs {fmt_gib(result.memory.total, 1)} per GPU, {fit.gpu if fit else ''} "
                        f"has {fmt_gib(fit.capacity, 1)}" if fit else "NOT READY",
        "not_ready": "NOT READY: " + "; ".join(c.message for c in errors),
        "diagnostics_failed": "NOT READY: the diagnostics run " + (
            diag.status if diag and diag.status != "completed" else "found errors"),
    }[verdict]


def exit_code(report: PreflightReport, strict: bool) -> int:
    if report.verdict == "ready":
        return 0
    if report.verdict == "ready_with_warnings":
        return 1 if strict else 0
    return 1
