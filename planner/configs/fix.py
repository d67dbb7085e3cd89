"""`--fix`: planner changes as a framework's keys, written into a copy of the user's config.

The copy keeps the user's comments and key order: top-level `key: value` lines are edited in
place and new keys are appended.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from planner.configs import llamafactory
from planner.configs.common import OPTIM_BACK, Format, RunConfig
from planner.configs.export_common import scalar  # quoted where YAML would read it back otherwise
from planner.configs.read import FRAMEWORKS
from planner.fields import Vocabulary, cli_flags, name_in
from planner.files import Inputs, write_output


def config_changes(run: RunConfig, plan_changes: dict[str, Any], hyper_changes: dict[str, Any]) -> dict[str, Any]:
    """Planner-side changes (Plan fields, hyperparameters) as the keys and values of `run`'s framework."""
    return config_changes_for(run.format, {**plan_changes, **hyper_changes}, run.dialect)


def writable(fmt: Format, dialect: str = "") -> frozenset[str]:
    """The settings `--fix` can write into a file of this format (and dialect) as top-level keys."""
    return llamafactory.V1_WRITABLE if (fmt, dialect) == ("llamafactory", "v1") else FRAMEWORKS[fmt].writable


def config_changes_for(fmt: Format, changes: dict[str, Any], dialect: str = "") -> dict[str, Any]:
    """Planner-side changes as one framework's keys and values; settings it has no key for are left out."""
    framework = FRAMEWORKS[fmt]
    allowed = writable(fmt, dialect)
    out: dict[str, Any] = {}
    for field, value in changes.items():
        if field not in allowed:
            continue
        if field == "method":
            out.update(framework.method_keys(value))
            continue
        if field == "optimizer":
            value = OPTIM_BACK.get(value, value)
        convert = framework.fix_values.get(field)
        written = convert(value) if convert else value
        out.update(written if isinstance(written, dict) else {name_in(field, fmt): written})
    return llamafactory.v1_keys(out) if dialect == "v1" else out


def how(changes: dict[str, Any], vocabulary: Vocabulary) -> str:
    """A change in a front end's words: flags for the CLI, labels for the form, `key: value` for a config."""
    if vocabulary == "cli":
        return cli_flags(changes)
    if vocabulary == "tui":
        return ", ".join(f"{name_in(k, 'tui')} = {v}" for k, v in changes.items())
    return ", ".join(f"{k}: {v}" for k, v in config_changes_for(vocabulary, changes).items())


_LINE = re.compile(r"^(?P<key>[A-Za-z_][\w.-]*)(?P<sep>\s*:\s*)(?P<value>[^#\n]*?)(?P<trail>\s*(#.*)?)$")


def fix_config(source: str | Path, changes: dict[str, Any], target: str | Path, *, force: bool = False,
               inputs: Inputs | None = None) -> Path:
    """Write `source` with `changes` applied to `target`, keeping comments, blank lines and key order.

    Only top-level keys are edited; a key not present is appended under a comment. A change to None
    unsets a key the file has (`null`) and adds nothing when it has none (a writer retiring a deprecated
    spelling). JSON files are rewritten as JSON (JSON has no comments to keep). The source, and the other
    `inputs` of the run, are never modified; an existing target is replaced only with `force`; the target is
    written as planner.files writes every output.
    """
    return write_output(target, fixed_text(source, changes), flag="--fix",
                        inputs={"the config": source, **(inputs or {})}, existing="replace" if force else "refuse")


def fixed_text(source: str | Path, changes: dict[str, Any]) -> str:
    """The text of `source` with `changes` applied (see fix_config)."""
    source = Path(source)
    text = source.read_text(encoding="utf-8")
    if source.suffix.lower() == ".json":
        data = json.loads(text)
        data.update({k: v for k, v in changes.items() if v is not None or k in data})
        new_text = json.dumps(data, indent=2) + "\n"
    else:
        lines = text.splitlines()
        pending = dict(changes)
        for i, line in enumerate(lines):
            match = _LINE.match(line)
            if match and match.group("key") in pending:
                value = scalar(pending.pop(match.group("key")))
                lines[i] = f"{match.group('key')}{match.group('sep')}{value}{match.group('trail')}"
        pending = {k: v for k, v in pending.items() if v is not None}
        if pending:
            lines += ["", "### changed by ftplan preflight"] + [f"{k}: {scalar(v)}" for k, v in pending.items()]
        new_text = "\n".join(lines) + "\n"
    return new_text
