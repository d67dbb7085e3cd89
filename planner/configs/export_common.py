"""What every framework's export shares: the model as the framework loads it, the marked placeholders, the
DeepSpeed file, the LoRA targets as module names, and the YAML lines with their comments.

A writer (`export_llamafactory`, `export_trl`, `export_axolotl`) turns an `ExportInput` into a `Rendered`: the
YAML body, the command that launches it, and `runs`, the plan fields the framework runs otherwise than the plan
says (each with the comment that says so, or None where nothing that is planned changes). `planner.configs.
export` puts them together and writes the files.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from planner.configs.common import Hyper
from planner.errors import FtplanError, shown
from planner.params import ALL, ALL_LINEAR, ATTENTION_ALIASES, llamafactory_all, target_names
from planner.plan import Plan
from planner.spec import ModelSpec, resolve_preset

# A value that fails loudly where it is used (no dataset, model or module has this name) and says what to do.
PLACEHOLDER = "REPLACE-WITH-YOUR-{}"
DATASET = PLACEHOLDER.format("DATASET")


def placeholder(what: str) -> str:
    return PLACEHOLDER.format(what.upper().replace(" ", "-"))


@dataclass(frozen=True)
class ExportInput:
    """One export: the model as the framework loads it, the plan, and where the files go (absolute paths)."""

    model: str  # the Hub id, or the absolute path of a local model directory
    plan: Plan
    spec: ModelSpec | None
    hyper: Hyper
    path: Path  # the YAML
    deepspeed: Path | None  # the DeepSpeed JSON beside it, when the plan shards (ZeRO)
    name: str  # a short name of the model for output_dir
    dataset: str = DATASET


@dataclass
class Rendered:
    """A writer's output: the YAML body, its launch command, and how the framework runs the plan."""

    lines: list[str]
    launch: str
    # plan fields the framework runs with another value: field -> (value, comment or None when the estimate
    # is the same either way)
    runs: dict[str, tuple[Any, str | None]] = field(default_factory=dict)
    preflight: list[str] = field(default_factory=list)  # extra `ftplan preflight` arguments (e.g. --stage)


def default_hyper(plan: Plan) -> Hyper:
    """The optimisation settings an export writes when none are given: LLaMA-Factory's examples' (1e-4 for
    adapters, 1e-5 for full tuning, 5e-6 for preference stages, 10% warmup, cosine); GRPO at TRL's 1e-6."""
    if plan.stage in ("dpo", "orpo", "simpo", "kto"):
        rate = 5e-6
    elif plan.stage == "grpo":
        rate = 1e-6
    else:
        rate = 1e-4 if plan.peft else 1e-5
    return Hyper(learning_rate=rate, warmup_ratio=0.1, lr_scheduler="cosine")


def model_for_export(model: str) -> tuple[str, str]:
    """What `--model` is to a training framework, and a short name for output_dir.

    A preset or size alias is its Hub id (profiles/models/index.yaml); a Hub id stays; a local model directory,
    or the config.json inside one, is that directory's absolute path (the frameworks load weights from a
    directory, relative to where they are launched). A preset with no Hub repo (ftplan's own tiny-llama) or a
    config file that is not a model directory's cannot be trained by a framework: refused."""
    try:
        path = Path(model).expanduser()
        local = path.is_dir() or path.is_file()
    except (OSError, RuntimeError, ValueError):  # a name too long for a path, "~nobody": not a local model
        local = False
    if local:
        folder = path if path.is_dir() else path.parent
        if path.is_file() and path.name != "config.json":
            raise FtplanError(f"{shown(model)} is a config file, not a model directory: a training framework "
                              "loads the weights and tokenizer from a directory; give the directory that holds "
                              "config.json and the weights")
        folder = Path(os.path.abspath(folder))  # absolute, a symlinked folder kept as the user named it
        return str(folder), folder.name
    found = resolve_preset(model)
    if found is not None:
        preset, _alias = found
        if not preset.hub_id:
            raise FtplanError(f"{preset.name} is ftplan's own model (random weights, no Hub repo), which a "
                              "training framework cannot download; export a Hub model (e.g. 8b, or an owner/name "
                              "id) or a local model directory")
        return preset.hub_id, preset.hub_id.rsplit("/", 1)[-1]
    return model, model.rsplit("/", 1)[-1]


def deepspeed_json(plan: Plan) -> dict:
    """A DeepSpeed config with the plan's ZeRO stage and offload, "auto" elsewhere (the HF Trainer fills those
    in from its own arguments). `train_batch_size` is the plan's global batch, micro-batch x accumulation x
    GPUs: the HF Trainer (integrations/deepspeed.py trainer_config_process) and DeepSpeed refuse to start when
    the launched processes make another, so the file runs on the planned GPU count only."""
    zero: dict[str, Any] = {"stage": plan.zero, "overlap_comm": True, "contiguous_gradients": True}
    if plan.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if plan.offload_params:  # ZeRO-3 parameter offload (deepspeed/runtime/zero/offload_config.py)
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    if plan.zero == 3:  # the weights are gathered into one file when saving (HF Trainer, DeepSpeed docs)
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {"train_batch_size": plan.global_batch, "train_micro_batch_size_per_gpu": "auto",
            "gradient_accumulation_steps": "auto", "gradient_clipping": "auto",
            "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"}, "zero_optimization": zero}


def deepspeed_comment(plan: Plan, opener: str) -> str:
    """What the YAML says beside its `deepspeed:` path."""
    gpus = f"{plan.gpus} GPU" + ("s" if plan.gpus > 1 else "")
    return (f"absolute: {opener} opens it from the directory you launch in; its train_batch_size "
            f"{plan.global_batch} holds on {gpus} only")


def deepspeed_text(plan: Plan) -> str:
    return json.dumps(deepspeed_json(plan), indent=2) + "\n"


def module_targets(plan: Plan, spec: ModelSpec | None, *, keep_all: bool = False) -> list[str] | str:
    """The plan's LoRA target as module names a framework hands to peft: `all-linear` stays (peft expands it),
    LLaMA-Factory's `all` becomes the names it stands for in this model (unless `keep_all`), `attention` the
    attention projections. Needs the spec for the last two."""
    target = plan.lora_target.strip()
    lowered = {n.lower() for n in target_names(target)}
    if ALL_LINEAR in lowered:
        return ALL_LINEAR
    if ALL in lowered:
        if keep_all:
            return ALL
        names = llamafactory_all(spec) if spec is not None else None
    elif lowered & ATTENTION_ALIASES:
        names = (sorted({lin.name for group in spec.blocks for lin in group.block.linears
                         if lin.component == "attention"}) if spec is not None else None)
    else:
        return target_names(target)
    if names is None:
        raise FtplanError(f"{target} names modules by what they do, so the export needs the model to list them",
                          field="lora_target")
    if not names:
        raise FtplanError(f"{target}: this model has no nn.Linear projections for LoRA (GPT-2's are Conv1D); "
                          "use all-linear", field="lora_target")
    return names


_PLAIN = re.compile(r"^[A-Za-z0-9_./][A-Za-z0-9_./@+-]*$")
_RESERVED = {"true", "false", "yes", "no", "on", "off", "null", "~", "y", "n"}


def scalar(value: Any) -> str:
    """A YAML scalar that reads back as the same value and type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.1e}" if value and abs(value) < 1e-3 else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(scalar(v) for v in value) + "]"
    text = str(value)
    looks_numeric = re.fullmatch(r"[-+]?[\d._]+(e[-+]?\d+)?", text, re.IGNORECASE) is not None
    if _PLAIN.match(text) and text.lower() not in _RESERVED and not looks_numeric:
        return text
    return json.dumps(text)  # a JSON string is a YAML double-quoted scalar


class Lines:
    """YAML written line by line, so that comments sit where they belong."""

    def __init__(self) -> None:
        self.out: list[str] = []

    def section(self, title: str) -> None:
        if self.out:
            self.out.append("")
        self.out.append(f"### {title}")

    def key(self, name: str, value: Any, comment: str | None = None, indent: int = 0) -> None:
        line = f"{' ' * indent}{name}: {scalar(value)}"
        self.out.append(f"{line}  # {comment}" if comment else line)

    def block(self, name: str, comment: str | None = None, indent: int = 0) -> None:
        """A mapping's key; its keys follow with `indent + 2`."""
        self.out.append(f"{' ' * indent}{name}:" + (f"  # {comment}" if comment else ""))

    def comment(self, text: str, indent: int = 0) -> None:
        self.out.append(f"{' ' * indent}# {text}")


# The PEFT methods each framework's config can name: LLaMA-Factory's finetuning_type lora/oft (and
# quantization_bit), while TRL's ModelConfig (trl/trainer/utils.py get_peft_config) and axolotl's `adapter`
# (loaders/adapter.py) build only peft's LoraConfig. The others take a Python script with peft's config class.
PEFT_METHODS = {"llamafactory": ("lora", "qlora", "oft"), "trl": ("lora", "qlora"), "axolotl": ("lora", "qlora")}
PEFT_CLASSES = {"prefix": "PrefixTuningConfig", "prompt": "PromptTuningConfig", "ptuning": "PromptEncoderConfig",
                "ia3": "IA3Config", "oft": "OFTConfig", "adapter": "the adapters library's DoubleSeqBnConfig"}
TITLES = {"llamafactory": "LLaMA-Factory", "trl": "TRL", "axolotl": "axolotl"}


def refuse_peft_method(plan: Plan, framework: str, keys: str) -> None:
    """Stop an export of a PEFT method the framework's config has no key for (`keys`: the ones it has), naming
    the framework that has one, else peft's class."""
    if not plan.peft or plan.method in PEFT_METHODS[framework]:
        return
    others = [TITLES[f] for f, methods in PEFT_METHODS.items() if f != framework and plan.method in methods]
    hint = (f"export {plan.method} as a {' or '.join(others)} config" if others else
            f"no framework config ftplan writes has one: train it from a script with peft's "
            f"{PEFT_CLASSES[plan.method]}")
    raise FtplanError(f"{TITLES[framework]}'s config has no key for {plan.method} ({keys}); {hint}",
                      field="method")


PARALLEL_FIELDS = ("tensor_parallel", "pipeline_parallel", "expert_parallel", "context_parallel")


def parallel_runs(plan: Plan, written: tuple[str, ...], why: str) -> dict[str, tuple[Any, str | None]]:
    """The parallel sizes a framework's file does not carry (`written`: those it does): the run is data
    parallel in them, and the file says `why`. The node count is the launcher's, not the file's; per GPU it
    changes nothing."""
    runs: dict[str, tuple[Any, str | None]] = {
        name: (1, why) for name in PARALLEL_FIELDS if name not in written and getattr(plan, name) > 1}
    if plan.nodes > 1:
        runs["nodes"] = (1, None)
    return runs


def reset_unused(plan: Plan, defaults: dict[str, Any]) -> dict[str, Any]:
    """Plan fields that do nothing for this plan's method and stage, as the framework's reader reads them back
    when the file leaves them out (`defaults`: its defaults where they differ from the Plan's). The estimate is
    the same either way."""
    base = Plan()
    reset: dict[str, Any] = {}

    def unused(name: str) -> None:
        value = defaults.get(name, getattr(base, name))
        if getattr(plan, name) != value:
            reset[name] = value

    if not plan.lora_family:  # OFT's targets are lora_target too (planner.peft_methods)
        for name in ("lora_rank", "lora_dropout", "use_dora", *(() if plan.method == "oft" else ("lora_target",))):
            unused(name)
    if not plan.prompt_learning:
        unused("num_virtual_tokens")
    if plan.method != "prefix":
        unused("prefix_projection")
    if plan.method != "ptuning" and not plan.prefix_projection:
        unused("encoder_hidden_size")
    for name, method in (("encoder_type", "ptuning"), ("ia3_target", "ia3"), ("adapter_reduction", "adapter"),
                         ("oft_block_size", "oft"), ("oft_blocks", "oft")):
        if plan.method != method:
            unused(name)
    if plan.method != "qlora":
        unused("double_quant")
    if plan.method != "freeze":
        unused("freeze_trainable_layers")
    if plan.stage != "grpo":
        for name in ("num_generations", "vllm_gpu_memory_utilization"):
            unused(name)
    if plan.stage != "simpo":
        unused("nll_term")
    if plan.stage not in ("dpo", "kto"):
        unused("precompute_ref_log_probs")
    return reset
