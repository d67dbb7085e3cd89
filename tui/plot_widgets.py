"""The one module of the TUI that touches a plotting library (textual-plotext needs plotext 5)."""

from __future__ import annotations

import math

from textual_plotext import PlotextPlot

from diagnostics.report import StepRecord


class LossPlot(PlotextPlot):
    """The loss curve of a diagnostics run, redrawn as steps arrive."""

    def on_mount(self) -> None:
        self.plt.title("loss")
        self.plt.xlabel("step")

    def show(self, records: list[StepRecord]) -> None:
        points = [(r.step, r.loss) for r in records if math.isfinite(r.loss)]
        self.plt.clear_data()
        if points:
            self.plt.plot([p[0] for p in points], [p[1] for p in points], marker="braille")
        self.refresh()
