"""Start-up time of the TUI: a fresh interpreter until the first plan is on screen (target < 1.5 s).

    python benchmarks/bench_tui.py

Each run starts `python`, imports the app, runs it headless at 120x40 and stops at the
first `PlanChanged` (the form's plan computed and drawn). Prints the median of 5 runs,
next to a bare `python -c "import textual.app"` for scale.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import time
from tui.app import FtplanApp
from tui.plan_pane import PlanChanged

class Once(FtplanApp):
    def on_plan_changed(self, message: PlanChanged) -> None:
        self.exit()

Once().run(headless=True, size=(120, 40))
"""


def timed(code: str, runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True, timeout=60)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    app = timed(PROBE)
    bare = timed("import textual.app")
    print(f"{'measurement':<50} {'median':>8}")
    print(f"{'ftplan TUI: process start to first plan drawn':<50} {app:>7.2f}s   target < 1.5 s: "
          f"{'yes' if app < 1.5 else 'NO'}")
    label = 'python -c "import textual.app" (for scale)'
    print(f"{label:<50} {bare:>7.2f}s")


if __name__ == "__main__":
    main()
