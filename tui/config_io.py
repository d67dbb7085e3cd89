"""A LLaMA-Factory / TRL / axolotl config in and out of the Plan form (`ftplan tui FILE`, the `o` key).

In: `read_run_config` gives the plan; its form settings fill the form. Out: the settings the user changed
since opening are written into a copy of the opened file with `--fix`'s key map and in-place editor, so the
user's other keys, comments and order stay as they were.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from planner.configs import RunConfig, config_changes_for
from planner.configs.fix import fixed_text, writable
from planner.configs.read import FRAMEWORKS
from planner.fields import FIELDS, name_in
from planner.files import write_output
from planner.plan import Plan

# settings the form edits, in the field table (the target's fields are the machine's, no config's)
_FORM = [s.name for s in FIELDS if s.widget is not None and s.owner == "plan"]


def form_values(run: RunConfig) -> dict[str, Any]:
    """The form's plan settings as the config sets them (its GPU count where it names one)."""
    values = {name: getattr(run.plan, name) for name in _FORM if name in Plan.model_fields}
    values["gpus"] = run.gpus or run.plan.gpus
    return values


def changed(opened: Plan, plan: Plan) -> dict[str, Any]:
    """The plan settings that differ from the opened config's."""
    return {k: getattr(plan, k) for k in Plan.model_fields if getattr(plan, k) != getattr(opened, k)}


def export_back(run: RunConfig, model: str, plan: Plan, target: str | Path) -> tuple[Path, list[str]]:
    """Write the opened config with the form's changes to `target` (a taken name gets -1, -2, ...); returns the
    path and the changed settings this format has no plain key for (left for the user, named by the form)."""
    changes = changed(run.plan, plan)
    allowed = writable(run.format, run.dialect)
    keys = config_changes_for(run.format, changes, run.dialect)
    if model != run.model:
        keys[FRAMEWORKS[run.format].model_key] = model
    skipped = [name_in(k, "tui") for k in changes if k not in allowed and k != "quant_bits"]
    path = write_output(target, fixed_text(run.path, keys), inputs={"the opened config": run.path},
                        existing="rename")
    return path, skipped
