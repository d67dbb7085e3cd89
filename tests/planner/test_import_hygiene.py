"""The planner stays pure: importing it or running `ftplan estimate` loads no torch, transformers or textual."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "textual", "plotext", "pynvml",
         "huggingface_hub")

PROBE = """
import json, sys
{body}
print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r})))
"""


def _loaded(body: str) -> list[str]:
    code = PROBE.format(body=body, heavy=HEAVY)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_every_planner_module_loads_nothing_heavy() -> None:
    modules = ["planner." + m for m in ("spec", "architectures", "params", "methods", "activations", "memory",
                                        "plan", "fit", "advice", "flops", "hardware", "estimate", "units")]
    assert _loaded("\n".join(f"import {m}" for m in modules)) == []


def test_estimate_command_loads_nothing_heavy() -> None:
    body = ("import contextlib, io\nfrom tui.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    main(['estimate', '--model', '7b', '--method', 'qlora', '--gpu', 'H100', '--max-batch'])")
    assert _loaded(body) == []
