"""What the framework readers share: the file, typed key access, DeepSpeed, data files and the result types.

A framework's own key names, defaults and tables live in its module (`llamafactory`, `hf`, `axolotl`),
which describes itself with a `Framework`.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

from pydantic import BaseModel

from planner.errors import FtplanError
from planner.plan import Plan

Format = Literal["llamafactory", "hf", "axolotl"]

# The `optim` names of Hugging Face TrainingArguments, which all three frameworks pass through to it.
OPTIM = {
    "adamw_torch": "adamw", "adamw_hf": "adamw", "adamw": "adamw", "adamw_torch_fused": "adamw-fused",
    "adamw_bnb_8bit": "adamw-8bit", "adamw_8bit": "adamw-8bit", "bnb_8bit": "adamw-8bit",
    "paged_adamw_8bit": "paged-adamw-8bit", "paged_adamw_32bit": "adamw", "adafactor": "adafactor",
    "sgd": "sgd",
}
OPTIM_BACK = {"adamw": "adamw_torch", "adamw-fused": "adamw_torch_fused", "adamw-8bit": "adamw_bnb_8bit",
              "paged-adamw-8bit": "paged_adamw_8bit", "adafactor": "adafactor", "sgd": "sgd",
              "sgd-momentum": "sgd"}


class Hyper(BaseModel):
    """The optimisation settings that decide stability, in the framework-neutral form."""

    learning_rate: float | None = None
    epochs: float = 3.0
    max_steps: int | None = None
    lr_scheduler: str = "linear"
    warmup_ratio: float = 0.0
    warmup_steps: int = 0
    max_grad_norm: float | None = 1.0
    lora_alpha: float | None = None
    use_rslora: bool = False
    fp16: bool = False
    bf16: bool = False


class DataInfo(BaseModel):
    datasets: list[str] = []
    dataset_dir: str | None = None
    files: list[str] = []  # resolved data files, when found
    max_samples: int | None = None
    val_size: float = 0.0  # a share (< 1) or, as LLaMA-Factory allows, a number of examples (>= 1)
    samples: int | None = None  # examples, when known (counted, or capped by max_samples)

    @property
    def train_samples(self) -> int | None:
        if self.samples is None:
            return None
        held_out = self.val_size if self.val_size >= 1 else self.samples * self.val_size
        return max(0, int(self.samples - held_out))


class RunConfig(BaseModel):
    path: str
    format: Format
    model: str
    plan: Plan
    hyper: Hyper
    data: DataInfo
    gpus: int | None = None  # processes the config itself asks for (DeepSpeed/accelerate), if it says
    ignored: list[str] = []  # unknown keys, each with a "did you mean" where one is close
    notes: list[str] = []
    # The framework's key for each planner setting, for messages and --fix. Set by `read_run_config` (the
    # framework modules build RunConfigs, so this module cannot look their tables up); a property of the
    # format rather than of this run, hence not dumped.


@dataclass(frozen=True)
class Framework:
    """One framework: its reader and the tables that map its keys to planner settings."""

    name: Format
    read: Callable[[Keys, Path], RunConfig]
    model_key: str
    signature: frozenset[str]  # keys only this framework writes (format detection)
    recognised: frozenset[str]  # keys it accepts that change neither memory, stability nor time
    unwritable: frozenset[str]  # settings with a key that `--fix` cannot write as a plain value (e.g. a file)
    method_keys: Callable[[str], dict[str, Any]]  # a change of method, as keys and values
    # where a key's value differs from the planner's; a dict return sets several keys
    fix_values: dict[str, Callable[[Any], Any]] = field(default_factory=dict)
    default_lora_alpha: Callable[[int], float] | None = None  # of the LoRA rank, when lora_alpha is unset

    @property
    def writable(self) -> frozenset[str]:
        """The settings `--fix` and exports can write: every field with a key here (planner.fields)."""
        from planner import fields

        return frozenset(s.name for s in fields.FIELDS if self.name in s.keys) - self.unwritable


# ---------------------------------------------------------------- reading


def load_config_file(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise FtplanError(f"{path}: cannot read it ({exc.strerror})") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FtplanError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise FtplanError(f"{path}: not valid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise FtplanError(f"{path}: expected a mapping of settings (key: value), got {type(data).__name__}")
    return data


class Keys:
    """Typed access to a config's keys; records which keys were used."""

    def __init__(self, config: dict, path: str):
        self.config, self.path, self.used = config, path, set()

    def get(self, key: str, kind: type | tuple, default: Any = None):
        self.used.add(key)
        if key not in self.config or self.config[key] is None:
            return default
        value = self.config[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if kind is float and isinstance(value, str):  # YAML 1.1 reads 1e-4 as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if kind is bool and isinstance(value, str) and value.lower() in ("true", "false"):
            value = value.lower() == "true"
        if not isinstance(value, kind) or (kind in (int, float) and isinstance(value, bool)):
            names = {int: "a whole number", float: "a number", bool: "true or false", str: "text", list: "a list",
                     dict: "a mapping"}
            want = " or ".join(names.get(k, k.__name__) for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise FtplanError(f"{self.path}: key '{key}' must be {want}, got {value!r}")
        return value

    def positive(self, key: str, default: int) -> int:
        value = self.get(key, int, default)
        if value < 1:
            raise FtplanError(f"{self.path}: key '{key}' must be at least 1, got {value}")
        return value

    def joined(self, key: str, default: str) -> str:
        """A list of names, written as a list or comma-separated, as one comma-separated string."""
        value = self.get(key, (str, list), default)
        return ",".join(value) if isinstance(value, list) else value


def read_deepspeed(keys: Keys, base: Path) -> tuple[int, bool, str | None]:
    """ZeRO stage and optimizer offload from a DeepSpeed JSON (path or inline dict)."""
    spec = keys.get("deepspeed", (str, dict))
    if spec is None:
        return 0, False, None
    where = "key 'deepspeed'"
    if isinstance(spec, str):
        file = resolve_path(spec, base)
        if not file.is_file():
            raise FtplanError(f"{keys.path}: key 'deepspeed' points at {spec}, which does not exist (looked in "
                              f"the working directory and beside the config)")
        where = str(file)
        try:
            spec = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise FtplanError(f"{file}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    zero = spec.get("zero_optimization") if isinstance(spec, dict) else None
    if zero is None:
        zero = {}
    if not isinstance(spec, dict) or not isinstance(zero, dict):
        raise FtplanError(f"{keys.path}: {where} must be a DeepSpeed config object with a zero_optimization "
                          "mapping")
    stage = zero.get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise FtplanError(f"{keys.path}: DeepSpeed zero_optimization.stage must be 0-3, got {stage!r}")
    offload = (zero.get("offload_optimizer") or {}).get("device") in ("cpu", "nvme")
    note = f"DeepSpeed ZeRO-{stage}" + (" with optimizer offload" if offload else "")
    return stage, offload, note


def resolve_path(spec: str, base: Path) -> Path:
    """A relative path in a config: the frameworks resolve it from the working directory (where the training
    command runs); fall back to the config's own folder."""
    path = Path(spec).expanduser()
    if path.is_absolute() or path.exists():
        return path
    return base / path


def unknown_keys(config: dict, used: set[str], recognised: frozenset[str]) -> list[str]:
    known = used | recognised
    out = []
    for key in config:
        if key in known:
            continue
        close = difflib.get_close_matches(key, sorted(used), n=1, cutoff=0.8)
        out.append(f"{key} (did you mean {close[0]}?)" if close else key)
    return out


def precision_keys(precision: str) -> dict[str, bool]:
    """A precision as the `bf16` / `fp16` switches all three frameworks share."""
    return {"bf16": precision in ("bf16", "bf16-mixed"), "fp16": precision == "fp16-mixed"}


def precision_of(bf16: bool, fp16: bool, pure_bf16: bool, path: str) -> str:
    if bf16 and fp16:
        raise FtplanError(f"{path}: keys 'bf16' and 'fp16' are both true; choose one")
    if pure_bf16:
        return "bf16"
    return "bf16-mixed" if bf16 else "fp16-mixed" if fp16 else "fp32"


def build_plan(fmt: Format, path: str, **fields) -> Plan:
    """`Plan.build`, its errors worded with the framework's keys and the file's name."""
    from planner.fields import worded

    try:
        return Plan.build(**fields)
    except FtplanError as exc:
        raise FtplanError(worded(exc, fmt, where=path)) from None


def read_hyper(k: Keys, *, epochs: str, scheduler: str, scheduler_default: str, epochs_default: float,
               fp16: bool, bf16: bool) -> Hyper:
    """The optimisation keys all three frameworks share (under their own names for epochs and schedule)."""
    return Hyper(
        learning_rate=k.get("learning_rate", float, 5e-5), epochs=k.get(epochs, float, epochs_default),
        max_steps=k.get("max_steps", int), lr_scheduler=k.get(scheduler, str, scheduler_default),
        warmup_ratio=k.get("warmup_ratio", float, 0.0), warmup_steps=k.get("warmup_steps", int, 0),
        max_grad_norm=k.get("max_grad_norm", float, 1.0), lora_alpha=k.get("lora_alpha", float),
        use_rslora=k.get("use_rslora", bool, False) or k.get("peft_use_rslora", bool, False), fp16=fp16, bf16=bf16)


# ---------------------------------------------------------------- data files

_CHUNK = 1 << 16
_JSON_SPACE = re.compile(r"[ \t\n\r]*")  # what the json module skips; str.isspace() is wider


def count_records(path: Path) -> int:
    """Examples in a data file: the elements of a JSON array, else its non-blank lines (JSON lines).

    Streams the file, so a data set larger than memory can be counted; a malformed JSON array counts 0.
    """
    with path.open(encoding="utf-8", errors="replace") as file:
        first = next((chunk.lstrip()[:1] for chunk in iter(lambda: file.read(_CHUNK), "") if chunk.strip()), "")
        file.seek(0)
        if first == "[":
            return _count_array(file)
        return sum(1 for line in file if line.strip())


def _count_array(file: TextIO) -> int:
    """The top-level elements of the JSON array in `file`, decoded one at a time; 0 unless the whole file
    is valid JSON, as `len(json.load(file))` would say."""
    decoder = json.JSONDecoder()
    text, pos = "", 0

    def more() -> bool:
        nonlocal text, pos
        # Reads at least what is held, so an element longer than a chunk is re-decoded O(log n) times.
        chunk = file.read(max(_CHUNK, len(text) - pos))
        text, pos = text[pos:] + chunk, 0
        return bool(chunk)

    def next_char() -> str:
        nonlocal pos
        while True:
            pos = _JSON_SPACE.match(text, pos).end()
            if pos < len(text) or not more():
                return text[pos:pos + 1]

    if next_char() != "[":
        return 0
    pos += 1
    if next_char() == "]":
        pos += 1
        return 0  # empty, or followed by more text (invalid): 0 either way
    count = 0
    while True:
        try:
            _, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            if more():
                continue
            return 0
        if end == len(text) and more():  # a number can go on in the next chunk
            continue
        pos, count = end, count + 1
        after = next_char()
        pos += 1
        if after == "]":
            return 0 if next_char() else count
        if after != ",":
            return 0
        next_char()
