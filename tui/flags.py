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


def positive_int(flag: str, most: int | None = None):
    """`most`: a sanity cap where a larger value only overflows what it feeds (a time estimate)."""
    if most is None:
        return _number(flag, int, lambda v: v >= 1, "a whole number of at least 1")
    return _number(flag, int, lambda v: 1 <= v <= most, f"a whole number from 1 to {most:,}")


def fraction(flag: str):
    return _number(flag, float, lambda v: 0 <= v < 1, "a number in [0, 1)")


def _flag_type(name: str, annotation) -> dict:
    """argparse's type, choices and metavar for a model field, from its annotation."""
    import typing

    from planner.fields import choices, setting

    values = choices(name)
    if values:
        return {"type": type(values[0]), "choices": values}
    # the range is the model's to check (one rule, one message); here only the type
    base = next((a for a in typing.get_args(annotation) if a is not type(None)), annotation)
    flag = setting(name).flag
    if base is int:
        return {"type": _number(flag, int, lambda v: True, "a whole number"), "metavar": "N"}
    if base is float:
        return {"type": _number(flag, float, lambda v: True, "a number"), "metavar": "X"}
    return {"type": str}


def _add_plan_flags(p: argparse.ArgumentParser, group: str, defaults: dict) -> None:
    """Every Plan field of `group` in the field table, as a flag with the table's help."""
    from planner import fields
    from planner import plan as plan_module

    model = plan_module.Plan
    for s in fields.FIELDS:
        if s.owner != "plan" or s.group != group or s.name not in model.model_fields:
            continue
        info = model.model_fields[s.name]
        default = defaults.get(s.name, info.default)
        names = [s.flag, *([s.short] if s.short else [])]
        shown = "" if default is None else f" (default: {'on' if default is True else 'off' if default is False else default})"
        if info.annotation in (bool, bool | None):
            p.add_argument(*names, dest=s.name, action=argparse.BooleanOptionalAction, default=default,
                           help=s.help + shown)
            continue
        p.add_argument(*names, dest=s.name, default=default, help=s.help + shown,
                       **_flag_type(s.name, info.annotation))


def add_training_flags(p: argparse.ArgumentParser, batch: int = 1, seq: int = 1024, accum: int = 1) -> None:
    """The model and how it trains: shared by `estimate` and `diagnose` (which train differently by default)."""
    p.add_argument("--model", "-m", required=True,
                   help="preset or size alias (`ftplan models`), hub id (owner/name), or a local dir/config.json")
    _add_plan_flags(p, "training", {"batch_size": batch, "seq_len": seq, "grad_accum": accum})


def add_system_flags(p: argparse.ArgumentParser) -> None:
    """Sharding, offload, overhead and the GPU: what only the planner models."""
    from planner.fields import setting

    _add_plan_flags(p, "system", {"gpus": None})
    p.add_argument("--cuda-context", default=None, help=setting("cuda_context").help)
    p.add_argument("--fragmentation", type=fraction("--fragmentation"), default=None,
                   help=setting("fragmentation").help)


def add_target_flags(p: argparse.ArgumentParser) -> None:
    from planner.fields import setting

    p.add_argument("--gpu", help=setting("gpu").help)
    p.add_argument("--gpu-memory", help=setting("gpu_memory").help)


def plan_from(args: argparse.Namespace):
    """The Plan the flags describe (fields the command has no flag for keep their defaults)."""
    from planner import fields
    from planner import plan as plan_module

    values = {s.name: getattr(args, s.name) for s in fields.FIELDS
              if s.owner == "plan" and getattr(args, s.name, None) is not None}
    return plan_module.Plan.build(**values)


def target_from(args: argparse.Namespace):
    """The machine the flags describe, resolved once (`planner.target.resolve_target`)."""
    from planner.target import resolve_target
    from planner.units import parse_bytes

    context = getattr(args, "cuda_context", None)
    if context is not None:
        context = parse_bytes(context, "cuda_context", allow_zero=True)
    return resolve_target(getattr(args, "gpu", None), getattr(args, "gpu_memory", None),
                          gpus=getattr(args, "gpus", None), cuda_context=context,
                          fragmentation=getattr(args, "fragmentation", None))


def positive_float(flag: str, most: float | None = None):
    if most is None:
        return _number(flag, float, lambda v: 0 < v < float("inf"), "a positive number")
    return _number(flag, float, lambda v: 0 < v <= most, f"a positive number of at most {most:,}")


def share(flag: str):
    return _number(flag, float, lambda v: 0 < v <= 1, "a number in (0, 1]")


def device(text: str) -> str:
    if text in ("auto", "cpu", "cuda") or (text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"--device takes auto, cpu, cuda or cuda:N, got {text!r}")


def add_diagnose_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="Alpaca / ShareGPT / OpenAI-messages / text JSON or JSONL; with --stage dpo or "
                                  "orpo, preference pairs (prompt/chosen/rejected as in the seed notes and TRL, or "
                                  "LLaMA-Factory's alpaca/sharegpt preference formats) (default: the sample "
                                  "dataset shipped with ftplan for the stage)")
    p.add_argument("--steps", type=positive_int("--steps"), default=30, help="optimizer steps (default: 30)")
    p.add_argument("--lr", type=positive_float("--lr"), default=None,
                   help="learning rate (default: 1e-4 for LoRA/QLoRA, 1e-5 otherwise)")
    p.add_argument("--warmup-ratio", type=fraction("--warmup-ratio"), default=0.0)
    p.add_argument("--lr-scheduler", choices=("cosine", "linear", "constant"), default="cosine")
    p.add_argument("--max-grad-norm", type=_number("--max-grad-norm", float, lambda v: 0 <= v < float("inf"),
                                                   "a number of at least 0 (0 turns clipping off)"), default=1.0,
                   help="gradient clipping threshold; 0 turns clipping off (default: 1.0, as the HF Trainer)")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device", type=device, default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--no-loss-scaling", dest="loss_scaling", action="store_false",
                   help="fp16-mixed without a GradScaler (to see underflow)")
    p.add_argument("--init-std", type=positive_float("--init-std"), default=None,
                   help="config-only models: initializer_range of the random weights")
    p.add_argument("--lr-find", action="store_true",
                   help="run an LR range test instead: the steps ramp the learning rate from 1e-7 to 1 and the "
                        "advice is a tenth of the rate before the loss turns up")
