"""The instrumented training loop behind `ftplan diagnose`.

A few dozen real optimizer steps of the user's model and data, set up as
LLaMA-Factory would (diagnostics.models): AdamW or bitsandbytes 8-bit/paged,
warmup + linear/cosine schedule, gradient accumulation, clipping, bf16/fp16
autocast with a GradScaler for fp16. `accelerate` places the model and, under
`accelerate launch`, wraps it for data parallelism; each process reads its own
slice of every global batch, so N processes see what one process sees with N
times the micro-batch.

With `--stage dpo` or `orpo` the step minimises the preference loss on pairs instead
(diagnostics.objectives: the loss, the DPO reference; diagnostics.preference: the data),
with dropout off as TRL and LLaMA-Factory run it, and records margins, rewards and
accuracy beside the gradient statistics.

Before loading anything the planner is asked whether the run fits the device's
free memory; if not, the run stops with the planner's suggestions instead of an
out-of-memory crash.
"""

from __future__ import annotations

import contextlib
import math
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from diagnostics import lr_find
from diagnostics.data import Batches, build_examples, load_records, load_tokenizer, sample_path
from diagnostics.data_rules import example_stats
from diagnostics.measure import make_optimizer
from diagnostics.models import build_model, check_buildable, torch_dtype
from diagnostics.monitor import GradMonitor, StepStats
from diagnostics.objectives import adapter_off, check_stage, frozen_copy, make_objective, precomputed
from diagnostics.origin import locate, not_located
from diagnostics.preference import PairBatches, build_pairs
from diagnostics.report import (
    DataSummary,
    DiagnoseSettings,
    DiagnosticReport,
    MemoryComparison,
    NonFiniteOrigin,
    PreferenceRecord,
    StepRecord,
)
from diagnostics.rules import conclude
from diagnostics.sharded import detect, fsdp1, per_rank
from diagnostics.spikes import suspect
from planner.errors import EnvironmentMissing, FtplanError
from planner.findings import Finding
from planner.methods import layout
from planner.params import count_params
from planner.service import plan_run
from planner.spec import resolve_model, spec_from_config
from planner.target import GpuTarget, Machine, with_calibration
from planner.units import fmt_gib

OnStep = Callable[[StepRecord], None]


def resolve_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise EnvironmentMissing(f"--device {requested}: no CUDA GPU is visible to PyTorch")
    return requested


def _has_weights(directory: Path | None) -> bool:
    if directory is None:
        return False
    return any(directory.glob("*.safetensors")) or any(directory.glob("pytorch_model*.bin"))


def _target(device: str, free: int | None, reserved: int) -> Machine:
    """The device as the planner's target: its free memory less what the run keeps besides the plan
    (`reserved`), with this GPU's stored CUDA-context calibration."""
    kind = "cuda" if device.startswith("cuda") else "cpu"
    if free is None:
        return Machine(device=kind)
    name = device
    if kind == "cuda":
        import torch

        name = torch.cuda.get_device_name(torch.device(device))
    target = GpuTarget(name=f"{name} ({device})", capacity=max(0, free - reserved), source="measured",
                       device_name=name, device=kind)
    return with_calibration(target) if kind == "cuda" else target


def available_memory(device: str) -> int | None:
    """Free memory the run may use: CUDA's free bytes, or MemAvailable on the host for CPU runs."""
    if device.startswith("cuda"):
        import torch

        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _rss() -> int | None:
    try:
        import resource

        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * resource.getpagesize()
    except (OSError, ValueError, ImportError):
        return None


def _environment(device: str, settings: DiagnoseSettings, random_init: bool, tokenizer, n_examples: int,
                 world: int) -> dict:
    import torch
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "device": device, "world_size": world, "random_init": random_init, "tokenizer": tokenizer.name,
           "data": settings.data or str(default_data(settings)), "examples": n_examples}
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
        major, _minor = torch.cuda.get_device_capability(torch.device(device))
        env["bf16_supported"] = major >= 8
    return env



def default_data(settings: DiagnoseSettings) -> Path:
    return sample_path("preference" if settings.preference else "alpaca")


def run(settings: DiagnoseSettings, *, on_step: OnStep | None = None,
        prepare_model: Callable | None = None, monitor_class: type = GradMonitor) -> DiagnosticReport:
    """Run the diagnostics; never raises for training failures (they become the report's status).

    `prepare_model` sees the built model before training (tests inject gradient hooks there);
    `monitor_class=PlainMonitor` runs the same loop uninstrumented, for the overhead benchmark.
    """
    import torch

    device = resolve_device(settings.device)
    plan = settings.plan
    check_stage(plan.stage)
    check_buildable(plan)  # before the plan, the data and the model load
    source = resolve_model(settings.model)
    config = dict(source.config)
    random_init = not _has_weights(source.directory)
    if random_init and settings.init_std is not None:
        config["initializer_range"] = settings.init_std
    spec = spec_from_config(config, source=source.source, name=source.name)
    if spec.learned_positions and plan.seq_len > spec.learned_positions:
        # a learned position table (GPT-2's wpe) has one row per position: a longer sequence indexes past it and
        # the embedding lookup fails mid-step, where rotary models merely extrapolate (the planner's warning)
        raise FtplanError(f"{plan.seq_len} is longer than the model's {spec.learned_positions} learned positions "
                          f"(n_positions): set {{seq_len}} to {spec.learned_positions} or less", field="seq_len")
    # the report says where the run ran ("cpu", "cuda:0"), not what was asked ("auto")
    report = DiagnosticReport(status="completed", settings=settings.model_copy(update={"device": device}))

    # 1. does it fit? The monitor's copy of the trainable weights (for update ratios) counts too.
    train = layout(spec, count_params(spec), plan)
    snapshot = sum(g.nbytes for g in train.groups if g.trainable)
    free = available_memory(device)
    planned = plan_run(spec, plan, _target(device, free, snapshot))
    estimate = planned.memory
    needed = estimate.total + snapshot
    if planned.fit is not None and not planned.fit.fits:
        ideas = planned.suggestions[:4]
        report.status = "does_not_fit"
        report.message = (f"the run needs about {fmt_gib(needed)} (with the monitor's weight copy) but {device} "
                          f"has {fmt_gib(free)} free")
        report.findings.append(Finding(
            code="does_not_fit", severity="error", message="The run does not fit in memory",
            evidence=report.message, data={"estimate": needed, "free": free},
            fix="; ".join(f"{s.title} ({s.how}) -> {fmt_gib(s.new_total)}" for s in ideas)
            or "use a smaller model or a larger device",
            change=next((s for s in ideas if s.fits), None)))
        return report

    from accelerate import Accelerator

    accelerator = Accelerator(cpu=device == "cpu", mixed_precision="no")
    world = accelerator.num_processes
    if world > 1:
        device = str(accelerator.device)
        report.settings.device = device
    tokenizer = load_tokenizer(source.directory if not random_init else None, spec.vocab_size)
    records = load_records(settings.data or default_data(settings))
    build = build_pairs if settings.preference else build_examples
    examples = build(records, tokenizer, plan.seq_len, source=settings.data or "sample data")
    report.data = DataSummary(records=len(records), examples=len(examples), seq_len=plan.seq_len,
                              dropped=examples.dropped, needed_len=examples.needed_len,
                              unanswered=examples.unanswered,
                              **({} if settings.preference else example_stats(examples)))
    report.environment = _environment(device, settings, random_init, tokenizer, len(examples), world)
    # the first loss is read against ln(vocab), the loss of uniform predictions (a classifier head has none)
    report.environment["vocab_size"] = None if spec.num_labels else spec.vocab_size
    batches = (PairBatches if settings.preference else Batches)(
        examples, plan.batch_size, tokenizer.pad_id, settings.seed, accelerator.process_index, world)

    model = build_model(config, plan, weights=source.directory if not random_init else None, device=device,
                        seed=settings.seed)
    # what the run trains, counted on the built model: the planner's layout(...).trainable_params, checked
    report.environment["trainable_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    device_type = device.split(":")[0]
    autocast = (lambda: torch.autocast(device_type, dtype=torch_dtype(plan.compute_dtype))) if plan.mixed \
        else contextlib.nullcontext
    objective = _objective(model, settings, batches, accelerator.device, autocast)
    if prepare_model is not None:
        prepare_model(model)
    optimizer = make_optimizer(model.parameters(), plan, lr_find.START if settings.lr_find else settings.learning_rate,
                               settings.weight_decay)
    from transformers import get_scheduler

    scheduler = get_scheduler({"constant": "constant_with_warmup"}.get(settings.lr_scheduler, settings.lr_scheduler),
                              optimizer, num_warmup_steps=settings.warmup_steps,
                              num_training_steps=settings.steps) if not settings.lr_find \
        else lr_find.ramp(optimizer, settings.steps)
    if str(accelerator.distributed_type).endswith("DEEPSPEED"):
        # accelerate's backward runs engine.step(), which consumes the gradients before the monitor could read them
        raise EnvironmentMissing("ftplan diagnose under accelerate's DeepSpeed launcher: not supported (the engine "
                                 "steps inside backward); launch without --use_deepspeed, or add "
                                 "diagnostics.callback.FtplanMonitor to a Trainer run, which reads ZeRO's gradients")
    model, optimizer = accelerator.prepare(model, optimizer)
    sharded = str(accelerator.distributed_type).endswith("FSDP")
    # FSDP leaves each rank a shard of every gradient (FSDP2: DTensors): the squared norms are summed across ranks
    access = None
    if sharded:
        def reduce(t):
            return accelerator.reduce(t, reduction="sum")

        access = detect(accelerator.unwrap_model(model), reduce=reduce)
        access = access if access.reduce_grads is not None else fsdp1(reduce)
    monitor = monitor_class(accelerator.unwrap_model(model), access=access)
    scaler = torch.amp.GradScaler(device_type) if plan.precision == "fp16-mixed" and settings.loss_scaling else None
    track_zeros = plan.precision == "fp16-mixed"
    on_cuda = device_type == "cuda"
    nvml_reader = None
    if on_cuda:
        from diagnostics.nvml import ProcessMemoryReader, cuda_uuid

        torch.cuda.reset_peak_memory_stats(torch.device(device))
        nvml_reader = ProcessMemoryReader(cuda_uuid(torch.device(device).index or 0))

    def recheck(record: StepRecord) -> float | None:
        # DPO's loss is read by the preference rules, not the spike rule; a sharded model is not replayed
        if record.step < 2 or settings.stage == "dpo" or sharded \
                or not suspect([r.loss for r in report.records], record.loss):
            return None
        return _recheck(record.step, model, objective, batches, accelerator, autocast, plan.grad_accum, world)

    try:
        for step in range(1, settings.steps + 1):
            record = _step(step, model, objective, optimizer, scheduler, scaler, monitor, batches, accelerator,
                           autocast, settings, track_zeros, world, recheck=recheck)
            if record.stops_run:  # before the record goes out, so the child's event stream carries the origin
                record.origin = _origin(record, model, objective, batches, accelerator, autocast, scaler, plan,
                                        sharded)
            record.memory = step_memory(device, nvml_reader)
            if world > 1:  # every rank's memory in rank 0's report (a sharded run's ranks differ)
                record.memory = per_rank(record.memory, world)
            report.records.append(record)
            if on_step is not None:
                on_step(record)
            if record.stops_run:
                report.status = "non_finite"
                report.message = stop_message(record)
                break
            if settings.lr_find and lr_find.diverged(report.records):
                report.message = f"LR range test: the loss diverged at step {step}, learning rate {record.lr:.2g}"
                break
    except KeyboardInterrupt:
        report.status = "interrupted"
        report.message = f"interrupted after {len(report.records)} step(s); the report covers those"
    except torch.cuda.OutOfMemoryError as exc:
        report.status = "oom"
        report.message = str(exc).splitlines()[0]
        ideas = plan_run(spec, plan, _target(device, available_memory(device) or estimate.total, 0)).suggestions[:4]
        report.findings.append(Finding(
            code="out_of_memory", severity="error", message="Out of GPU memory",
            evidence=f"CUDA ran out of memory at step {len(report.records) + 1} (the planner expected "
                     f"{fmt_gib(estimate.total)})",
            fix="; ".join(f"{s.title} ({s.how})" for s in ideas) or "reduce the micro-batch or sequence length",
            change=next((s for s in ideas if s.fits), None)))
    # the monitor's weight copy sits beside the optimizer step: compare like with like
    report.memory = MemoryComparison(estimate_total=estimate.total + snapshot,
                                     estimate_allocated=estimate.peak_allocated + snapshot)
    if on_cuda and report.records:
        peak = max(r.memory.get("max_allocated") or 0 for r in report.records)
        report.memory.measured_allocated = peak
        report.memory.measured_reserved = max(r.memory.get("max_reserved") or 0 for r in report.records)
        report.memory.error = (report.memory.estimate_allocated - peak) / peak if peak else None
        seen = [r.memory["process"] for r in report.records if r.memory.get("process") is not None]
        report.memory.measured_process = max(seen) if seen else None
    if nvml_reader is not None:
        nvml_reader.close()
    if world == 1:
        _reset_accelerate()
    return conclude(report, world)


def step_record(step: int, stats: StepStats, *, lr: float, max_grad_norm: float | None, scaled: bool,
                names: Sequence[str] = ()) -> StepRecord:
    """One step's record from the monitor's one sync: `stats.extra` holds the loss, the token count, the loss
    scale when a GradScaler `scaled` the step, then the objective's metrics `names`. Shared by this loop and the
    Trainer callback (diagnostics.callback)."""
    loss_value, token_count = stats.extra[0], int(stats.extra[1])
    scale = stats.extra[2] if scaled else None
    values = stats.extra[3 if scaled else 2:]
    preference = PreferenceRecord(**dict(zip(names, values, strict=True))) if names else None
    return StepRecord(
        step=step, loss=loss_value, lr=lr, grad_norm=stats.total_norm,
        clipped=bool(max_grad_norm) and stats.total_norm > max_grad_norm,
        layer_norms=stats.layer_norms, kind_norms=stats.kind_norms, zero_fraction=stats.zero_fraction,
        zero_params=stats.zero_params, nonfinite_param=stats.nonfinite_param, micro_grad_sq=stats.micro_sq,
        loss_scale=scale, tokens=token_count, preference=preference,
        # GradScaler.step skips exactly when an unscaled gradient is non-finite, which is when the fp64 norm of
        # the same gradients is
        skipped=scaled and math.isfinite(loss_value) and not math.isfinite(stats.total_norm),
    )


def stop_message(record: StepRecord) -> str:
    """The report's message for the step that stopped the run (its origin set)."""
    origin = record.origin
    return (f"stopped at step {record.step}: non-finite " + ("loss" if origin.phase == "forward" else "gradients")
            + (f", first in {origin.module}" if origin.module else ""))


def step_memory(device: str, nvml_reader=None) -> dict[str, int | None]:
    """The step's memory: CUDA's allocator peaks (and NVML's view of the process, given a reader), or the
    host's resident set on CPU."""
    if not device.startswith("cuda"):
        return {"rss": _rss()}
    import torch

    dev = torch.device(device)
    return {"max_allocated": torch.cuda.max_memory_allocated(dev), "max_reserved": torch.cuda.max_memory_reserved(dev),
            "process": nvml_reader.read() if nvml_reader is not None else None}


def _objective(model, settings: DiagnoseSettings, batches: Batches, device, autocast):
    """The step's loss; for DPO with its reference, built now, from the untrained policy."""
    plan = settings.plan
    if settings.preference:
        # TRL's DPOConfig.disable_dropout and LLaMA-Factory's CustomDPOTrainer both default to it
        # (trl.trainer.utils.disable_dropout_in_model); it also makes the first step's policy equal its reference
        import torch

        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    reference = None
    if plan.stage == "dpo":
        # any peft model is its own reference with the adapter off (TRL, LLaMA-Factory); Houlsby adapters are not
        # peft's and cannot be switched off
        reference = (adapter_off(model) if plan.peft and plan.method != "adapter"
                     else frozen_copy(model, torch_dtype(plan.compute_dtype)))
        if plan.precompute_ref_log_probs:
            count = settings.steps * plan.grad_accum
            reference = precomputed(reference, lambda i: _on(batches.micro_batch(i), device), count, autocast)
    return make_objective(plan.stage, settings.beta, reference)


def _on(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def _step(step: int, model, objective, optimizer, scheduler, scaler, monitor: GradMonitor, batches: Batches,
          accelerator, autocast, settings: DiagnoseSettings, track_zeros: bool, world: int,
          recheck: Callable[[StepRecord], float | None] | None = None) -> StepRecord:
    """One optimizer step: accumulate, unscale, measure (pre-clip), clip, sync once, step.

    The sync comes before the optimizer step: a step that stops the run is not taken, so the weights stay as
    they were when it went non-finite, for the replay that finds where (diagnostics.origin)."""
    import torch

    plan = settings.plan
    started = time.perf_counter()
    accum = plan.grad_accum
    loss_sum = torch.zeros((), device=accelerator.device)
    tokens = torch.zeros((), device=accelerator.device)
    metrics = torch.zeros(len(objective.names), device=accelerator.device)
    for micro in range(accum):
        index = (step - 1) * accum + micro
        batch = _on(batches.micro_batch(index), accelerator.device)
        sync = contextlib.nullcontext() if micro == accum - 1 else accelerator.no_sync(model)
        with sync:
            with autocast():
                loss, values = objective(model, batch, index)
                loss = loss / accum
            accelerator.backward(scaler.scale(loss) if scaler else loss)
        loss_sum += loss.detach().float()
        if values is not None:
            metrics += values.float() / accum  # each micro-batch holds the same number of pairs
        tokens += batch["attention_mask"].sum()
        if micro == 0 and accum > 1:  # the loss was divided by accum (and multiplied by the fp16 scale)
            factor = accum if scaler is None else accum / scale_tensor(scaler)
            monitor.after_first_micro_batch(scale=factor)
    if scaler is not None:
        scaler.unscale_(optimizer)
    parts = monitor.after_backward(settings.max_grad_norm, zeros=track_zeros)
    lr = scheduler.get_last_lr()[0]
    if world > 1:  # the loss and token count of the global batch, not of this rank's slice
        loss_sum = accelerator.reduce(loss_sum, reduction="mean")
        tokens = accelerator.reduce(tokens, reduction="sum")
        if len(objective.names):
            metrics = accelerator.reduce(metrics, reduction="mean")
    # the scale this step's backward ran at, read before update() changes it
    extra = [loss_sum, tokens] + ([scale_tensor(scaler)] if scaler is not None else []) + list(metrics.unbind())
    stats = monitor.finish(parts, extra=extra)
    record = step_record(step, stats, lr=lr, max_grad_norm=settings.max_grad_norm, scaled=scaler is not None,
                         names=objective.names)
    if not record.stops_run:
        if recheck is not None:  # at the weights that made this step's loss, so before its update
            record.recheck_loss = recheck(record)
        if (step - 1) % settings.update_ratio_every == 0:
            monitor.before_step(count_unchanged=plan.precision == "bf16")
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        update = monitor.after_step()
        if update is not None:
            record.update_ratio, record.unchanged_fraction = update.update_ratio, update.unchanged_fraction
        if not record.skipped:  # as the HF Trainer's scheduler (accelerate's AcceleratedScheduler) holds still
            scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    record.step_time = time.perf_counter() - started
    record.tokens_per_s = record.tokens / record.step_time if record.step_time > 0 else 0.0
    return record


def _origin(record: StepRecord, model, objective, batches: Batches, accelerator, autocast, scaler, plan,
            sharded: bool) -> NonFiniteOrigin:
    """Replay the failed step's micro-batches as `_step` ran them, on the unwrapped model (DDP's wrapper would
    all-reduce, and ranks replay different numbers of micro-batches)."""
    if sharded:
        return not_located(record, "not replayed: FSDP shards the model across processes")
    net = accelerator.unwrap_model(model)

    def forward(index: int):
        with autocast():
            return objective(net, _on(batches.micro_batch(index), accelerator.device), index)[0] / plan.grad_accum

    def backward(loss) -> None:
        (scaler.scale(loss) if scaler is not None else loss).backward()

    accum = plan.grad_accum
    return locate(net, forward, backward, range((record.step - 1) * accum, record.step * accum), record)


def _recheck(step: int, model, objective, batches: Batches, accelerator, autocast, accum: int, world: int) -> float:
    """The previous step's loss again, at this step's weights (diagnostics.spikes: hard batch or instability)."""
    import torch

    net = accelerator.unwrap_model(model)
    total = torch.zeros((), device=accelerator.device)
    with torch.no_grad():
        for index in range((step - 2) * accum, (step - 1) * accum):
            with autocast():
                total += objective(net, _on(batches.micro_batch(index), accelerator.device), index)[0].float() / accum
    if world > 1:
        total = accelerator.reduce(total, reduction="mean")
    return total.item()


def scale_tensor(scaler):
    """The GradScaler's scale as a device tensor, read without a host sync where torch allows it."""
    getter = getattr(scaler, "_get_scale_async", None)
    return getter() if getter is not None else scaler.get_scale()


def _reset_accelerate() -> None:
    """accelerate keeps process-wide state; a second run in the same process must start clean."""
    try:
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    except (ImportError, AttributeError):
        pass
