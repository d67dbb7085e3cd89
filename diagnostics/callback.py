"""`FtplanMonitor`: `ftplan diagnose`'s gradient monitor and rules inside a real Hugging Face Trainer or TRL run.

    from diagnostics.callback import FtplanMonitor
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, callbacks=[FtplanMonitor("run.jsonl")])
    trainer.train()

Every optimizer step goes through the same code as the diagnose loop (diagnostics.loop): the GradMonitor's one
sync, `step_record`, the replay that names where a non-finite step started (diagnostics.origin), and the rules
(diagnostics.rules) over a window of recent steps, so a finding is printed when it first appears. The log
(diagnostics.runlog) gets every step as it is taken and the report at the end; `ftplan report run.jsonl`
renders it.

Where the gradients are read: the Trainer clips right after the last backward and calls `on_pre_optimizer_step`
only after that, so the norms there would be post-clip. For the pre-clip norms the rules need, the callback
takes the clip over: it sets `args.max_grad_norm` to 0 for the span of each step (the Trainer then only
measures and, under fp16, unscales) and clips to the user's value itself in `on_pre_optimizer_step`, as the loop
does (GradMonitor.after_backward: the same global-norm clip as torch's). Saving and logging, after
`on_step_end`, see the user's value.

Sharded runs (diagnostics.sharded): under FSDP / FSDP2 each rank reads its shards and the squared norms are
summed over the ranks. Under DeepSpeed the Trainer's backward already runs `engine.step()`, so by
`on_pre_optimizer_step` the gradients are gone: the callback wraps the ZeRO optimizer's `step` instead, which the
engine calls with the reduced gradients in place and before its own clip (DeepSpeed clips, the callback only
measures). Neither kind is replayed to locate a non-finite step (a replay on one rank would hang the others'
collectives), and DeepSpeed applies such a step before the run stops.

Stopping (`StopPolicy`): an error finding (a non-finite step, divergence, a collapsed fp16 loss scale) stops the
run, as does a sustained loss spike: `patience` steps in a row above `factor` x the median loss of the
`window` steps before them (llm-foundry's KillLossSpike: 4 steps over 2x the running loss of a 100-step
window). A non-finite step is not applied: its gradients are dropped before the optimizer step, so the weights
stay those that produced it (and the replay runs on them).

The loss is the model's own (`output.loss`), or for TRL's fused LM head (no loss in the output) the mean NLL
of the label tokens from its log-probs. Losses computed outside the model otherwise (a `compute_loss_func`,
label smoothing) are not seen: the monitor says so once and stops monitoring.

Every rank monitors (the stop decision must be the same everywhere, or DDP waits forever); rank 0 alone prints
and writes.
"""

from __future__ import annotations

import math
import platform
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from transformers import TrainerCallback

from diagnostics.loop import scale_tensor, step_memory, step_record, stop_message
from diagnostics.monitor import GradMonitor
from diagnostics.origin import locate, not_located
from diagnostics.report import DiagnoseSettings, DiagnosticReport, StepRecord
from diagnostics.rules import analyze, conclude
from diagnostics.runlog import RunLog, read_steps
from diagnostics.sharded import detect, per_rank
from planner.errors import FtplanError
from planner.findings import Finding
from planner.plan import Plan


@dataclass(frozen=True)
class StopPolicy:
    """When the monitor stops the run. `spike_patience=0` never stops on a spike; `on_error=False` never on an
    error finding (both off: watch only)."""

    on_error: bool = True
    spike_factor: float = 2.0  # a step's loss over this many times the median of the window before the streak...
    spike_patience: int = 4  # ...on this many steps in a row is a sustained spike
    window: int = 100  # steps the live rules and the spike baseline look back over
    min_history: int = 10  # steps of baseline before a spike can count

    def __post_init__(self):
        if self.spike_factor <= 1:
            raise FtplanError(f"StopPolicy spike_factor: must be above 1 (a multiple of the recent median loss), "
                              f"got {self.spike_factor}")
        if self.spike_patience < 0 or self.window < 2 or self.min_history < 1:
            raise FtplanError("StopPolicy: spike_patience must be 0 or more, window at least 2, min_history at "
                              "least 1")


def sustained_spike(losses: Sequence[float], policy: StopPolicy) -> dict | None:
    """The spike, if the last `spike_patience` losses all exceed `spike_factor` x the median of up to `window`
    finite losses before them (the streak itself stays out of its own baseline)."""
    patience = policy.spike_patience
    if patience == 0 or len(losses) < patience + policy.min_history:
        return None
    streak, before = losses[-patience:], [x for x in losses[:-patience][-policy.window:] if math.isfinite(x)]
    if len(before) < policy.min_history:
        return None
    baseline = sorted(before)[len(before) // 2]
    if baseline > 0 and all(math.isfinite(x) and x > policy.spike_factor * baseline for x in streak):
        return {"baseline": baseline, "losses": list(streak)}
    return None


@dataclass
class _Micro:
    """One micro-batch's forward, as the Trainer made it: its inputs (for the replay) and its loss."""

    kwargs: dict
    loss: object  # detached scalar tensor
    per_step: bool  # the model divided it by the step's token count (num_items_in_batch): the step sums them
    tokens: object
    labels: object | None  # label tokens, when the loss's weighting is known (for the noise-scale factor)


def _loss_of(output, kwargs: dict):
    """The micro-batch's loss tensor (with its graph) and whether it is a share of the step's token count."""
    loss = getattr(output, "loss", None)
    if loss is not None:
        return loss, kwargs.get("num_items_in_batch") is not None
    log_probs, mask = getattr(output, "log_probs", None), getattr(output, "label_mask", None)
    if log_probs is not None and mask is not None:  # TRL's fused LM head: log-probs of the labels, zero elsewhere
        return -log_probs.sum() / mask.sum().clamp(min=1), False
    return None, False


def _method(model) -> str:
    peft = getattr(model, "peft_config", None)
    if isinstance(peft, dict) and peft:
        kind = str(getattr(next(iter(peft.values())), "peft_type", "")).rsplit(".", 1)[-1].upper()
        quantized = getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)
        return {"LORA": "qlora" if quantized else "lora", "PREFIX_TUNING": "prefix", "PROMPT_TUNING": "prompt",
                "P_TUNING": "ptuning", "IA3": "ia3", "OFT": "oft"}.get(kind, "lora")
    trainable = [p.requires_grad for p in model.parameters()]
    return "full" if all(trainable) else "freeze"


def _precision(model, args) -> str:
    import torch

    dtype = next((p.dtype for p in model.parameters() if p.requires_grad), torch.float32)
    if dtype in (torch.bfloat16, torch.float16):
        return "bf16"  # 16-bit trainable weights, no fp32 master copy
    return "bf16-mixed" if args.bf16 else "fp16-mixed" if args.fp16 else "fp32"


def settings_from(args, state, model, ratio_every: int | None, seq_len: int | None = None) -> DiagnoseSettings:
    """The run's settings in the diagnose report's terms, from the Trainer's arguments and the live model."""
    from planner.configs.common import optimizer_for

    steps = max(1, int(state.max_steps or 1))
    name = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
    scheduler = str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type))
    plan = Plan(method=_method(model), precision=_precision(model, args),
                optimizer=optimizer_for(str(getattr(args.optim, "value", args.optim)))[0],
                batch_size=args.per_device_train_batch_size, grad_accum=args.gradient_accumulation_steps,
                seq_len=seq_len or getattr(args, "max_length", None) or 1024,
                gradient_checkpointing=bool(args.gradient_checkpointing), gpus=max(1, args.world_size),
                framework="trl")
    return DiagnoseSettings(
        model=str(name), steps=steps, lr=args.learning_rate, warmup_ratio=args.get_warmup_steps(steps) / steps,
        lr_scheduler=next((s for s in ("cosine", "constant") if s in scheduler), "linear"),
        max_grad_norm=args.max_grad_norm or None, weight_decay=args.weight_decay, seed=args.seed,
        device=str(args.device), loss_scaling=bool(args.fp16), ratio_every=ratio_every, plan=plan)


class FtplanMonitor(TrainerCallback):
    """Watch a Trainer run with ftplan's gradient monitor and rules; log every step to `path` (JSON lines) and
    the report at the end (also to `report_path` as JSON, if given); print findings as they appear; stop the run
    as `policy` says."""

    def __init__(self, path: str | Path = "ftplan-run.jsonl", *, policy: StopPolicy | None = None,
                 report_path: str | Path | None = None, ratio_every: int | None = None, verbose: bool = True):
        self.path, self.report_path = Path(path), report_path
        self.policy = policy or StopPolicy()
        self.ratio_every, self.verbose = ratio_every, verbose
        self.report: DiagnosticReport | None = None  # the final report, on rank 0, after training
        self._active = False

    # -- setup and teardown
    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        import torch

        self._model, self._optimizer = model, optimizer
        self._scaler = getattr(optimizer, "scaler", None)  # accelerate's GradScaler under fp16
        self._world, self._main = max(1, args.world_size), args.process_index == 0
        self._monitor = GradMonitor(model, access=detect(model))
        self._deepspeed = self._monitor.access.name.startswith("zero")
        self._sharded = self._monitor.access.reduce_grads is not None
        self._restore_step = self._wrap_engine_step(optimizer) if self._deepspeed else None
        self._clip = args.max_grad_norm or None
        self._settings = settings_from(args, state, model, self.ratio_every)
        self._window: deque[StepRecord] = deque(maxlen=self.policy.window)
        self._losses: deque[float] = deque(maxlen=self.policy.window + self.policy.spike_patience)
        self._seen: set[str] = set()
        self._stopped: tuple[str, Finding | None] | None = None
        self._micros: list[_Micro] = []
        self._record: StepRecord | None = None
        self._capture, self._longest = False, 0
        self._hook = model.register_forward_hook(self._on_forward, with_kwargs=True)
        self._active = True
        self._environment = {
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": sys.modules["transformers"].__version__, "device": str(args.device),
            "world_size": self._world, "tokenizer": _name(kwargs.get("processing_class")) or "no tokenizer",
            "data": "the Trainer's train_dataset", "examples": _examples(kwargs.get("train_dataloader")),
            "monitor": "FtplanMonitor (Trainer callback)"}
        self._log = RunLog(self.path) if self._main else None
        if self._log is not None:
            self._log.start(self._settings, self._environment)

    def on_train_end(self, args, state, control, **kwargs):
        if not self._active:
            return
        self._detach(args)
        if self._log is None:
            return
        self.report = self._final_report()
        self._log.report(self.report)
        self._log.close()
        if self.report_path is not None:
            from diagnostics.report import write_report

            write_report(self.report, self.report_path, existing="replace")
        if self.verbose:
            errors = sum(f.severity == "error" for f in self.report.findings)
            print(f"ftplan: {self.report.status}, {len(self.report.findings)} finding(s) ({errors} error(s)); "
                  f"`ftplan report {self.path}` shows them", flush=True)

    def _wrap_engine_step(self, optimizer):
        """Measure inside DeepSpeed's `engine.step()`, where the ZeRO optimizer steps: the reduced gradients are
        in place there and not yet clipped. Returns what undoes it."""
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper holds the ZeRO optimizer
        step = inner.step

        def measured_step(*args, **kwargs):
            if self._active:
                self._measure(self._args, self._state, self._scheduler)
            out = step(*args, **kwargs)
            if self._active:
                self._after_update()
            return out

        inner.step = measured_step
        return lambda: inner.__dict__.pop("step", None)

    def _detach(self, args) -> None:
        self._hook.remove()
        if self._restore_step is not None:
            self._restore_step()
        args.max_grad_norm = self._clip or 0.0
        self._active = False

    def _final_report(self) -> DiagnosticReport:
        _header, records = read_steps(self.path)
        settings = self._settings
        if self._longest:  # the plain Trainer has no cutoff setting: the longest sequence it fed
            settings = settings.model_copy(update={"plan": settings.plan.model_copy(update={"seq_len": self._longest})})
        report = DiagnosticReport(status="completed", settings=settings, environment=self._environment,
                                  records=records)
        finding = None
        if self._stopped is not None:
            report.message, finding = self._stopped
            report.status = "non_finite" if any(r.stops_run for r in records) else "interrupted"
            if finding is not None:  # before conclude, so the advice sees it
                report.findings.append(finding)
        conclude(report, self._world)
        if finding is not None and sum(f.code == finding.code for f in report.findings) > 1:
            report.findings.remove(finding)  # the whole run's rules say it too: theirs is the report's
        return report

    # -- every micro-batch
    def _on_forward(self, module, args, kwargs, output):
        import torch

        if not (self._capture and module.training and torch.is_grad_enabled()):
            return
        loss, per_step = _loss_of(output, kwargs)
        if loss is None:
            self._micros.append(_Micro(kwargs, None, False, 0, None))
            return
        ids = kwargs.get("input_ids")
        mask = kwargs.get("attention_mask")
        tokens = mask.sum() if mask is not None else (ids.numel() if ids is not None else 0)
        if ids is not None:
            self._longest = max(self._longest, ids.shape[-1])
        labels = kwargs.get("labels")
        # the Trainer's causal-LM loss predicts token t+1 from t: the first position of each row has no label
        count = (labels[..., 1:] != -100).sum() if labels is not None and getattr(output, "loss", None) is not None \
            else None
        self._micros.append(_Micro(kwargs, loss.detach(), per_step, tokens, count))

    def on_step_begin(self, args, state, control, **kwargs):
        if not self._active:
            return
        self._micros, self._record, self._capture = [], None, True
        self._started = time.perf_counter()
        self._args, self._state, self._scheduler = args, state, kwargs.get("lr_scheduler")
        args.max_grad_norm = 0.0  # the Trainer measures and unscales only; on_pre_optimizer_step clips

    def on_substep_end(self, args, state, control, **kwargs):
        if self._active and len(self._micros) == 1 and self._micros[0].loss is not None:
            self._monitor.after_first_micro_batch()  # rescaled to a micro-batch mean once the step's are known

    # -- every optimizer step
    def on_pre_optimizer_step(self, args, state, control, lr_scheduler=None, **kwargs):
        if self._active and not self._deepspeed:  # under DeepSpeed the engine's step has measured already
            self._measure(args, state, lr_scheduler)

    def _measure(self, args, state, lr_scheduler) -> None:
        self._capture = False
        parts = self._monitor.after_backward(self._clip, zeros=self._scaler is not None)
        micros = self._micros
        if not micros or any(m.loss is None for m in micros):
            self._detach(args)  # clipped above, so this step is as the user asked
            self._say("the model returned no loss (computed outside it: a compute_loss_func or label smoothing); "
                      "monitoring stops")
            return
        loss, tokens = self._step_loss(args, micros)
        extra = [loss, tokens] + ([scale_tensor(self._scaler)] if self._scaler is not None else [])
        stats = self._monitor.finish(parts, extra=extra)
        lr = lr_scheduler.get_last_lr()[0] if lr_scheduler is not None else args.learning_rate
        record = step_record(state.global_step + 1, stats, lr=lr, max_grad_norm=self._clip,
                             scaled=self._scaler is not None)
        if record.micro_grad_sq is not None:
            factor = self._micro_factor(args, micros)
            record.micro_grad_sq = record.micro_grad_sq * factor * factor if factor else None
        if record.stops_run and self._sharded:
            record.origin = not_located(record, f"not replayed: {self._monitor.access.name} shards the model "
                                                "across processes")
        elif record.stops_run:
            self._model.zero_grad(set_to_none=True)  # the replay's gradients must not mix with the step's
            record.origin = self._replay(record, micros)
            self._model.zero_grad(set_to_none=True)  # a step with no gradients leaves the weights as they were
        elif (record.step - 1) % self._settings.update_ratio_every == 0:
            self._monitor.before_step(count_unchanged=self._settings.plan.precision == "bf16")
        self._record = record

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self._active and not self._deepspeed:
            self._after_update()

    def _after_update(self) -> None:
        if self._record is not None and not self._record.stops_run:
            update = self._monitor.after_step()
            if update is not None:
                self._record.update_ratio, self._record.unchanged_fraction = (update.update_ratio,
                                                                              update.unchanged_fraction)

    def on_step_end(self, args, state, control, **kwargs):
        if not self._active:
            return
        args.max_grad_norm = self._clip or 0.0  # saving and logging, next, see the user's value
        record = self._record
        if record is None:
            return
        record.step_time = time.perf_counter() - self._started
        record.tokens_per_s = record.tokens / record.step_time if record.step_time > 0 else 0.0
        record.memory = step_memory(str(args.device))
        if self._world > 1 and _distributed():  # every rank's memory, gathered for rank 0's log
            record.memory = per_rank(record.memory, self._world)
        if self._log is not None:
            self._log.step(record)
        self._window.append(record)
        self._losses.append(record.loss)
        stop = self._check(record)
        if stop is not None:
            self._stopped = stop
            self._say(stop[0])
            control.should_training_stop = True

    # -- helpers
    def _step_loss(self, args, micros: list[_Micro]):
        """The step's loss as the diagnose loop takes it (the mean per-token loss of the global batch) and its
        token count; under DDP reduced over the ranks, in the one sync the monitor makes anyway."""
        import torch

        losses = torch.stack([m.loss.float() for m in micros])
        per_step = all(m.per_step for m in micros)
        loss = losses.sum() if per_step else losses.mean()
        tokens = sum(torch.as_tensor(m.tokens, device=loss.device).float() for m in micros)
        if self._world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            both = torch.stack([loss, tokens])
            torch.distributed.all_reduce(both)
            # with num_items_in_batch counted over every rank each rank's loss is its share: the sum is the mean
            shared = per_step and getattr(args, "average_tokens_across_devices", False)
            loss, tokens = (both[0] if shared else both[0] / self._world), both[1]
        return loss, tokens

    def _micro_factor(self, args, micros: list[_Micro]) -> float | None:
        """What turns the first micro-batch's gradient, as backward made it, into that micro-batch's mean
        gradient (the noise-scale estimate needs it); None where the loss's weighting is not known."""
        first = micros[0]
        factor: float | None
        if first.per_step:  # loss = nll_sum / num_items: the gradient is the mean's times labels / num_items
            total, own = first.kwargs.get("num_items_in_batch"), first.labels
            if total is None or own is None or float(own) == 0:
                return None
            factor = float(total) / float(own)
            if getattr(args, "average_tokens_across_devices", False):
                factor /= self._world  # the Trainer multiplies the loss by the number of processes
        elif first.labels is not None:  # a per-micro-batch mean, divided by the accumulation steps
            factor = float(len(micros))
        else:
            return None
        if self._scaler is not None:
            factor /= float(self._scaler.get_scale())
        return factor

    def _replay(self, record: StepRecord, micros: list[_Micro]):
        scaler = self._scaler

        def forward(index: int):
            loss, _ = _loss_of(self._model(**micros[index].kwargs), micros[index].kwargs)
            return loss

        def backward(loss) -> None:
            (scaler.scale(loss) if scaler is not None else loss).backward()

        return locate(self._model, forward, backward, range(len(micros)), record)

    def _check(self, record: StepRecord) -> tuple[str, Finding | None] | None:
        """Run the rules over the window, print what is new; the reason to stop, if the policy says so."""
        config = getattr(self._model, "config", None)
        findings = analyze(list(self._window), self._settings, vocab_size=getattr(config, "vocab_size", None))
        # the rules read patterns over steps: before min_history steps only an error is worth a line
        settled = len(self._window) >= self.policy.min_history
        for f in findings:
            if f.code not in self._seen and (settled or f.severity == "error"):
                self._seen.add(f.code)
                if self._log is not None:
                    self._log.finding(record.step, f)
                self._say(f"step {record.step}: {f.severity} {f.message}" + (f": {f.evidence}" if f.evidence
                                                                              else ""))
        if record.stops_run:
            return stop_message(record), None
        errors = [f for f in findings if f.severity == "error"]
        if errors and self.policy.on_error:
            return f"stopped at step {record.step}: {errors[0].message} (StopPolicy on_error)", errors[0]
        spike = sustained_spike(list(self._losses), self.policy)
        if spike is None:
            return None
        p = self.policy
        finding = Finding(
            code="sustained_loss_spike", severity="error", message="Sustained loss spike",
            evidence=f"the loss stayed above {p.spike_factor:g}x the median of the steps before "
                     f"({spike['baseline']:.4g}) for {p.spike_patience} steps, up to step {record.step} "
                     f"({', '.join(f'{x:.4g}' for x in spike['losses'])})",
            data={"step": record.step, **spike}, field="learning_rate",
            fix="resume from the last checkpoint before the spike with a lower learning_rate, more warmup or "
                "tighter max_grad_norm, and skip the batches that started it")
        return f"stopped at step {record.step}: sustained loss spike (StopPolicy spike_patience)", finding

    def _say(self, text: str) -> None:
        if self._main and self.verbose:
            print(f"ftplan: {text}", flush=True)


def _distributed() -> bool:
    import torch

    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _name(tokenizer) -> str | None:
    if tokenizer is None:
        return None
    return getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__


def _examples(loader) -> int | None:
    try:
        return len(loader.dataset)
    except (AttributeError, TypeError):
        return None
