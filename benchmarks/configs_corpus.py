"""Run `ftplan preflight` over every YAML/JSON config under some directories (e.g. the frameworks' examples).

    python benchmarks/configs_corpus.py DIR...                  # prints the report (markdown)
    python benchmarks/configs_corpus.py DIR... --write docs/configs_corpus.md

Each file goes through `diagnostics.preflight.preflight(path, gpu="H100")` (the catalog's H100, no NVML), with
`HF_HUB_OFFLINE=1`: nothing is downloaded. Outcomes:
* planned, by verdict;
* model config unavailable: the config reads, but its model is a hub id whose config.json is neither in the
  local Hugging Face cache nor a preset (counted apart: with network access they would be planned);
* exit 2: ftplan refuses the file, with its message (not a training config, or a value the framework rejects);
* traceback: anything else, printed in full (each is a bug).
Then, per framework, every key seen and how the reader treated it (modelled / warned / recognised-irrelevant /
unknown), and the warnings by code.

A relative path inside a config (a DeepSpeed JSON) is resolved from the working directory, as the frameworks do
from their repository root: each DIR named `examples` is run from its parent (override with --cwd).

`--stand-in PRESET` plans the files whose model is unavailable with that preset's architecture instead, to run
every reader and the planner end to end offline; those rows say "stand-in" and their numbers are not the real
model's.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import diagnostics.preflight as preflight_module  # noqa: E402
from diagnostics.preflight import _model_for, preflight  # noqa: E402
from planner.configs import read_run_config  # noqa: E402
from planner.configs.common import load_config_file  # noqa: E402
from planner.configs.read import detect_format  # noqa: E402
from planner.errors import EnvironmentMissing, FtplanError  # noqa: E402
from planner.files import write_text_atomic  # noqa: E402
from planner.spec import load_spec  # noqa: E402

SUFFIXES = (".yaml", ".yml", ".json")
# a config written for a MoE model (expert targets, expert parallelism, expert kernels) stands in with a MoE preset:
# on a dense stand-in its expert settings have nothing to act on (peft refuses expert-only targets there)
MOE_KEYS = ("lora_target_parameters", "quantize_moe_experts", "expert_parallel_size", "expert_model_parallel_size",
            "use_scattermoe", "use_sonicmoe", "experts_implementation")
MOE_STAND_IN = "qwen3-30b-a3b"
SHARDED_GPUS = 8  # one node, as `llamafactory-cli` / `accelerate launch` use every visible GPU
TREATMENTS = ("modelled", "warned", "irrelevant", "unknown")


@dataclass
class Outcome:
    path: str
    kind: str  # planned | model_unavailable | exit2 | traceback
    format: str = "?"
    verdict: str = ""
    message: str = ""
    treatment: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # codes
    total_gib: float | None = None
    stand_in: str | None = None  # the preset planned instead of an unavailable model
    # a config that shards (ZeRO/FSDP) planned on 1 GPU is warned; its launcher spreads it over a node, so it is
    # planned again with --gpus SHARDED_GPUS: (verdict, warning codes) of that run
    sharded: tuple[str, list[str]] | None = None


@contextlib.contextmanager
def working_directory(path: Path):
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


@contextlib.contextmanager
def standing_in(preset: str):
    """preflight's model loading, with `preset` for a model that cannot be resolved offline."""
    real = preflight_module.load_spec

    def load(model: str):
        try:
            return real(model)
        except FtplanError:
            return real(preset)

    preflight_module.load_spec = load
    try:
        yield
    finally:
        preflight_module.load_spec = real


def run_one(path: Path, gpu: str, stand_in: str | None = None) -> Outcome:
    shown = str(path)
    try:
        try:
            fmt = detect_format(load_config_file(path))
        except FtplanError:
            fmt = "?"
        try:
            run = read_run_config(path)
        except EnvironmentMissing as exc:
            return Outcome(shown, "model_unavailable", fmt, message=str(exc))
        except FtplanError as exc:
            return Outcome(shown, "exit2", fmt, message=str(exc))
        base = Outcome(shown, "planned", run.format, treatment=dict(run.treatment),
                       warnings=[w.code for w in run.warnings])
        try:
            load_spec(_model_for(run))
        except FtplanError as exc:  # EnvironmentMissing included: the model's config.json is not here
            base.kind, base.message = "model_unavailable", str(exc)
            if stand_in is None:
                return base
            moe = stand_in and any(key in run.treatment for key in MOE_KEYS)
            base.kind, base.stand_in = "planned", MOE_STAND_IN if moe else stand_in
        try:
            with standing_in(base.stand_in) if base.stand_in else contextlib.nullcontext():
                report = preflight(path, gpu=gpu)
        except FtplanError as exc:
            base.kind, base.message = "exit2", str(exc)
            return base
        base.verdict = report.verdict
        base.total_gib = report.estimate.memory.total / 2**30
        base.warnings = [c.code for c in report.checks if c.severity == "warning"]
        if "sharding_on_one_gpu" in base.warnings:
            with standing_in(base.stand_in) if base.stand_in else contextlib.nullcontext():
                node = preflight(path, gpu=gpu, gpus=run.gpus if run.gpus and run.gpus > 1 else SHARDED_GPUS)
            base.sharded = (node.verdict, [c.code for c in node.checks if c.severity == "warning"])
        return base
    except Exception:  # every traceback is reported
        return Outcome(shown, "traceback", message=traceback.format_exc())


def configs_under(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)


def run_corpus(directory: Path, gpu: str, cwd: Path | None, stand_in: str | None = None) -> list[Outcome]:
    directory = directory.resolve()
    cwd = cwd or (directory.parent if directory.name == "examples" else directory)
    with working_directory(cwd):
        return [run_one(path.relative_to(cwd) if path.is_relative_to(cwd) else path, gpu, stand_in)
                for path in configs_under(directory)]


def _stood_in(outcome: Outcome, stand_in: str | None) -> str:
    if not outcome.stand_in:
        return ""
    return " (stand-in)" if outcome.stand_in == stand_in else f" (stand-in {outcome.stand_in})"


def report(corpora: dict[str, list[Outcome]], gpu: str, stand_in: str | None = None) -> str:
    out = ["# Example configs through `ftplan preflight`", "",
           f"Produced by `python benchmarks/configs_corpus.py` (preflight with `--gpu {gpu}`, HF_HUB_OFFLINE=1"
           + (f"; models unavailable offline stood in for by the preset {stand_in}, whose numbers these rows show"
              + f", and by {MOE_STAND_IN} for a config with MoE settings ({', '.join(MOE_KEYS)})"
              if stand_in else "") + "). Outcomes per file, the keys seen per framework and how each was read, and "
           "every traceback.", ""]
    everything = [o for outcomes in corpora.values() for o in outcomes]
    for name, outcomes in corpora.items():
        kinds = collections.Counter(o.kind for o in outcomes)
        stood_in = sum(1 for o in outcomes if o.stand_in)
        verdicts = collections.Counter(o.verdict for o in outcomes if o.kind == "planned")
        counts = ", ".join(f"{kinds[k]} {label}" for k, label in (
            ("planned", "planned"), ("model_unavailable", "model config unavailable"), ("exit2", "exit 2"),
            ("traceback", "tracebacks")) if kinds[k]) or "none"
        if stood_in:
            counts += f" ({stood_in} of the planned with the stand-in model)"
        out += [f"## {name}", "", f"{len(outcomes)} files: {counts}", ""]
        if verdicts:
            out += ["Verdicts of the planned: " + ", ".join(f"{n} {v}" for v, n in verdicts.most_common()), ""]
            fitting = [o for o in outcomes if o.verdict in ("ready", "ready_with_warnings")]
            # `--strict` fails a plan that fits on any warning: each code that does so, to check none is false
            stopped = collections.Counter(c for o in fitting for c in set(o.warnings))
            out += [f"`--strict`: {sum(1 for o in fitting if o.verdict == 'ready')} of the {len(fitting)} that fit "
                    "pass" + (("; the warnings that stop the others: " + ", ".join(
                        f"`{c}` {n}" for c, n in stopped.most_common())) if stopped else ""), ""]
            sharded = [o for o in outcomes if o.sharded]
            if sharded:
                # what a user of a sharded config runs: the same check with the GPU count its launcher uses
                as_run = [o.sharded if o.sharded else (o.verdict, o.warnings) for o in outcomes]
                fitting = [w for v, w in as_run if v in ("ready", "ready_with_warnings")]
                stopped = collections.Counter(c for w in fitting for c in set(w))
                out += [f"The {len(sharded)} that shard (ZeRO/FSDP) planned again with `--gpus` as the config "
                        f"implies, else {SHARDED_GPUS} (one node, as their launchers use every visible GPU): "
                        f"`--strict` then passes {sum(1 for w in fitting if not w)} of the {len(fitting)} that fit"
                        + (("; the warnings that stop the others: " + ", ".join(
                            f"`{c}` {n}" for c, n in stopped.most_common())) if stopped else ""), ""]
        planned = [o for o in outcomes if o.kind == "planned"]
        if planned:
            out += [f"| config | format | verdict | total GiB ({gpu}, 1 GPU) | warnings |", "|---|---|---|---:|---|"]
            out += [f"| {o.path}{_stood_in(o, stand_in)} | {o.format} | {o.verdict} | "
                    f"{o.total_gib:.1f} | {', '.join(sorted(set(o.warnings))) or ''} |" for o in planned]
            out.append("")
        for kind, title in (("exit2", "Exit 2 (ftplan refuses the file)"),
                            ("model_unavailable", "Model config unavailable offline")):
            chosen = [o for o in outcomes if o.kind == kind]
            if chosen:
                out += [f"### {title}", ""] + [f"- `{o.path}`: {o.message}" for o in chosen] + [""]
    out += ["## Keys seen, by framework", "",
            "How each top-level key was read where the file could be read (count of files per treatment).", ""]
    by_format: dict[str, dict[str, collections.Counter]] = collections.defaultdict(
        lambda: collections.defaultdict(collections.Counter))
    for o in everything:
        for key, how in o.treatment.items():
            by_format[o.format][key][how] += 1
    for fmt, keys in sorted(by_format.items()):
        totals = collections.Counter(how for counts in keys.values() for how, n in counts.items() for _ in range(n))
        out += [f"### {fmt}", "", f"{len(keys)} distinct keys; key uses: " + ", ".join(
            f"{totals[t]} {t}" for t in TREATMENTS if totals[t]), ""]
        for how in TREATMENTS:
            chosen = sorted(k for k, counts in keys.items() if counts[how])
            if chosen:
                out += [f"- **{how}** ({len(chosen)}): " + ", ".join(
                    f"`{k}`" + (f" x{keys[k][how]}" if keys[k][how] > 1 else "") for k in chosen)]
        out.append("")
    codes = collections.Counter(code for o in everything for code in o.warnings)
    if codes:
        out += ["## Warnings by code (every file that could be read)", "", ", ".join(f"`{c}` {n}" for c, n in codes.most_common()),
                ""]
    tracebacks = [o for o in everything if o.kind == "traceback"]
    out += ["## Tracebacks", ""]
    if not tracebacks:
        out += ["None.", ""]
    for o in tracebacks:
        out += [f"### {o.path}", "", "```", o.message.rstrip(), "```", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path)
    parser.add_argument("--gpu", default="H100")
    parser.add_argument("--cwd", type=Path, help="working directory for every DIR (default: see the module doc)")
    parser.add_argument("--name", action="append", default=[], help="a heading per DIR (default: its path)")
    parser.add_argument("--write", type=Path, help="also write the report to this file")
    parser.add_argument("--stand-in", metavar="PRESET",
                        help="plan files whose model is unavailable offline with this preset instead")
    args = parser.parse_args(argv)
    names = args.name + [str(d) for d in args.dirs[len(args.name):]]
    corpora = {name: run_corpus(d, args.gpu, args.cwd, args.stand_in)
               for name, d in zip(names, args.dirs, strict=True)}
    text = report(corpora, args.gpu, args.stand_in)
    print(text)
    if args.write:
        write_text_atomic(args.write, text + "\n")
    return 1 if any(o.kind == "traceback" for outcomes in corpora.values() for o in outcomes) else 0


if __name__ == "__main__":
    raise SystemExit(main())
