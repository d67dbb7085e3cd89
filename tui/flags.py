"""Command-line flags shared by ftplan's commands, and the `Plan` they describe."""

from __future__ import annotations

import argparse


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


def positive_int(flag: str):
    return _number(flag, int, lambda v: v >= 1, "a whole number of at least 1")


def fraction(flag: str):
    return _number(flag, float, lambda v: 0 <= v < 1, "a number in [0, 1)")


def add_training_flags(p: argparse.ArgumentParser, batch: int = 1, seq: int = 1024, accum: int = 1) -> None:
    """The model and how it trains: shared by `estimate` and `diagnose` (which train differently by default)."""
    from planner.plan import ATTENTION_KERNELS, METHODS, OPTIMIZERS, PRECISIONS

    p.add_argument("--model", "-m", required=True,
                   help="preset or size alias (`ftplan models`), hub id (owner/name), or a local dir/config.json")
    p.add_argument("--method", choices=METHODS, default="full", help="fine-tuning method (default: full)")
    p.add_argument("--precision", choices=PRECISIONS, default="bf16-mixed",
                   help="bf16 = pure bf16 weights; *-mixed = fp32 weights + autocast (default: bf16-mixed)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw", help="(default: adamw, torch foreach)")
    p.add_argument("--batch-size", "-b", type=positive_int("--batch-size"), default=batch,
                   help=f"micro-batch per GPU (default: {batch})")
    p.add_argument("--seq-len", "-s", type=positive_int("--seq-len"), default=seq,
                   help=f"tokens per sequence, i.e. cutoff_len (default: {seq})")
    p.add_argument("--grad-accum", type=positive_int("--grad-accum"), default=accum,
                   help=f"gradient accumulation steps (default: {accum})")
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=False,
                   help="recompute activations in backward (default: off)")
    p.add_argument("--attention", choices=ATTENTION_KERNELS, default="sdpa", help="attention kernel (default: sdpa)")
    p.add_argument("--lora-rank", type=positive_int("--lora-rank"), default=8, help="LoRA rank (default: 8)")
    p.add_argument("--lora-target", default="all",
                   help="all, attention, or comma-separated module names as LLaMA-Factory's lora_target")
    p.add_argument("--lora-dropout", type=fraction("--lora-dropout"), default=0.0)
    p.add_argument("--freeze-trainable-layers", type=int, default=2,
                   help="freeze method: train the last N layers (negative: the first N) (default: 2)")
    p.add_argument("--quant-bits", type=int, choices=(4, 8), default=None,
                   help="quantize the frozen base to 4 or 8 bits (QLoRA; --method qlora defaults to 4)")
    p.add_argument("--no-double-quant", dest="double_quant", action="store_false",
                   help="QLoRA without double quantization of the constants")

def add_system_flags(p: argparse.ArgumentParser) -> None:
    """Sharding, offload and overhead: what only the planner models."""
    p.add_argument("--gpus", type=positive_int("--gpus"), default=1, help="data-parallel GPUs (default: 1)")
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
    p.add_argument("--fragmentation", type=fraction("--fragmentation"), default=None,
                   help="allocator fragmentation as a fraction of the peak (default: 0.08)")



def plan_from(args: argparse.Namespace):
    from planner.plan import Plan
    from planner.units import parse_bytes

    extra = {}
    if getattr(args, "cuda_context", None) is not None:
        extra["cuda_context"] = parse_bytes(args.cuda_context, "--cuda-context") if args.cuda_context not in (
            "0", "0B") else 0
    if getattr(args, "fragmentation", None) is not None:
        extra["fragmentation"] = args.fragmentation
    return Plan.build(
        method=args.method, precision=args.precision, optimizer=args.optimizer, batch_size=args.batch_size,
        seq_len=args.seq_len, grad_accum=args.grad_accum, gradient_checkpointing=args.gradient_checkpointing,
        attention=args.attention, lora_rank=args.lora_rank, lora_target=args.lora_target,
        lora_dropout=args.lora_dropout, freeze_trainable_layers=args.freeze_trainable_layers,
        quant_bits=args.quant_bits, double_quant=args.double_quant, **extra,
        **{k: getattr(args, k) for k in ("gpus", "zero", "offload_optimizer", "optimizer_in_backward", "fused_loss")
           if hasattr(args, k)},
    )




def positive_float(flag: str):
    return _number(flag, float, lambda v: 0 < v < float("inf"), "a positive number")


def share(flag: str):
    return _number(flag, float, lambda v: 0 < v <= 1, "a number in (0, 1]")


def device(text: str) -> str:
    if text in ("auto", "cpu", "cuda") or (text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"--device takes auto, cpu, cuda or cuda:N, got {text!r}")


def add_diagnose_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="Alpaca / ShareGPT / OpenAI-messages / text JSON or JSONL "
                                  "(default: the small sample dataset shipped with ftplan)")
    p.add_argument("--steps", type=positive_int("--steps"), default=30, help="optimizer steps (default: 30)")
    p.add_argument("--lr", type=positive_float("--lr"), default=None,
                   help="learning rate (default: 1e-4 for LoRA/QLoRA, 1e-5 otherwise)")
    p.add_argument("--warmup-ratio", type=fraction("--warmup-ratio"), default=0.0)
    p.add_argument("--lr-scheduler", choices=("cosine", "linear", "constant"), default="cosine")
    p.add_argument("--max-grad-norm", type=float, default=1.0,
                   help="gradient clipping threshold; 0 turns clipping off (default: 1.0, as the HF Trainer)")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device", type=device, default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--no-loss-scaling", dest="loss_scaling", action="store_false",
                   help="fp16-mixed without a GradScaler (to see underflow)")
    p.add_argument("--init-std", type=positive_float("--init-std"), default=None,
                   help="config-only models: initializer_range of the random weights")
