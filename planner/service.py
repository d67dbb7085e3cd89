"""The one planning service every front end calls (CLI, TUI, preflight, diagnose's fit check).

`plan_run(spec, plan, target)` takes a resolved machine (`planner.target.resolve_target`:
catalog GPU, memory size, or the measured GPUs with their stored calibration) and returns the
`Estimate`: memory by phase, fit and the largest batch, what to change, time, and every
assumption and warning. A target that decides the GPU count (`--gpu auto` with no count)
sets the plan's `gpus` here, so no front end plans over a different count.
"""

from __future__ import annotations

from planner import liger, parallel
from planner.fields import Vocabulary, word
from planner.findings import Change, Finding
from planner.fit import batch_step, fit_report, prompt_groups_problem
from planner.memory import Breakdown, attention_run, estimate_memory, tokens_assumption
from planner.methods import TrainingLayout, layout
from planner.optimizers import optimizer_assumptions
from planner.params import count_params
from planner.plan import Plan
from planner.result import Estimate, ModelSummary, ParamSummary
from planner.spec import ModelSpec
from planner.stages import stage_assumptions, stage_run, stage_spec, stage_warnings
from planner.target import GpuTarget, Machine
from planner.units import fmt_gib


def plan_run(spec: ModelSpec, plan: Plan | dict, target: Machine | None = None, *, search_batch: bool = False,
             search_seq: bool = False, mfu: float | None = None, samples: int | None = None,
             epochs: float = 1.0, vocabulary: Vocabulary = "cli", advise: bool = True) -> Estimate:
    """Plan one run on one machine. `plan` may be a `Plan` or its fields (validated here); the texts
    (assumptions, warnings, suggestions) name settings in `vocabulary`. `advise=False` leaves the
    suggestions out (most of a plan that does not fit): the TUI draws the verdict first and asks again
    for them off its UI thread."""
    plan = plan if isinstance(plan, Plan) else Plan.build(**plan)
    machine = target or Machine()
    gpu_target = machine if isinstance(machine, GpuTarget) else None
    if gpu_target is not None and gpu_target.gpus and gpu_target.gpus != plan.gpus:
        plan = plan.with_(gpus=gpu_target.gpus)
    spec = stage_spec(spec, plan)
    asked = plan.attention
    plan = attention_run(spec, plan)
    counts = count_params(spec)
    train = layout(spec, counts, plan)
    memory = estimate_memory(spec, plan, counts, train, machine)
    fit = suggestions = time = None
    if gpu_target is not None:
        fit = fit_report(spec, plan, gpu_target, memory.total, search_batch=search_batch, search_seq=search_seq)
        if not fit.fits and advise:
            from planner.advice import suggest  # only a plan that does not fit: not on every start-up

            suggestions = suggest(spec, plan, gpu_target.capacity, memory.total, machine=machine,
                                  vocabulary=vocabulary)
        if gpu_target.gpu is not None:
            from planner.flops import estimate_time  # only a catalog GPU has the peak FLOP/s it needs

            time = estimate_time(spec, counts, train, plan, gpu_target.gpu, mfu=mfu, samples=samples,
                                 epochs=epochs)
    return Estimate(
        model=ModelSummary.of(spec), plan=plan, machine=machine.facts(), params=ParamSummary.of(counts, train),
        memory=memory, fit=fit, suggestions=suggestions or [], time=time,
        assumptions=[word(a, vocabulary)
                     for a in assumptions(plan, machine, train, memory, settable=vocabulary in ("cli", "tui"))
                     + liger.assumptions(spec.model_type, plan.liger_kernels, spec.is_moe)
                     + ([f"{spec.model_type} has no SDPA attention in transformers: it runs eager attention "
                         "(s x s scores per head), as transformers falls back to; flash-attention 2 avoids them"]
                        if plan.attention != asked else [])],
        warnings=[w.model_copy(update={"message": word(w.message, vocabulary)})
                  for w in warnings(spec, plan, gpu_target)],
    )


def assumptions(plan: Plan, machine: Machine, train: TrainingLayout, memory: Breakdown,
                settable: bool = True) -> list[str]:
    """What every number rests on; `settable`: the asker can set the overhead (the CLI can, a config cannot)."""
    precision = {
        "fp32": "fp32: weights, gradients, optimizer state and activations in fp32 (matmuls may use TF32)",
        "bf16": "bf16 (pure): weights, gradients and Adam state in bf16, no fp32 master copy",
        "fp16": "fp16 (pure): weights, gradients and Adam state in fp16, no fp32 master copy and no loss scaling",
        "bf16-mixed": "bf16-mixed: trainable weights in fp32 under torch.autocast(bf16); frozen weights in bf16",
        "fp16-mixed": "fp16-mixed: trainable weights in fp32 under torch.autocast(fp16) with a GradScaler",
    }[plan.precision]
    if plan.weights_dtype:
        precision += (f"; the frozen base in {plan.weights_dtype}"
                      + (" (QLoRA dequantizes and computes in it)" if plan.method == "qlora" else ""))
    if plan.mixed and plan.zero:
        precision = (f"{plan.precision} under ZeRO: 16-bit weights and gradients, fp32 master weights and "
                     "Adam state in the optimizer (Rajbhandari et al. 2020)")
    kernel = {"eager": "eager attention (stores the s x s scores)",
              "sdpa": "PyTorch SDPA (flash/memory-efficient kernels: no s x s matrix)",
              "flash": "flash-attention 2 (no s x s matrix)"}[plan.attention]
    out = [
        precision, *optimizer_assumptions(plan), kernel,
        tokens_assumption(plan),
        *stage_assumptions(plan, stage_run(plan, machine.device), memory.details.reference_weights),
        f"overhead: CUDA context {fmt_gib(machine.context_bytes)} ({machine.cuda_context_source}) + allocator "
        f"fragmentation {machine.fragmentation:.0%} of the peak"
        + (" (settable with {cuda_context} / {fragmentation})" if settable else ""),
        f"peak phase: {memory.peak_phase} ({memory.peak_what})",
    ]
    if plan.gradient_checkpointing:
        out.append("gradient checkpointing as LLaMA-Factory installs it: each decoder layer with a trainable "
                   "parameter keeps only its input (reentrant); frozen layers are not checkpointed")
    if plan.grad_accum > 1:
        out.append("gradient accumulation: gradients stay allocated through every micro-batch's forward")
    if plan.gpus > 1 and plan.zero == 0:
        out.append("DDP: gradient buckets are a second copy of the gradients (gradient_as_bucket_view=False)")
    if plan.zero == 3 and plan.gpus > 1:
        out.append("ZeRO-3: one gathered layer plus one prefetched layer of 16-bit weights per GPU")
        out.append("ZeRO-3: or, when larger, the largest module (the embedding or LM head at real size) gathered "
                   "whole, with its full 16-bit gradient in backward (DeepSpeed's 4 x largest layer)")
    if plan.zero and not plan.offload_optimizer:
        out.append("ZeRO step: DeepSpeed converts each parameter group's gradient partition to the master dtype "
                   "(fp32: 4 bytes per parameter / GPUs; ZeRO-3 one sub_group_size=1e9 sub-group at a time)")
    if plan.gradient_checkpointing and plan.method == "freeze":
        out.append("freeze + gradient checkpointing as LLaMA-Factory sets it up: only trainable layers are "
                   "checkpointed; frozen layers below them keep nothing, frozen layers above keep their activations")
    if memory.cpu_offload:
        out.append(f"offloaded to host RAM: {fmt_gib(memory.cpu_offload)} per GPU (optimizer state and "
                   "master weights)")
    out += parallel.assumptions(plan, memory.host_params, memory.host_per_node)
    if plan.activation_offload != "off":
        what = ("every tensor autograd saves outside the LM head and the loss (TRL's OffloadActivations, "
                "parameters and tensors under 1 KiB kept); backward brings the last block's back"
                if plan.activation_offload == "saved" else "the checkpointed layers' inputs (Unsloth's "
                "checkpointing, transformers' checkpoint offload)")
        out.append(f"activation offloading: {what}; host RAM {fmt_gib(memory.host_activations)} per GPU, each "
                   "storage once (the streamed offloader's few in-flight copies not counted)")
    return out + train.notes


def warnings(spec: ModelSpec, plan: Plan, target: GpuTarget | None) -> list[Finding]:
    """What about this plan will not run as planned, or not as the user meant; `{field}` names settings."""
    out = [Finding(severity="warning", code="model_config", message=w) for w in spec.warnings]
    out += [Finding(severity="warning", code=code, message=message, field="stage", data={"direction": direction})
            for code, message, direction in stage_warnings(plan, target.capacity if target else None)]
    unpatched = liger.unpatched_warning(spec.model_type, plan.liger_kernels)
    if unpatched:
        out.append(Finding(severity="warning", code="liger_unpatched", field="liger_kernels", message=unpatched))
    refused = prompt_groups_problem(plan)
    if refused:
        step = batch_step(plan)
        fixed = -(-plan.batch_size // step) * step
        out.append(Finding(
            severity="error", code="prompt_groups", field="batch_size", message=refused,
            change=Change(title=f"Use a micro-batch of {fixed}", changes={"batch_size": fixed},
                          current={"batch_size": plan.batch_size}, reason="whole prompt groups")))
    gpu = target.gpu if target else None
    if gpu is not None:
        if plan.compute_dtype == "bf16" and not gpu.supports_bf16:
            # torch.cuda.is_bf16_supported() counts emulation, so the Trainer accepts bf16 there (TRL even
            # defaults to it) and the run works, with its matmuls off the tensor cores
            out.append(Finding(
                severity="warning", code="no_bf16", field="precision",
                message=f"{gpu.name} has no bf16 tensor cores (compute capability {gpu.compute_capability}): "
                        "torch emulates bf16, so the run works but its matmuls run several times slower; fp16 "
                        "with loss scaling uses the tensor cores",
                change=Change(title="Train in fp16 with loss scaling", changes={"precision": "fp16-mixed"},
                              current={"precision": plan.precision}, reason="the GPU has no bf16")))
        if plan.attention == "flash" and gpu.predates_flash_attention:
            out.append(Finding(
                severity="error", code="no_flash_attention", field="attention",
                message=f"flash-attention 2 needs compute capability >= 8.0; {gpu.name} has "
                        f"{gpu.compute_capability}: use {{attention}} sdpa",
                change=Change(title="Use SDPA attention", changes={"attention": "sdpa"},
                              current={"attention": plan.attention}, reason="flash-attention 2 needs Ampere")))
    context = spec.max_position_embeddings
    if context and plan.seq_len > context:
        out.append(Finding(
            severity="warning", code="seq_beyond_context", field="seq_len",
            message=f"{{seq_len}} {plan.seq_len:,} is longer than {spec.name}'s context ({context:,} tokens): "
                    "positions past it were never trained; set rope scaling in the config or shorten {seq_len}",
            change=Change(title=f"Shorten sequences to the context ({context:,})", changes={"seq_len": context},
                          current={"seq_len": plan.seq_len}, reason="positions past the context were never trained")))
    if plan.method == "qlora" and plan.precision == "fp16-mixed":
        out.append(Finding(severity="warning", code="qlora_fp16", field="precision",
                           message="QLoRA with fp16 compute can overflow in 4-bit dequantized matmuls; prefer bf16 "
                                   "if the GPU has it"))
    return out
