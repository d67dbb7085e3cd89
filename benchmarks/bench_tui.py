"""Responsiveness of the TUI: start-up to the first plan (target < 1.5 s), and a form change to its redraw
(target < 100 ms).

    python benchmarks/bench_tui.py

Start-up: each run starts `python`, imports the app, runs it headless at 120x40 and stops at the first
`PlanChanged` once the screen has been refreshed after it (the form's plan computed and drawn); the median of 5
runs after a warm-up run (bytecode cached, as in an installed app), next to a bare
`python -c "import textual.app"` for scale. Redraw: in one headless app, the micro-batch field is changed
20 times; each time is from setting the field to the refresh after the new plan arrives (the planner
run, the breakdown, time and the screen update); the median and the slowest are printed. The suggestions and
the path to fit of a plan that does not fit follow in a worker (tui.plan_pane ADVICE_PAUSE_S after the last
change): the third line times a change to such a plan until its suggestions are on screen (no target).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
from tui.app import FtplanApp
from tui.plan_pane import PlanChanged

class Once(FtplanApp):
    def on_plan_changed(self, message: PlanChanged) -> None:
        self.call_after_refresh(self.exit)  # drawn, not only computed

Once().run(headless=True, size=(120, 40))
"""

REDRAW = """
import time
from tui.app import FtplanApp
from tui.plan_pane import PlanChanged

class Redraws(FtplanApp):
    times, started, changes = [], None, 0

    def on_plan_changed(self, message: PlanChanged) -> None:
        self.call_after_refresh(self.drawn if self.started is not None else self.change)

    def change(self) -> None:
        self.changes += 1
        self.started = time.perf_counter()
        self.query_one("#batch_size").value = str(1 + self.changes % 4)

    def drawn(self) -> None:
        self.times.append(time.perf_counter() - self.started)
        if len(self.times) == 20:
            self.exit(self.times)
        else:
            self.change()

times = Redraws().run(headless=True, size=(120, 40))
print(" ".join(f"{t:.6f}" for t in times))
"""


ADVICE = """
import time
from tui.app import FtplanApp
from tui.plan_pane import PlanChanged

class Advised(FtplanApp):
    times, started, changes = [], None, 0

    def on_plan_changed(self, message: PlanChanged) -> None:
        if self.started is None:  # the first plan (7b LoRA at micro-batch 1 fits the 4090)
            self.started = 0.0
            self.call_after_refresh(self.change)

    def batch(self) -> int:
        return 2 + self.changes % 3  # 2-4: 7b LoRA at sequence 2048 does not fit the 4090

    def change(self) -> None:
        self.changes += 1
        self.started = time.perf_counter()
        self.query_one("#batch_size").value = str(self.batch())
        self.set_timer(0.005, self.poll)

    def poll(self) -> None:
        state = self.state
        if (state is not None and state.plan.batch_size == self.batch() and state.result.suggestions
                and self.query_one("#suggestions").option_count):
            self.call_after_refresh(self.shown)
        else:
            self.set_timer(0.005, self.poll)

    def shown(self) -> None:
        self.times.append(time.perf_counter() - self.started)
        if len(self.times) == 8:
            self.exit(self.times)
        else:
            self.change()

times = Advised().run(headless=True, size=(120, 40))
print(" ".join(f"{t:.6f}" for t in times))
"""


# As an installed app starts: with its bytecode cached (a warm-up run writes it). Without it every start
# compiled the whole of planner/ and tui/ again: a tenth of a second, more on a busy machine.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def timed(code: str, runs: int = 5) -> float:
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True, timeout=60, env=ENV)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True, timeout=60,
                       env=ENV)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def redraws(code: str = REDRAW) -> list[float]:
    out = subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env=ENV).stdout
    return [float(t) for t in out.split()]


def main() -> None:
    app = timed(PROBE)
    bare = timed("import textual.app")
    changes = redraws()
    redraw, slowest = statistics.median(changes), max(changes)
    advised = statistics.median(redraws(ADVICE))
    print(f"{'measurement':<50} {'median':>8}")
    print(f"{'ftplan TUI: process start to first plan drawn':<50} {app:>7.2f}s   target < 1.5 s: "
          f"{'yes' if app < 1.5 else 'NO'}")
    label = 'python -c "import textual.app" (for scale)'
    print(f"{label:<50} {bare:>7.2f}s")
    print(f"{'a form change (micro-batch) to its redraw':<50} {redraw * 1000:>6.0f}ms   target < 100 ms: "
          f"{'yes' if redraw < 0.1 else 'NO'} (slowest of {len(changes)}: {slowest * 1000:.0f} ms)")
    print(f"{'a change that does not fit, to its suggestions':<50} {advised * 1000:>6.0f}ms")


if __name__ == "__main__":
    main()
