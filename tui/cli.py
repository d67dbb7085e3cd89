"""The `ftplan` command line.

`ftplan` alone opens the TUI; subcommands serve scripts. Startup matters
(`ftplan estimate` must answer in well under a second), so heavy modules are
imported inside the command that needs them, never at the top of this file.
"""

from __future__ import annotations

import argparse
import sys
from enum import IntEnum

EXIT_CODES_HELP = """exit codes:
  0  success (for estimate --gpu: the plan fits)
  1  a check failed: the plan does not fit the GPU
  2  bad input: unknown model/preset/GPU, invalid flag value, broken config file
  3  missing environment: e.g. no network to fetch a config, no GPU where one is required
"""


class ExitCode(IntEnum):
    OK = 0
    CHECK_FAILED = 1
    BAD_INPUT = 2
    ENVIRONMENT = 3


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad flags in one line, with exit code 2 (argparse's own code too)."""

    def error(self, message: str):  # pragma: no cover - exercised through main()
        self.exit(ExitCode.BAD_INPUT, f"ftplan: error: {message} (see `{self.prog} --help`)\n")


def _number(flag: str, convert, accept, rule: str):
    """An argparse type that names the flag and the rule in its one-line error."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} takes {rule}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"{flag} takes {rule}, got {value}")
        return value

    return parse


def _positive_int(flag: str):
    return _number(flag, int, lambda v: v >= 1, "a whole number of at least 1")


def _fraction(flag: str):
    return _number(flag, float, lambda v: 0 <= v < 1, "a number in [0, 1)")


def _add_plan_flags(p: argparse.ArgumentParser) -> None:
    from planner.plan import ATTENTION_KERNELS, METHODS, OPTIMIZERS, PRECISIONS

    p.add_argument("--model", "-m", required=True,
                   help="preset or size alias (`ftplan models`), hub id (owner/name), or a local dir/config.json")
    p.add_argument("--method", choices=METHODS, default="full", help="fine-tuning method (default: full)")
    p.add_argument("--precision", choices=PRECISIONS, default="bf16-mixed",
                   help="bf16 = pure bf16 weights; *-mixed = fp32 weights + autocast (default: bf16-mixed)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw", help="(default: adamw, torch foreach)")
    p.add_argument("--batch-size", "-b", type=_positive_int("--batch-size"), default=1,
                   help="micro-batch per GPU (default: 1)")
    p.add_argument("--seq-len", "-s", type=_positive_int("--seq-len"), default=1024,
                   help="tokens per sequence, i.e. cutoff_len (default: 1024)")
    p.add_argument("--grad-accum", type=_positive_int("--grad-accum"), default=1,
                   help="gradient accumulation steps (default: 1)")
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=False,
                   help="recompute activations in backward (default: off)")
    p.add_argument("--attention", choices=ATTENTION_KERNELS, default="sdpa", help="attention kernel (default: sdpa)")
    p.add_argument("--lora-rank", type=_positive_int("--lora-rank"), default=8, help="LoRA rank (default: 8)")
    p.add_argument("--lora-target", default="all",
                   help="all, attention, or comma-separated module names as LLaMA-Factory's lora_target")
    p.add_argument("--lora-dropout", type=_fraction("--lora-dropout"), default=0.0)
    p.add_argument("--freeze-trainable-layers", type=int, default=2,
                   help="freeze method: train the last N layers (negative: the first N) (default: 2)")
    p.add_argument("--quant-bits", type=int, choices=(4, 8), default=None,
                   help="quantize the frozen base to 4 or 8 bits (QLoRA; --method qlora defaults to 4)")
    p.add_argument("--no-double-quant", dest="double_quant", action="store_false",
                   help="QLoRA without double quantization of the constants")
    p.add_argument("--gpus", type=_positive_int("--gpus"), default=1, help="data-parallel GPUs (default: 1)")
    p.add_argument("--zero", type=int, choices=(0, 1, 2, 3), default=0,
                   help="ZeRO stage / FSDP sharding: 1 optimizer, 2 +gradients, 3 +weights (FSDP full_shard)")
    p.add_argument("--offload-optimizer", action="store_true", help="ZeRO-Offload the optimizer to CPU")
    p.add_argument("--fused-loss", action="store_true",
                   help="fused linear cross-entropy (LLaMA-Factory enable_liger_kernel, Cut Cross-Entropy): "
                        "logits are never materialised (Liger's other kernels are not modelled)")
    p.add_argument("--optimizer-in-backward", action="store_true",
                   help="step each parameter inside backward (torchtune's optimizer_in_bwd): no full gradient set")
    p.add_argument("--cuda-context", default=None,
                   help="CUDA context + library workspace per GPU, e.g. 600MiB (default: 0.5GiB, assumed)")
    p.add_argument("--fragmentation", type=_fraction("--fragmentation"), default=None,
                   help="allocator fragmentation as a fraction of the peak (default: 0.08)")


def _plan_from(args: argparse.Namespace):
    from planner.plan import Plan
    from planner.units import parse_bytes

    extra = {}
    if args.cuda_context is not None:
        extra["cuda_context"] = parse_bytes(args.cuda_context, "--cuda-context") if args.cuda_context not in (
            "0", "0B") else 0
    if args.fragmentation is not None:
        extra["fragmentation"] = args.fragmentation
    return Plan.build(
        method=args.method, precision=args.precision, optimizer=args.optimizer, batch_size=args.batch_size,
        seq_len=args.seq_len, grad_accum=args.grad_accum, gradient_checkpointing=args.gradient_checkpointing,
        attention=args.attention, lora_rank=args.lora_rank, lora_target=args.lora_target,
        lora_dropout=args.lora_dropout, freeze_trainable_layers=args.freeze_trainable_layers,
        quant_bits=args.quant_bits, double_quant=args.double_quant, gpus=args.gpus, zero=args.zero,
        offload_optimizer=args.offload_optimizer, optimizer_in_backward=args.optimizer_in_backward,
        fused_loss=args.fused_loss, **extra,
    )


def _gpu_target(args: argparse.Namespace, plan):
    from planner.errors import FtplanError
    from planner.fit import GpuTarget
    from planner.hardware import find_gpu
    from planner.units import parse_bytes

    if args.gpu and args.gpu_memory:
        raise FtplanError("--gpu and --gpu-memory: give one of them")
    if args.gpu_memory:
        capacity = parse_bytes(args.gpu_memory, "--gpu-memory")
        return GpuTarget(name=f"{args.gpu_memory} GPU", capacity=capacity, source="given")
    if not args.gpu:
        return None
    if args.gpu.lower() == "auto":
        from diagnostics.gpus import measured_target
        from diagnostics.nvml import probe

        return measured_target(probe(), plan.gpus)
    gpu = find_gpu(args.gpu)
    return GpuTarget(name=gpu.name, capacity=gpu.memory_bytes, source="catalog", gpu=gpu)


def _calibrated(plan, target, args: argparse.Namespace):
    """Use this machine's measured CUDA context (`ftplan gpus --calibrate`) unless --cuda-context is given."""
    if target is None or args.cuda_context is not None:
        return plan
    from diagnostics.calibrate import calibration_for

    cal = calibration_for(target.device_name, target.gpu.name if target.gpu else None)
    if cal is None:
        return plan
    return plan.with_(cuda_context=cal.cuda_context, cuda_context_measured=True)


def cmd_estimate(args: argparse.Namespace) -> int:
    from planner.estimate import estimate
    from planner.spec import load_spec

    plan = _plan_from(args)
    target = _gpu_target(args, plan)
    plan = _calibrated(plan, target, args)
    if (args.max_batch or args.max_seq_len) and target is None:
        from planner.errors import FtplanError

        raise FtplanError("--max-batch/--max-seq-len: need a GPU to fit against; add --gpu NAME or --gpu-memory")
    spec = load_spec(args.model)
    result = estimate(spec, plan, target, search_batch=args.max_batch, search_seq=args.max_seq_len,
                      mfu=args.mfu, samples=args.samples, epochs=args.epochs)
    if args.json:
        sys.stdout.write(result.model_dump_json(indent=2) + "\n")
    else:
        from tui.report import print_estimate

        print_estimate(result)
    if result.fit is not None and not result.fit.fits:
        return ExitCode.CHECK_FAILED
    return ExitCode.OK


def cmd_models(args: argparse.Namespace) -> int:
    from planner.params import count_params
    from planner.spec import load_preset, preset_index

    index = preset_index()
    rows = []
    for name, preset in index.presets.items():
        spec = load_preset(name)
        aliases = sorted(a for a, target in index.aliases.items() if target == name)
        rows.append({"name": name, "hub_id": preset.hub_id, "model_type": spec.model_type,
                     "params": count_params(spec).total, "layers": spec.num_layers, "aliases": aliases})
    if args.json:
        import json

        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return ExitCode.OK
    from tui.report import print_models

    print_models(rows)
    return ExitCode.OK


def cmd_gpus(args: argparse.Namespace) -> int:
    if args.catalog:
        from planner.hardware import catalog

        rows = [g.model_dump() for g in catalog()]
        if args.json:
            import json

            sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        else:
            from tui.report import print_catalog

            print_catalog(catalog())
        return ExitCode.OK
    from diagnostics.nvml import probe

    if args.calibrate:
        from diagnostics.calibrate import calibrate, save_calibration

        cal = calibrate(args.device)
        path = save_calibration(cal)
        if args.json:
            sys.stdout.write(cal.model_dump_json(indent=2) + "\n")
        else:
            from planner.units import fmt_gib

            print(f"{cal.gpu}: CUDA context {fmt_gib(cal.cuda_context)} (measured by {cal.method} memory; "
                  f"PyTorch reserved {fmt_gib(cal.allocator_reserved)} for the test matmul); saved to {path}")
        return ExitCode.OK
    result = probe()
    if args.json:
        sys.stdout.write(result.model_dump_json(indent=2) + "\n")
    elif result.status != "ok":
        print(result.summary())
    else:
        from tui.report import print_gpus

        print_gpus(result)
    return ExitCode.OK


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ftplan", description="Plan and pre-flight LLM fine-tuning: memory, fit, time.",
                     epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    est = sub.add_parser(
        "estimate", help="memory, fit and time for a fine-tuning plan",
        description="Per-GPU memory of a fine-tuning run (weights, gradients, optimizer, activations, logits, "
                    "overhead), the peak over a step, whether it fits a GPU, and what to change when it does not.",
        epilog=EXIT_CODES_HELP + "\nexample:\n  ftplan estimate --model 7b --method qlora --gpu 4090 --max-batch\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_plan_flags(est)
    est.add_argument("--gpu", help="GPU to fit: a catalog name, leniently matched ('RTX 4090', '4090', 'H100'), "
                                   "or auto for the measured free memory of this machine's visible GPU(s)")
    est.add_argument("--gpu-memory", help="usable memory per GPU instead of --gpu, e.g. 24GiB or 80GB")
    est.add_argument("--max-batch", action="store_true", help="find the largest micro-batch that fits")
    est.add_argument("--max-seq-len", action="store_true", help="find the longest sequence that fits")
    est.add_argument("--mfu", type=_fraction("--mfu"), default=None,
                     help="model FLOPs utilisation for the time estimate (default: 0.40 full, 0.35 LoRA, 0.25 QLoRA)")
    est.add_argument("--samples", type=_positive_int("--samples"), default=None,
                     help="training examples, for a total-time estimate")
    est.add_argument("--epochs", type=float, default=1.0, help="epochs, with --samples (default: 1)")
    est.add_argument("--json", action="store_true", help="print the result as JSON (the pydantic dump)")
    est.set_defaults(func=cmd_estimate)
    gpus = sub.add_parser(
        "gpus", help="the GPUs this machine has, measured through NVML",
        description="Memory, utilisation, temperature, power and processes of every GPU NVML reports, and which "
                    "of them a job gets under CUDA_VISIBLE_DEVICES. With no GPU or driver: one line saying why, "
                    "exit 0.", epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    gpus.add_argument("--json", action="store_true", help="print the probe result as JSON")
    gpus.add_argument("--calibrate", action="store_true",
                      help="measure the CUDA context overhead (needs torch with CUDA) and store it for estimates")
    gpus.add_argument("--device", type=int, default=0, help="CUDA device to calibrate (default: 0)")
    gpus.add_argument("--catalog", action="store_true", help="list the GPU catalog used by --gpu NAME")
    gpus.set_defaults(func=cmd_gpus)
    models = sub.add_parser("models", help="list model presets and size aliases")
    models.add_argument("--json", action="store_true")
    models.set_defaults(func=cmd_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    from planner.errors import EnvironmentMissing, FtplanError

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return ExitCode.OK
    try:
        return int(args.func(args))
    except EnvironmentMissing as exc:
        sys.stderr.write(f"ftplan: {exc}\n")
        return ExitCode.ENVIRONMENT
    except FtplanError as exc:
        sys.stderr.write(f"ftplan: {exc}\n")
        return ExitCode.BAD_INPUT
    except KeyboardInterrupt:
        sys.stderr.write("ftplan: interrupted\n")
        return 130
    except BrokenPipeError:  # `ftplan estimate ... | head`
        return ExitCode.OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
