"""What `ftplan` skips at start-up, checked in a fresh process against the libraries' own state."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# runs `ftplan estimate --json`, then reports whether pydantic ever read the installed packages' entry points for
# plugins (its loader caches what it found in `_plugins`, None until it looks) and whether rich was imported
PROBE = """
import contextlib, io, json, sys
from tui.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    code = main(["estimate", "--model", "qwen2.5-0.5b-instruct", "--method", "lora", "--json"])
from pydantic.plugin import _loader
print(json.dumps({"code": code, "scanned": _loader._plugins is not None, "rich": "rich" in sys.modules}))
"""


def _probe(**env: str) -> dict:
    environ = {k: v for k, v in os.environ.items() if k != "PYDANTIC_DISABLE_PLUGINS"} | env
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=120,
                         env=environ)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_estimate_json_skips_the_plugin_scan_and_rich() -> None:
    assert _probe() == {"code": 0, "scanned": False, "rich": False}


@pytest.mark.parametrize("value", ["", "some_plugin"])
def test_a_plugin_setting_of_the_user_is_kept(value: str) -> None:
    assert _probe(PYDANTIC_DISABLE_PLUGINS=value)["scanned"]
