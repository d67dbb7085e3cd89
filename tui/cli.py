"""The `ftplan` command line.

`ftplan` alone opens the TUI; subcommands serve scripts. Startup matters
(`ftplan estimate` must answer in well under a second), so heavy modules are
imported inside the command that needs them, never at the top of this file.
"""

from __future__ import annotations

import argparse
import sys
from enum import IntEnum

from tui.flags import (
    add_diagnose_flags,
    add_system_flags,
    add_target_flags,
    add_training_flags,
    plan_from,
    positive_float,
    positive_int,
    share,
    target_from,
)

EXIT_CODES_HELP = """exit codes:
  0  success (for estimate --gpu: the plan fits)
  1  a check failed: the plan does not fit the GPU
  2  bad input: unknown model/preset/GPU, invalid flag value, broken config file
  3  missing environment: e.g. no network to fetch a config, no GPU where one is required, a full disk
"""


class ExitCode(IntEnum):
    OK = 0
    CHECK_FAILED = 1
    BAD_INPUT = 2
    ENVIRONMENT = 3


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad flags in one line, with exit code 2 (argparse's own code too)."""

    argv: list[str] = []  # what main() parses: argparse's messages do not say which value it refused

    def error(self, message: str):  # pragma: no cover - exercised through main()
        self.exit(ExitCode.BAD_INPUT, f"ftplan: error: {_negative(message, self.argv) or message} "
                                      f"(see `{self.prog} --help`)\n")


def _negative(message: str, argv: list[str]) -> str | None:
    """argparse reads `--gpu-memory -1GiB` as a flag without its value ("expected one argument"): name the value.
    (Plain negative numbers such as `-1` do reach the flag's own check.)"""
    import itertools
    import re

    match = re.fullmatch(r"argument (\S+): expected one argument", message)
    if match is None:
        return None
    flags = match.group(1).split("/")
    for flag, value in itertools.pairwise(argv):
        if flag in flags and re.match(r"-[\d.]", value):
            return f"{flag}: got {value}, a negative value; give a positive one"
    return None


def cmd_estimate(args: argparse.Namespace) -> int:
    from planner.service import plan_run
    from planner.spec import load_spec
    from planner.target import GpuTarget

    plan = plan_from(args)
    target = target_from(args)
    if (args.max_batch or args.max_seq_len) and not isinstance(target, GpuTarget):
        from planner.errors import FtplanError

        raise FtplanError("--max-batch/--max-seq-len: need a GPU to fit against; add {gpu} NAME or {gpu_memory}")
    spec = load_spec(args.model)
    result = plan_run(spec, plan, target, search_batch=args.max_batch, search_seq=args.max_seq_len,
                      mfu=args.mfu, samples=args.samples, epochs=args.epochs)
    path = None
    if result.fit is not None and not result.fit.fits:  # the cheapest changes that fit, the smallest GPU
        from planner.path_to_fit import path_to_fit

        path = path_to_fit(spec, result.plan, target)
    if args.json:
        import json

        # the Estimate's dump plus the path to fit (null when the plan fits or has no GPU to fit)
        dump = result.model_dump(mode="json") | {"path_to_fit": path.model_dump(mode="json") if path else None}
        sys.stdout.write(json.dumps(dump, indent=2) + "\n")
    else:
        from tui.report import print_estimate

        print_estimate(result, path=path)
    if result.fit is not None and not result.fit.fits:
        return ExitCode.CHECK_FAILED
    return ExitCode.OK


def cmd_fits(args: argparse.Namespace) -> int:
    from planner.fit import what_fits
    from planner.plan import METHODS
    from planner.spec import load_spec
    from planner.target import catalog_targets, resolve_target

    plan = plan_from(args)
    machine = target_from(args)  # the overhead flags alone: this command's --gpu names several GPUs
    spec = load_spec(args.model)
    targets = ([resolve_target(name, gpus=args.gpus, cuda_context=machine.given_context,
                               fragmentation=machine.fragmentation) for name in args.gpu_names] if args.gpu_names
               else catalog_targets(machine.given_context, machine.fragmentation))
    methods = tuple(args.methods.split(",")) if args.methods else METHODS
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        from planner.errors import FtplanError

        raise FtplanError(f"--methods: unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    rows = what_fits(spec, plan, targets, methods, limit=args.limit)
    if args.json:
        import json

        sys.stdout.write(json.dumps({"model": spec.name, "plan": plan.model_dump(),
                                     "rows": [r.model_dump() for r in rows]}, indent=2) + "\n")
    else:
        from tui.report import print_fits

        print_fits(spec.name, plan, rows, methods)
    return ExitCode.OK


def cmd_compare(args: argparse.Namespace) -> int:
    from planner.compare import compare
    from planner.spec import load_spec

    plan, target = plan_from(args), target_from(args)
    comparison = compare(load_spec(args.model), plan, target, mfu=args.mfu, samples=args.samples)
    if args.json:
        sys.stdout.write(comparison.model_dump_json(indent=2) + "\n")
    else:
        from tui.report import print_compare

        print_compare(comparison)
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


def cmd_diagnose(args: argparse.Namespace) -> int:
    from diagnostics.report import DiagnoseSettings, write_report

    settings = DiagnoseSettings(
        model=args.model, data=args.data, steps=args.steps, lr=args.lr, warmup_ratio=args.warmup_ratio,
        lr_scheduler=args.lr_scheduler, max_grad_norm=args.max_grad_norm or None, weight_decay=args.weight_decay,
        seed=args.seed, device=args.device, loss_scaling=args.loss_scaling, init_std=args.init_std,
        beta=args.beta, lr_find=args.lr_find, plan=plan_from(args))
    from planner.files import check_output, model_input

    # the run's own files are never an output, not even with --force
    inputs = {"--data": args.data, "the --model config.json": model_input(args.model)}
    existing = "replace" if args.force else "refuse"
    if args.out:  # a bad path fails here, before a run that may take minutes
        check_output(args.out, flag="--out", inputs=inputs, existing=existing)
    from diagnostics.objectives import check_stage
    from planner.spec import load_spec

    check_stage(settings.stage)
    load_spec(settings.model)  # bad --model fails here, in one line, before any process starts
    if args.data:
        from diagnostics.data import load_records

        records = load_records(args.data)
        if settings.preference:  # a bad pair fails here, naming its record, before the model loads
            from diagnostics.preference import check_records

            check_records(records, args.data)
    live = not args.json and sys.stdout.isatty()
    from tui.diagnose_view import print_report, step_line

    def on_step(record) -> None:
        if live:
            print(step_line(record, settings.steps), flush=True)

    distributed = _launcher_count("WORLD_SIZE", 1) > 1
    if args.in_process or distributed:
        import contextlib

        from diagnostics.loop import run

        # libraries print to stdout (DeepSpeed's accelerator notice): keep it for the JSON alone
        quiet = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
        with quiet:
            report = run(settings, on_step=on_step)
    else:
        from diagnostics.runner import run_isolated

        report = run_isolated(settings, on_step=on_step)
        if report.error_kind is not None:  # failed before training: the same exit code as in-process
            from planner.errors import EnvironmentMissing, FtplanError

            raise (EnvironmentMissing if report.error_kind == "environment" else FtplanError)(report.message)
    if _launcher_count("RANK", 0) != 0:
        return ExitCode.OK  # rank 0 speaks for the run
    try:
        if args.json:
            sys.stdout.write(report.model_dump_json(indent=2) + "\n")
        else:
            print_report(report, plots=not args.no_plots)
        sys.stdout.flush()
    finally:  # after printing: a failed write (disk full) still leaves the report on stdout; and a closed
        if args.out:  # terminal or pipe (printing fails) still leaves it in the file
            write_report(report, args.out, flag="--out", inputs=inputs, existing=existing)
    if report.status == "interrupted":
        return 130
    if report.status != "completed" or any(f.severity == "error" for f in report.findings):
        return ExitCode.CHECK_FAILED
    if args.strict and report.warnings:
        return ExitCode.CHECK_FAILED
    return ExitCode.OK


def cmd_report(args: argparse.Namespace) -> int:
    from diagnostics.runlog import read_run
    from tui.diagnose_view import print_report

    report = read_run(args.log)
    if args.json:
        sys.stdout.write(report.model_dump_json(indent=2) + "\n")
    else:
        print_report(report, plots=not args.no_plots)
    failed = report.status != "completed" or any(f.severity == "error" for f in report.findings)
    return ExitCode.CHECK_FAILED if failed else ExitCode.OK


def _launcher_count(name: str, default: int) -> int:
    """WORLD_SIZE / RANK as torchrun and accelerate set them; anything else is the user's environment to fix."""
    import os

    from planner.errors import FtplanError, shortened

    text = os.environ.get(name, "").strip()
    if not text:
        return default
    if not text.isdigit():
        raise FtplanError(f"environment variable {name}={shortened(text)!r}: not a whole number; unset it, or "
                          "launch with torchrun / accelerate launch, which set it")
    return int(text)


def cmd_preflight(args: argparse.Namespace) -> int:
    from diagnostics.preflight import exit_code, preflight

    report = preflight(args.config, gpu=args.gpu, gpu_memory=args.gpu_memory, gpus=args.gpus,
                       diagnose_steps=args.diagnose, strict=args.strict, fix=args.fix,
                       fmt=None if args.format == "auto" else args.format, stage=args.stage, force=args.force)
    if args.json:
        sys.stdout.write(report.model_dump_json(indent=2) + "\n")
    else:
        from tui.preflight_view import print_preflight

        print_preflight(report)
    if report.fix_error:  # the path was checked before the run; what fails now is the write itself
        sys.stdout.flush()
        sys.stderr.write(f"ftplan: {report.fix_error}\n")
        return ExitCode.BAD_INPUT
    diag = report.diagnostics
    if diag is not None and diag.error_kind is not None:  # the run stopped on its input before training
        sys.stdout.flush()
        sys.stderr.write(f"ftplan: {diag.message}\n")
        return ExitCode.ENVIRONMENT if diag.error_kind == "environment" else ExitCode.BAD_INPUT
    return exit_code(report, args.strict)


def cmd_export(args: argparse.Namespace) -> int:
    from planner.configs.export import TITLES, write_export
    from planner.files import model_input
    from planner.spec import load_spec

    plan = plan_from(args)
    spec = load_spec(args.model)  # a bad --model fails here, in one line, before any file is written
    gpu = None
    # named in the check command (auto is this machine's); with --gpu-memory too, refused there as in preflight
    if args.gpu and (args.gpu_memory or args.gpu.strip().lower() != "auto"):
        from planner.target import resolve_target

        target = resolve_target(args.gpu, args.gpu_memory)
        gpu = target.gpu.name if target.gpu else None
    if args.gpu_memory:
        from planner.units import parse_bytes

        parse_bytes(args.gpu_memory, "gpu_memory")  # a bad size fails here, not in the check command later
    exported = write_export(args.format, args.model, plan, args.out, spec=spec, gpu=gpu, gpu_memory=args.gpu_memory,
                            existing="replace" if args.force else "refuse", flag="--out",
                            inputs={"the --model config.json": model_input(args.model)})
    if args.json:
        import json

        sys.stdout.write(json.dumps({"format": exported.fmt, "files": [str(p) for p in exported.files],
                                     "launch": exported.launch, "preflight": exported.preflight,
                                     "plan": exported.plan.model_dump(), "notes": list(exported.notes),
                                     "placeholders": list(exported.placeholders)},
                                    indent=2) + "\n")
        return ExitCode.OK
    title = TITLES[exported.fmt]
    print(f"wrote {exported.path} ({title} config)")
    if exported.deepspeed is not None:
        print(f"wrote {exported.deepspeed} (DeepSpeed ZeRO-{exported.plan.zero}, referenced by the config)")
    print(f"check:  {exported.preflight}")
    print(f"launch: {exported.launch}")
    if exported.placeholders:
        print(f"before launching, replace every REPLACE-WITH-YOUR-... value in the config "
              f"({', '.join(exported.placeholders)})")
    if exported.notes:
        print(f"{title} runs this otherwise than planned (preflight plans what it runs):")
        for note in exported.notes:
            print(f"  - {note}")
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
        from planner.calibration import check_cache

        check_cache()
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


def _command(sub, name: str, summary: str, description: str, epilog: str = EXIT_CODES_HELP):
    return sub.add_parser(name, help=summary, description=description, epilog=epilog,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    from planner.plan import STAGES  # pydantic only: the flags below are built from the Plan model anyway

    parser = _Parser(prog="ftplan", description="Plan and pre-flight LLM fine-tuning: memory, fit, time.",
                     epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    est = _command(
        sub, "estimate", "memory, fit and time for a fine-tuning plan",
        "Per-GPU memory of a fine-tuning run (weights, gradients, optimizer, activations, logits, "
                    "overhead), the peak over a step, whether it fits a GPU, and what to change when it does not.",
        EXIT_CODES_HELP + "\nexample:\n  ftplan estimate --model 7b --method qlora --gpu 4090 --max-batch\n")
    add_training_flags(est)
    add_system_flags(est)
    add_target_flags(est)
    est.add_argument("--max-batch", action="store_true", help="find the largest micro-batch that fits")
    est.add_argument("--max-seq-len", action="store_true", help="find the longest sequence that fits")
    est.add_argument("--mfu", type=share("--mfu"), default=None,
                     help="model FLOPs utilisation for the time estimate (default: 0.40 full, 0.35 LoRA, 0.25 QLoRA)")
    est.add_argument("--samples", type=positive_int("--samples", most=10**12), default=None,
                     help="training examples, for a total-time estimate")
    est.add_argument("--epochs", type=positive_float("--epochs", most=10_000), default=1.0,
                     help="epochs, with --samples (default: 1)")
    est.add_argument("--json", action="store_true", help="print the result as JSON (the pydantic dump)")
    est.set_defaults(func=cmd_estimate)
    fits = _command(
        sub, "fits", "which GPUs fit the plan, for every method, and the largest micro-batch on each",
        "The What-fits table of the TUI: every catalog GPU (or those named with --gpu) against every method at "
        "the plan's other settings (precision, optimizer, sequence, checkpointing, GPUs, ZeRO): the largest "
        "micro-batch that fits, or what micro-batch 1 needs.",
        EXIT_CODES_HELP.replace("(for estimate --gpu: the plan fits)", "") + "\nexample:\n  ftplan fits --model 8b "
        "--seq-len 4096 --gradient-checkpointing\n")
    add_training_flags(fits)
    add_system_flags(fits)
    fits.add_argument("--gpu", action="append", dest="gpu_names", help="a catalog GPU to include (repeatable; default: the whole "
                                                      "catalog, `ftplan gpus --catalog`)")
    fits.add_argument("--methods", help="comma-separated methods to compare (default: all)")
    fits.add_argument("--limit", type=positive_int("--limit"), default=256,
                      help="largest micro-batch searched (default: 256)")
    fits.add_argument("--json", action="store_true", help="print the table as JSON")
    fits.set_defaults(func=cmd_fits)
    comp = _command(
        sub, "compare", "every fine-tuning method side by side: trainable parameters, memory, speed, fit",
        "The seed notes' comparison, computed: full, freeze, LoRA (and DoRA), QLoRA, prefix, prompt, P-tuning, "
        "IA3, Houlsby adapters and OFT, each planned at the other flags' settings: trainable parameters, peak "
        "memory per GPU, tokens/s at the MFU on --gpu, time per epoch with --samples, and whether it fits "
        "--gpu / --gpu-memory; a method the model cannot take gives the reason. --method is not needed: flags "
        "that only one method takes (--quant-bits, --prefix-projection) need theirs, as in estimate.",
        EXIT_CODES_HELP.replace("(for estimate --gpu: the plan fits)", "(whatever fits)")
        .replace("  1  a check failed: the plan does not fit the GPU\n", "")
        + "\nexample:\n  ftplan compare --model 7b --gpu 4090 --seq-len 2048 --samples 50000\n")
    add_training_flags(comp)
    add_system_flags(comp)
    add_target_flags(comp)
    comp.add_argument("--mfu", type=share("--mfu"), default=None,
                      help="model FLOPs utilisation for tokens/s (default: each method's, as in estimate)")
    comp.add_argument("--samples", type=positive_int("--samples"), default=None,
                      help="training examples, for the time per epoch")
    comp.add_argument("--json", action="store_true", help="print the rows as JSON")
    comp.set_defaults(func=cmd_compare)
    diag = _command(
        sub, "diagnose", "a short instrumented training run: unstable gradients and what to change",
        "Runs a few dozen real training steps of the model on your data (or ftplan's sample), records every "
        "layer's gradient norms, loss and memory, and reports exploding or vanishing gradients, NaN/Inf, loss "
        "spikes and divergence, clipping, fp16/bf16 precision problems and dead parameters, with suggested "
        "max_grad_norm, warmup, learning rate and batch settings. --stage dpo / orpo runs DPO or ORPO on "
        "preference pairs (prompt, chosen, rejected) and also reports reward margins, accuracy and the chosen "
        "answers' log-probs: margins that explode, likelihood displacement, drift from the reference.",
        EXIT_CODES_HELP.replace("(for estimate --gpu: the plan fits)", "(warnings are printed)")
        .replace("the plan does not fit the GPU", "an error finding, or the run failed / did not fit "
                 "(--strict: warnings too)") + "  130 interrupted (the partial report is still written)\n"
        + "\nexamples:\n  ftplan diagnose --model tiny-llama --method lora --steps 30\n"
        "  ftplan diagnose --model tiny-llama --method lora --stage dpo --lr 1e-4   # preference pairs, DPO\n")
    add_training_flags(diag, batch=2, seq=256, accum=2)
    add_diagnose_flags(diag)
    diag.add_argument("--beta", type=positive_float("--beta"), default=0.1,
                      help="--stage dpo: beta, the strength of the pull to the reference; --stage orpo: lambda, "
                           "the weight of the odds-ratio term (default: 0.1, TRL's and LLaMA-Factory's pref_beta)")
    diag.add_argument("--json", action="store_true", help="print the report as JSON")
    diag.add_argument("--out", help="also write the report (JSON) to this file, atomically; checked before the "
                                    "run starts (a regular file or a new one, never --data or the model's config)")
    diag.add_argument("--force", action="store_true", help="let --out replace a file that exists")
    diag.add_argument("--in-process", action="store_true",
                      help="run in this process (default: a child process that an OOM or CUDA fault cannot take down)")
    diag.add_argument("--strict", action="store_true", help="exit 1 on warnings too")
    diag.add_argument("--no-plots", action="store_true", help="text summary without the terminal plots")
    diag.set_defaults(func=cmd_diagnose)
    rep = _command(
        sub, "report", "render a saved run: FtplanMonitor's run.jsonl or a diagnose --out report",
        "Prints a saved run as `ftplan diagnose` prints its own: status, the loss plot, the per-layer gradient-norm "
        "heatmap, findings and suggested settings. Reads the log the Trainer callback "
        "(diagnostics.callback.FtplanMonitor) writes, also one cut short (the report is then made from its steps), "
        "or a report JSON from `ftplan diagnose --out`.",
        EXIT_CODES_HELP.replace("(for estimate --gpu: the plan fits)", "(warnings are printed)")
        .replace("the plan does not fit the GPU", "the run has an error finding or did not complete")
        .replace("broken config file", "a missing file, not JSON lines, records that are not ftplan's")
        + "\nexample:\n  ftplan report run.jsonl\n")
    rep.add_argument("log", help="the run log (.jsonl) or report (.json)")
    rep.add_argument("--json", action="store_true", help="print the report as JSON")
    rep.add_argument("--no-plots", action="store_true", help="text summary without the terminal plots")
    rep.set_defaults(func=cmd_report)
    pre = _command(
        sub, "preflight", "gate a long fine-tuning job on its config file",
        "Reads a LLaMA-Factory, HF TrainingArguments/TRL or axolotl config and checks it before the long run: "
        "the memory plan on the GPUs it will run on (this machine's, through NVML, or --gpu NAME --gpus N), "
        "static advice (warmup, precision, clipping, batch vs dataset, LoRA scaling), optionally a short "
        "diagnostics run, and a verdict. --fix writes a corrected copy to a new file (--force: or over an existing "
        "one); the config itself, its data and the model's config.json are never modified.",
        """exit codes:
  0  ready (warnings are printed)
  1  will not fit, a check failed, or the diagnostics run failed (--strict: warnings too)
  2  the input is wrong: unreadable or malformed config, a wrong type, an impossible combination
  3  the environment is missing: e.g. --gpu auto (the default) and no GPU

example:
  ftplan preflight train.yaml && llamafactory-cli train train.yaml
""")
    pre.add_argument("config", help="the training config (YAML or JSON)")
    pre.add_argument("--gpu", default=None,
                     help="GPU to plan on: auto (this machine's visible GPUs, the default) or a catalog name")
    pre.add_argument("--gpu-memory", help="usable memory per GPU instead of --gpu, e.g. 24GiB")
    pre.add_argument("--gpus", type=positive_int("--gpus"), default=None,
                     help="GPUs the job uses (default: the count the config implies (accelerate num_processes, "
                          "Ray workers, parallel sizes), else WORLD_SIZE, or every visible GPU, or 1 with --gpu NAME; "
                          "an explicit --gpu auto takes WORLD_SIZE / every visible GPU over the config)")
    pre.add_argument("--diagnose", type=positive_int("--diagnose"), nargs="?", const=20, default=None,
                     metavar="STEPS", help="also run a short diagnostics run (default 20 steps)")
    pre.add_argument("--fix", metavar="OUT", help="write a corrected copy of the config here (checked before the "
                                                  "checks run; never the config itself)")
    pre.add_argument("--force", action="store_true", help="let --fix replace a file that exists")
    pre.add_argument("--strict", action="store_true", help="exit 1 on warnings too")
    pre.add_argument("--format", choices=("auto", "llamafactory", "hf", "axolotl"), default="auto")
    pre.add_argument("--stage", choices=STAGES, default=None,
                     help="the stage the config trains (default: its own keys say: LLaMA-Factory stage, axolotl rl, "
                          "the TRL trainer its keys belong to)")
    pre.add_argument("--json", action="store_true", help="print the report as JSON")
    pre.set_defaults(func=cmd_preflight)
    export = _command(
        sub, "export", "write the plan as a LLaMA-Factory, TRL or axolotl config that runs as written",
        "Writes the plan as a training config for LLaMA-Factory (v0 format, `llamafactory-cli train`), TRL "
        "(`trl sft|dpo|kto|reward|grpo --config`) or axolotl (`axolotl train`): the model's Hub id (a local "
        "model directory as its absolute path), the chat template, output_dir, a REPLACE-WITH-YOUR-DATASET "
        "placeholder that stops the run until replaced, and with --zero a DeepSpeed JSON beside it (FILE's name "
        "with .ds_zN.json), referenced by its absolute path. The file starts with the command that launches it "
        "on --gpus GPUs and the `ftplan preflight` command that checks it, and says where the framework runs "
        "the plan otherwise than planned. The same writer as the TUI's export.",
        EXIT_CODES_HELP.replace("(for estimate --gpu: the plan fits)", "(the files are written)")
        .replace("  1  a check failed: the plan does not fit the GPU\n", "")
        .replace("broken config file", "a stage or method the framework lacks, an existing file without --force")
        + "\nexamples:\n  ftplan export --model 8b --method qlora --format llamafactory -o train.yaml\n"
        "  ftplan export --model Qwen/Qwen2.5-7B-Instruct --method full --gpus 8 --zero 3 --format trl "
        "-o dpo.yaml --stage dpo\n")
    add_training_flags(export)
    add_system_flags(export)
    add_target_flags(export)
    export.add_argument("--format", required=True, choices=("llamafactory", "trl", "axolotl"),
                        help="the framework whose config to write")
    export.add_argument("-o", "--out", required=True, metavar="FILE",
                        help="the YAML to write (.yaml or .yml); checked before anything is written, never the "
                             "model's config.json")
    export.add_argument("--force", action="store_true", help="replace FILE (and its DeepSpeed file) if they exist")
    export.add_argument("--json", action="store_true", help="print the files, commands and plan as JSON")
    export.set_defaults(func=cmd_export)
    gpus = _command(
        sub, "gpus", "the GPUs this machine has, measured through NVML",
        "Memory, utilisation, temperature, power and processes of every GPU NVML reports, and which of them "
        "a job gets under CUDA_VISIBLE_DEVICES. With no GPU or driver: one line saying why, exit 0.")
    gpus.add_argument("--json", action="store_true", help="print the probe result as JSON")
    gpus.add_argument("--calibrate", action="store_true",
                      help="measure the CUDA context overhead (needs torch with CUDA) and store it for estimates")
    gpus.add_argument("--device", type=int, default=0, help="CUDA device to calibrate (default: 0)")
    gpus.add_argument("--catalog", action="store_true", help="list the GPU catalog used by --gpu NAME")
    gpus.set_defaults(func=cmd_gpus)
    from tui.trace_cmd import add_trace_command

    add_trace_command(sub)
    models = sub.add_parser("models", help="list model presets and size aliases")
    models.add_argument("--json", action="store_true")
    models.set_defaults(func=cmd_models)
    tui = _command(sub, "tui", "the interactive planner, optionally opened on a training config",
                   "The Textual app (what a bare `ftplan` starts). Given a LLaMA-Factory, TRL or axolotl config, "
                   "the Plan form starts from it, and `e` writes your changes into a copy that keeps its other keys.")
    tui.add_argument("config", nargs="?", help="a LLaMA-Factory / TRL / axolotl YAML or JSON config to open")
    tui.set_defaults(func=cmd_tui)
    return parser


def cmd_tui(args: argparse.Namespace) -> int:
    if args.config:  # a config that cannot be read stops here, as a one-line error with exit 2, not in the app
        from planner.configs import read_run_config

        read_run_config(args.config)
    from tui.app import run

    run(args.config)
    return ExitCode.OK


def main(argv: list[str] | None = None) -> int:
    import os

    # pydantic looks for plugins by reading every installed package's entry points the first time a model class
    # is built, a cost that grows with the environment; ftplan uses none. It reads the variable then, so it must
    # be set before any planner model is defined; a value the user set (to enable a plugin) is kept.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    from planner.errors import EnvironmentMissing, FtplanError
    from planner.fields import worded
    from tui.terminal import WRITE_ERRORS, broken_pipe, fallback_characters, silence_stdout

    fallback_characters()  # PYTHONIOENCODING=ascii: `->` for `→`, before argparse prints anything
    parser = build_parser()
    _Parser.argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.command is None:
        from tui.app import run

        run()
        return ExitCode.OK
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # a write error surfaces here, where it is handled, not in the interpreter's exit
        return code
    except EnvironmentMissing as exc:
        sys.stderr.write(f"ftplan: {worded(exc, 'cli')}\n")
        return ExitCode.ENVIRONMENT
    except FtplanError as exc:
        sys.stderr.write(f"ftplan: {worded(exc, 'cli')}\n")
        return ExitCode.BAD_INPUT
    except KeyboardInterrupt:
        sys.stderr.write("ftplan: interrupted\n")
        return 130
    except (BrokenPipeError, SystemExit) as exc:  # `ftplan estimate ... | head -1`: the reader has enough
        if not broken_pipe(exc):
            raise
        silence_stdout()
        return ExitCode.OK
    except OSError as exc:  # `>/dev/full`; ftplan's own files report their errors as FtplanErrors
        if exc.errno not in WRITE_ERRORS:
            raise
        silence_stdout()
        sys.stderr.write(f"ftplan: cannot write the output ({exc.strerror}); free some space or redirect it "
                         "elsewhere\n")
        return ExitCode.ENVIRONMENT


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
