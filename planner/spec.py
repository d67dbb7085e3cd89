"""Where a `ModelSpec` comes from (the types are in `planner.modelspec`, re-exported here).

A spec is built from a plain config dict (see `planner.architectures` for the
per-family readers) and loaded from one of these sources, tried in this order:

1. a local directory holding `config.json`, or a path to a JSON file;
2. a preset name or size alias from `profiles/models/` (offline, always works);
3. a hub id (owner/name): the user's own copy first, then ours, then the network:
   a. the local Hugging Face cache's `config.json` (no network);
   b. a preset whose `hub_id` is that id (offline);
   c. the hub: only `config.json` is fetched, through `huggingface_hub`
      (imported lazily: it costs ~0.2 s).

`ModelSpec.source` says which: a path, "preset: NAME", "HF cache: ID (PATH)" or "hub: ID".
"""

from __future__ import annotations

import json
import os
import stat
from functools import cache
from importlib import resources
from pathlib import Path
from typing import NamedTuple

from planner.architectures import read_config
from planner.bounded import read_text
from planner.errors import EnvironmentMissing, FtplanError, shortened, shown
from planner.files import FILE_KINDS, path_error
from planner.modelspec import (
    MLP,
    Attention,
    Block,
    BlockGroup,
    FrozenModel,
    Linear,
    ModelSpec,
    Norm,
    NormKind,
    Quantization,
)

__all__ = [
    "MLP",
    "Attention",
    "Block",
    "BlockGroup",
    "Linear",
    "ModelSource",
    "ModelSpec",
    "Norm",
    "NormKind",
    "Preset",
    "PresetIndex",
    "Quantization",
    "load_preset",
    "load_spec",
    "preset_index",
    "resolve_model",
    "resolve_preset",
    "spec_from_config",
    "spec_of",
]


# ---------------------------------------------------------------- loading


def spec_from_config(config: dict, source: str = "<config>", name: str | None = None) -> ModelSpec:
    """Build a spec from a config.json dict; `source` names it in error messages."""
    if not isinstance(config, dict):
        raise FtplanError(f"{source}: expected a JSON object (a config.json), got {type(config).__name__}")
    return read_config(config, source=source, name=name)


# A config.json is a few kilobytes (the largest real ones, with label maps, stay under 1 MiB): more is a wrong path
# or a hostile file, and parsing hundreds of megabytes would take seconds and gigabytes.
MAX_CONFIG_BYTES = 8 << 20


def _kind(path: Path, where: str) -> str | None:
    """What is at `path`, symlinks followed: "file", "folder" or another kind of `FILE_KINDS`; None when nothing is."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise path_error(exc, where, "give a preset, a hub id or the model's directory") from None
    except ValueError:  # an embedded NUL byte: no file has such a name
        return None
    return "file" if stat.S_ISREG(mode) else FILE_KINDS.get(stat.S_IFMT(mode), "special file")


def _read_json(path: Path) -> dict:
    text = read_text(path, "the model's config.json", limit=MAX_CONFIG_BYTES)
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FtplanError(
            f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); fix the file"
        ) from None
    except RecursionError:  # the decoder stops at Python's recursion limit, about a thousand levels
        raise FtplanError(f"{path}: JSON nested too deeply (about a thousand levels or more; a config.json has "
                          "a few); fix the file") from None
    except ValueError:  # Python refuses integers of more than 4,300 digits (CVE-2020-10735)
        raise FtplanError(f"{path}: not valid JSON (a number of more than 4,300 digits); fix the file") from None
    if not isinstance(config, dict):
        raise FtplanError(f"{path}: expected a JSON object with model settings, got {type(config).__name__}")
    return config


class Preset(FrozenModel):
    name: str
    hub_id: str | None = None
    published_params: int | None = None
    source: str | None = None
    file: str


class PresetIndex(FrozenModel):
    presets: dict[str, Preset]
    aliases: dict[str, str]


def _models_dir():
    return resources.files("profiles") / "models"


@cache
def preset_index() -> PresetIndex:
    import yaml

    # libyaml's loader where PyYAML was built with it: the pure-Python one spends ~30 ms of a cold
    # `ftplan estimate` on this file; both build the same data from it
    text = (_models_dir() / "index.yaml").read_text(encoding="utf-8")
    raw = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    presets = {
        name: Preset(name=name, file=entry.get("file", f"{name}.json"), **{
            k: v for k, v in entry.items() if k in ("hub_id", "published_params", "source")
        })
        for name, entry in raw["presets"].items()
    }
    aliases = {str(k).lower(): v for k, v in (raw.get("aliases") or {}).items()}
    return PresetIndex(presets=presets, aliases=aliases)


def resolve_preset(name: str) -> tuple[Preset, str | None] | None:
    """Find a preset by name, size alias or hub id (case-insensitive).

    Returns the preset and, for a size alias, the alias itself.
    """
    index = preset_index()
    key = name.strip().lower()
    if key in index.aliases:
        return index.presets[index.aliases[key]], key
    by_name = {n.lower(): p for n, p in index.presets.items()}
    if key in by_name:
        return by_name[key], None
    for preset in index.presets.values():
        if preset.hub_id and preset.hub_id.lower() == key:
            return preset, None
    return None


class ModelSource(NamedTuple):
    """Where a model's config came from; `directory` is set for a local model folder (it may hold weights)."""

    config: dict
    source: str
    name: str
    directory: Path | None = None
    stands_for: str | None = None


def _preset_source(name: str) -> ModelSource:
    found = resolve_preset(name)
    if found is None:
        raise FtplanError(f"--model: no preset named {shown(name)}; run `ftplan models` to list them")
    preset, alias = found
    config = json.loads((_models_dir() / preset.file).read_text(encoding="utf-8"))
    label = preset.hub_id or preset.name
    if alias:
        return ModelSource(config, f"preset: {preset.name}", alias, stands_for=label)
    return ModelSource(config, f"preset: {preset.name}", label)


def load_preset(name: str) -> ModelSpec:
    return spec_of(_preset_source(name))


def spec_of(src: ModelSource) -> ModelSpec:
    """The spec of a resolved model, saying which real model a size alias stands for."""
    spec = spec_from_config(src.config, source=src.source, name=src.name)
    return spec.model_copy(update={"stands_for": src.stands_for}) if src.stands_for else spec


def _looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "~"))


def _hf():
    try:
        import huggingface_hub as hf
    except ImportError:  # pragma: no cover - a core dependency
        raise EnvironmentMissing("huggingface_hub is not installed; pip install huggingface_hub") from None
    return hf


def _hub_cache_dir() -> str | None:
    """The hub cache as huggingface_hub would find it at import: HF_HUB_CACHE, else HF_HOME/hub; read at call
    time, so a variable set after huggingface_hub was imported still counts (None: its own default)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.path.expandvars(os.environ["HF_HUB_CACHE"]))
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.path.expandvars(os.environ["HF_HOME"])), "hub")
    return None


def _cached_config_path(repo_id: str) -> Path | None:
    """`config.json` of `repo_id` (revision main) in the local HF cache, without touching the network."""
    hf = _hf()
    try:
        cached = hf.try_to_load_from_cache(repo_id, "config.json", cache_dir=_hub_cache_dir())
    except Exception:  # huggingface_hub's HFValidationError: not a legal repo id
        raise FtplanError(f"--model {shortened(repo_id)}: not a valid hub id (owner/name with letters, digits, '-', '_', "
                          "'.'); or give a preset (`ftplan models`) or a local directory") from None
    return Path(cached) if isinstance(cached, str) else None  # None, or the cached "does not exist" marker


def _hub_config_path(repo_id: str) -> Path:
    """Download `config.json` of `repo_id` (only it) from the hub."""
    hf = _hf()
    try:
        return Path(hf.hf_hub_download(repo_id, "config.json", cache_dir=_hub_cache_dir()))
    except Exception as exc:  # offline, gated, missing: all end the same way for the user
        reason = type(exc).__name__
        raise EnvironmentMissing(
            f"--model {repo_id}: config.json is not in the local cache and the hub cannot be reached "
            f"({reason}); download it once with `hf download {repo_id} config.json`, "
            "or pass a local directory or a preset (`ftplan models`)"
        ) from None


def resolve_model(model: str) -> ModelSource:
    """Resolve `--model`: a local dir / config.json path, a preset or alias, or a hub id."""
    if not model or not model.strip():
        raise FtplanError("--model: empty; give a preset (e.g. 7b), a hub id or a local directory")
    where = f"--model {shortened(model)}"
    try:
        path = Path(model).expanduser()
    except RuntimeError:  # "~someone" with no such user: not a home directory, so not a path ftplan can read
        path = Path(model)
    kind = _kind(path, where)
    if kind == "folder":
        config_file = path / "config.json"
        inner = _kind(config_file, f"--model {shortened(str(config_file))}")
        if inner is None:
            raise FtplanError(f"{where}: the directory has no config.json; point at a model directory")
        if inner != "file":
            raise FtplanError(f"{where}: its config.json is a {inner}, not a regular file; point at a model "
                              "directory")
        return ModelSource(_read_json(config_file), str(config_file), path.name, directory=path)
    if kind == "file":
        # a model folder's config.json is named after the folder; any other JSON file after itself
        named = path.parent.name if path.name == "config.json" else path.stem
        return ModelSource(_read_json(path), str(path), named or path.stem)
    if kind is not None:
        raise FtplanError(f"{where}: is a {kind}, not a config.json file or a model directory; point at one of "
                          "those")
    if os.path.islink(path):  # a link the user made means a local path, even one shaped like a hub id
        raise FtplanError(f"{where}: is a symlink to {shortened(os.readlink(path))}, which does not exist; fix the "
                          "link")
    preset = resolve_preset(model)
    if _looks_like_hub_id(model):
        # the user's cached config.json wins over our preset of the same id (it may be a newer revision,
        # a fine-tune's, or a pre-quantized one); the preset keeps an uncached id working offline
        ids = [model] + ([preset[0].hub_id] if preset and preset[0].hub_id and preset[0].hub_id != model else [])
        for repo_id in ids:
            cached = _cached_config_path(repo_id)
            if cached is not None:
                return ModelSource(_read_json(cached), f"HF cache: {repo_id} ({cached})", repo_id)
        if preset is not None:
            return _preset_source(model)
        return ModelSource(_read_json(_hub_config_path(model)), f"hub: {model}", model)
    if preset is not None:
        return _preset_source(model)
    if model.endswith(".json") or "/" in model or model.startswith("."):
        raise FtplanError(f"{where}: no such file or directory")
    raise FtplanError(
        f"{where}: not a preset, a hub id (owner/name) or a local path; run `ftplan models` to list presets"
    )


def load_spec(model: str) -> ModelSpec:
    return spec_of(resolve_model(model))


def resolves_offline(model: str) -> bool:
    """Whether `resolve_model` answers without the network: anything not shaped like a hub id is a local path,
    a preset, or an error. (A hub id may be cached, but a cache miss asks the hub.)"""
    return not _looks_like_hub_id(model.strip())
