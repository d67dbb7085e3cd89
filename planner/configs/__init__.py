"""Training configs as people write them: LLaMA-Factory, Hugging Face TrainingArguments / TRL, axolotl.

`read_run_config(path)` turns a YAML or JSON file into a `RunConfig`: the model, the `Plan` the
planner needs, the optimisation hyperparameters, the data, and the keys it ignored. Every
problem names the key (and the file). One module per framework holds its reader, defaults and
key tables; `checks` are the static checks, `fix` writes a corrected copy (`--fix`) and
`export` writes a plan as a LLaMA-Factory, TRL or axolotl config that runs as written (one
`export_*` module per framework). YAML is imported only when a file is read.
"""

from planner.configs.checks import static_checks, total_steps
from planner.configs.common import DataInfo, Format, Hyper, RunConfig, load_config_file, resolve_path
from planner.configs.export import (
    EXPORT_FORMATS,
    Export,
    deepspeed_json,
    llamafactory_yaml,
    render_export,
    write_export,
)
from planner.configs.fix import config_changes, config_changes_for, fix_config, how
from planner.configs.read import detect_format, read_run_config

__all__ = [
    "EXPORT_FORMATS",
    "DataInfo",
    "Export",
    "Format",
    "Hyper",
    "RunConfig",
    "config_changes",
    "config_changes_for",
    "deepspeed_json",
    "detect_format",
    "fix_config",
    "how",
    "llamafactory_yaml",
    "load_config_file",
    "read_run_config",
    "render_export",
    "resolve_path",
    "static_checks",
    "total_steps",
    "write_export",
]
