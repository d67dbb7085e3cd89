"""A plan written out as a training config that runs as written: LLaMA-Factory, TRL or axolotl (the TUI's
export and `ftplan export`, one writer).

Each export names the model by its Hub id (or a local directory's absolute path), the framework's chat
template where it has one, an output_dir, a dataset placeholder that fails loudly until replaced, a DeepSpeed
file beside the YAML referenced by its absolute path (the frameworks open it from the directory they are
launched in), and, as comments, the command that launches it on the plan's GPUs and the `ftplan preflight`
command that checks it. Where the framework runs the plan otherwise than planned, the file says so at the top,
and `Export.plan` is the plan as the framework runs it: what `ftplan preflight` reads back.

Per framework, one module: `export_llamafactory`, `export_trl`, `export_axolotl`; what they share is in
`export_common`.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from planner.configs import export_axolotl, export_llamafactory, export_trl
from planner.configs.common import Hyper
from planner.configs.export_common import (
    DATASET,
    PLACEHOLDER,
    TITLES,
    ExportInput,
    deepspeed_json,
    deepspeed_text,
    default_hyper,
    model_for_export,
)
from planner.configs.export_llamafactory import llamafactory_yaml
from planner.errors import FtplanError
from planner.files import Existing, Inputs, check_output, write_output
from planner.fit import prompt_groups_problem
from planner.plan import Plan
from planner.spec import ModelSpec
from planner.stages import REFERENCED

ExportFormat = Literal["llamafactory", "trl", "axolotl"]
EXPORT_FORMATS: tuple[str, ...] = ExportFormat.__args__
DIALECTS = {"llamafactory": " (v0 format)", "trl": "", "axolotl": ""}
# the format `ftplan preflight --format` and planner.configs.read call each export
READ_AS = {"llamafactory": "llamafactory", "trl": "hf", "axolotl": "axolotl"}
_WRITERS = {"llamafactory": export_llamafactory.render, "trl": export_trl.render, "axolotl": export_axolotl.render}

__all__ = ["EXPORT_FORMATS", "Export", "deepspeed_json", "llamafactory_yaml", "render_export", "write_export"]


@dataclass(frozen=True)
class Export:
    """An export's files and what it runs."""

    fmt: str
    path: Path  # the YAML
    text: str
    deepspeed: Path | None  # the DeepSpeed JSON beside it
    deepspeed_text: str | None
    plan: Plan  # the plan as the framework runs it (== the plan unless `notes` say otherwise)
    launch: str  # the command that trains it
    preflight: str  # the command that checks it
    notes: tuple[str, ...]  # where the framework runs the plan otherwise than planned
    placeholders: tuple[str, ...]  # what the REPLACE-WITH-YOUR-... values stand for ("dataset", ...)

    @property
    def files(self) -> list[Path]:
        return [self.path] + ([self.deepspeed] if self.deepspeed else [])


def _check_format(fmt: str) -> None:
    if fmt not in EXPORT_FORMATS:
        raise FtplanError(f"--format: must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")


def deepspeed_path(path: Path, plan: Plan) -> Path | None:
    """The DeepSpeed JSON beside the YAML, named after it (two exports in one folder never share one)."""
    return path.with_name(f"{path.stem}.ds_z{plan.zero}.json") if plan.zero else None


def render_export(fmt: str, model: str, plan: Plan, path: str | Path, *, spec: ModelSpec | None = None,
                  hyper: Hyper | None = None, gpu: str | None = None, gpu_memory: str | None = None,
                  deepspeed: str | Path | None = None, dataset: str = DATASET) -> Export:
    """The export of `plan` as `fmt` at `path`, without writing anything. `model` is what the user gave (a
    preset, a Hub id, a local directory); `spec` its spec (needed for LoRA targets given by role, `all` outside
    LLaMA-Factory, and the chat template); `gpu` (a catalog GPU name) or `gpu_memory` name the GPU in the
    preflight command; `deepspeed` overrides where the DeepSpeed JSON goes (default: beside the YAML)."""
    _check_format(fmt)
    if Path(path).suffix.lower() not in (".yaml", ".yml"):
        raise FtplanError(f"{path}: an export is YAML; name it .yaml or .yml")
    model_id, name = model_for_export(model)
    path = Path(os.path.abspath(Path(path).expanduser()))
    ds = (Path(os.path.abspath(Path(deepspeed).expanduser())) if deepspeed is not None
          else deepspeed_path(path, plan))
    x = ExportInput(model=model_id, plan=plan, spec=spec, hyper=hyper or default_hyper(plan), path=path,
                    deepspeed=ds if plan.zero else None, name=name, dataset=dataset)
    rendered = _WRITERS[fmt](x)  # first: it refuses the stages and methods the framework lacks
    refused = prompt_groups_problem(plan)
    if refused:  # the trainer would stop at its config
        raise FtplanError(refused, field="batch_size")
    if plan.reference_model is not None and plan.stage not in REFERENCED | {"grpo"}:
        rendered.runs.setdefault("reference_model", (None, None if not plan.reference_model else
                                                     f"ftplan planned a frozen reference model, which {plan.stage} "
                                                     "does not use; none is exported"))
    runs = Plan.build(**{**plan.model_dump(), **{k: v for k, (v, _) in rendered.runs.items()}})
    notes = tuple(why for _, why in rendered.runs.values() if why)
    check = [f"ftplan preflight {shlex.quote(str(path))}", *([f"--gpu {shlex.quote(gpu)}"] if gpu else []),
             *([f"--gpu-memory {shlex.quote(gpu_memory)}"] if gpu_memory and not gpu else []),
             f"--gpus {plan.gpus}", *rendered.preflight]
    preflight = " ".join(check)
    placeholders = _placeholders(rendered.lines)
    header = _header(fmt, model_id, runs, rendered.launch, preflight, notes, placeholders)
    text = "\n".join([*header, "", *rendered.lines]) + "\n"
    return Export(fmt=fmt, path=path, text=text, deepspeed=x.deepspeed,
                  deepspeed_text=deepspeed_text(plan) if x.deepspeed else None, plan=runs, launch=rendered.launch,
                  preflight=preflight, notes=notes, placeholders=tuple(placeholders))


def write_export(fmt: str, model: str, plan: Plan, path: str | Path, *, spec: ModelSpec | None = None,
                 hyper: Hyper | None = None, gpu: str | None = None, gpu_memory: str | None = None,
                 existing: Existing = "refuse", inputs: Inputs | None = None, flag: str | None = None) -> Export:
    """Render and write an export (planner.files: an existing file is replaced only with `existing="replace"`,
    the TUI's `"rename"` picks free names, inputs are never written over). Every file is checked before any
    is written, and the DeepSpeed file is written before the YAML that points at it."""
    _check_format(fmt)
    mode = "refuse" if existing == "rename" else existing
    target = check_output(path, flag=flag, inputs=inputs, existing=existing)
    ds = deepspeed_path(target, plan)
    if ds is not None:
        ds = check_output(ds, flag=flag, inputs=inputs, existing=existing)
    exported = render_export(fmt, model, plan, target, spec=spec, hyper=hyper, gpu=gpu, gpu_memory=gpu_memory,
                             deepspeed=ds)
    fresh = exported.deepspeed is not None and not os.path.lexists(exported.deepspeed)
    if exported.deepspeed is not None:
        write_output(exported.deepspeed, exported.deepspeed_text or "", flag=flag, inputs=inputs, existing=mode)
    try:
        write_output(exported.path, exported.text, flag=flag, inputs=inputs, existing=mode)
    except FtplanError:
        if fresh:  # no DeepSpeed file without the config that points at it
            Path(exported.deepspeed).unlink(missing_ok=True)
        raise
    return exported


def _placeholders(lines: list[str]) -> list[str]:
    """What the REPLACE-WITH-YOUR-... values in `lines` stand for, in order."""
    found = re.findall(re.escape(PLACEHOLDER.format("")) + r"([A-Z]+(?:-[A-Z]+)*)", "\n".join(lines))
    return list(dict.fromkeys(name.lower().replace("-", " ") for name in found))


def _header(fmt: str, model: str, plan: Plan, launch: str, preflight: str, notes: tuple[str, ...],
            placeholders: list[str]) -> list[str]:
    zero = f", ZeRO-{plan.zero}" + (" with optimizer offload" if plan.offload_optimizer else "") if plan.zero else ""
    gpus = f"{plan.gpus} GPU" + ("s" if plan.gpus > 1 else "")
    lines = [f"# {TITLES[fmt]} config{DIALECTS[fmt]} written by `ftplan export`: {model}, {plan.method} {plan.stage}, "
             f"micro-batch {plan.batch_size} x {plan.grad_accum} accumulation on {gpus}{zero}, "
             f"{plan.seq_len} tokens",
             f"# check:  {preflight}",
             f"# launch: {launch}"]
    if fmt == "trl":
        lines.append(f"#   (the TRL CLI runs `accelerate launch --num_processes {plan.gpus}` itself, from "
                     "num_processes below)")
    if placeholders:
        lines.append(f"# Replace every {PLACEHOLDER.format('...')} value ({', '.join(placeholders)}) before "
                     "launching; until then the run stops at it.")
    if notes:
        lines.append(f"# Where {TITLES[fmt]} runs this otherwise than ftplan's plan (preflight plans what it "
                     "runs):")
        lines += [f"#   - {note}" for note in notes]
    return lines
