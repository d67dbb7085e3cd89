"""The TUI starts without torch or transformers: importing the app loads neither (checked in a fresh process)."""

from __future__ import annotations

import json
import subprocess
import sys


def test_importing_the_app_loads_no_torch() -> None:
    code = ("import json, sys\nimport tui.app\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
            "{'torch', 'transformers', 'peft', 'accelerate', 'bitsandbytes'})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
