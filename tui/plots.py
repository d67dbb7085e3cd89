"""Terminal plots of a diagnostics run: the loss curve (plotext) and a per-layer gradient-norm heatmap.

The only module of the command line that imports a plotting library.
"""

from __future__ import annotations

import math

from diagnostics.monitor import layer_sort_key
from diagnostics.report import StepRecord

SHADES = " ░▒▓█"


def loss_plot(records: list[StepRecord], width: int = 78, height: int = 14, color: bool = False) -> str:
    import plotext as plt

    steps = [r.step for r in records if math.isfinite(r.loss)]
    losses = [r.loss for r in records if math.isfinite(r.loss)]
    plt.clear_figure()
    plt.plotsize(width, height)
    plt.theme("clear")
    plt.plot(steps, losses, marker="braille")
    plt.title("loss")
    plt.xlabel("step")
    text = plt.build()
    return text if color else plt.uncolorize(text)


def norm_heatmap(records: list[StepRecord], max_columns: int = 60) -> str:
    """One row per layer, one column per step (sampled to fit), shade = log10 of the gradient norm
    relative to the whole run; `×` marks a non-finite norm, `·` an exactly zero one."""
    layers = sorted({k for r in records for k in r.layer_norms}, key=layer_sort_key)
    if not layers or not records:
        return ""
    stride = max(1, math.ceil(len(records) / max_columns))
    picked = records[::stride]
    logs = [math.log10(v) for r in picked for v in r.layer_norms.values() if v > 0 and math.isfinite(v)]
    low, high = (min(logs), max(logs)) if logs else (0.0, 1.0)
    span = max(high - low, 1e-9)
    width = max(len(name) for name in layers)
    lines = [f"{'':>{width}}  gradient norm per layer, log10 from {low:.1f} (░) to {high:.1f} (█); "
             f"steps {picked[0].step}..{picked[-1].step}" + (f" every {stride}" if stride > 1 else "")]
    for name in layers:
        cells = []
        for r in picked:
            v = r.layer_norms.get(name)
            if v is None:
                cells.append(" ")
            elif not math.isfinite(v):
                cells.append("×")
            elif v == 0:
                cells.append("·")
            else:
                level = 1 + int((math.log10(v) - low) / span * (len(SHADES) - 2) + 0.5)
                cells.append(SHADES[min(level, len(SHADES) - 1)])
        lines.append(f"{name:>{width}}  {''.join(cells)}")
    return "\n".join(lines)
