"""Loss spikes: residuals against a local trend, and whether a spike is a hard batch or an instability.

The trend at each step is a Theil-Sen line (the median of pairwise slopes: robust to a spike among its points)
through up to `TREND_SPAN` neighbours on each side, the step itself left out. Read after the run, both sides
are known, so the trend interpolates: in the early descent, where the loss falls fast and bends, a line
extrapolated from the past alone undershoots the next loss and makes every healthy step look like a spike; a
chord between the neighbours stays above a convex descent instead. So spikes count from the second step on.

A spike is a residual over `SPIKE_SIGMAS` robust standard deviations of the run's residuals (1.4826 x their
median absolute value, floored at `NOISE_FLOOR` of the loss so a smooth run does not call every wiggle a spike)
that is also a rise of `SPIKE_RISE` over the trend. A gradient-norm jump at the same step (over
`GRAD_CONFIRM` x the neighbours' median) is an independent second sign: together they count at half the bars.

A spike is either a hard batch (the data: this batch is worse than the others, the model is fine) or an
instability (the last update damaged the model). The loop tells them apart when a step's loss jumps
(`suspect`): it re-evaluates the previous step's micro-batches at the weights that made the spike, before that
step's update (`StepRecord.recheck_loss`). A model that got worse is worse on a batch it handled a step ago
too: if that batch's loss rose by at least half the spike's own rise, it is an instability; if not, the spiking
batch is hard.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from diagnostics.report import StepRecord

TREND_SPAN = 4  # neighbours on each side of a step in its trend line
SPIKE_SIGMAS = 6.0  # residual, in robust standard deviations of the run's residuals
SPIKE_RISE = 0.2  # and a rise of this share over the trend (a fifth: beyond batch-to-batch variation)
NOISE_FLOOR = 0.01  # the residuals' deviation is taken as at least this share of the loss
GRAD_CONFIRM = 3.0  # a gradient norm this many times its neighbours' median confirms a loss spike
# the loop re-evaluates the previous batch when the loss rises this much over the lowest of the last 3 steps:
# a cheap, one-sided bar below what the trend rule needs, so every spike the rule finds has its re-evaluation
SUSPECT_RISE = 0.05


@dataclass
class Spike:
    step: int
    loss: float
    trend: float
    grad_confirmed: bool
    # "hard batch", "instability", or None: no re-evaluation (a report from before it existed, a sharded run)
    kind: str | None
    recheck_rise: float | None  # how much the previous batch's loss rose at the spiking weights (share)

    @property
    def rise(self) -> float:
        return self.loss / self.trend - 1 if self.trend > 0 else math.inf


def _theil_sen(points: list[tuple[float, float]]) -> tuple[float, float]:
    slopes = [(y2 - y1) / (x2 - x1) for i, (x1, y1) in enumerate(points) for x2, y2 in points[i + 1:] if x2 != x1]
    slope = statistics.median(slopes) if slopes else 0.0
    return slope, statistics.median(y - slope * x for x, y in points)


def trend(points: list[tuple[int, float]]) -> list[float | None]:
    """Each point's trend value from its neighbours (None for the first point: nothing before it)."""
    out: list[float | None] = [None]
    for i in range(1, len(points)):
        near = [points[j] for j in range(max(0, i - TREND_SPAN), min(len(points), i + TREND_SPAN + 1)) if j != i]
        slope, intercept = _theil_sen(near)
        out.append(intercept + slope * points[i][0])
    return out


def _grad_jumps(records: list[StepRecord]) -> set[int]:
    norms = [r.grad_norm for r in records]
    out = set()
    for i, norm in enumerate(norms):
        near = [n for j, n in enumerate(norms[max(0, i - TREND_SPAN):i + TREND_SPAN + 1], max(0, i - TREND_SPAN))
                if j != i and math.isfinite(n) and n > 0]
        if near and math.isfinite(norm) and norm > GRAD_CONFIRM * statistics.median(near):
            out.add(records[i].step)
    return out


def loss_spikes(records: list[StepRecord]) -> list[Spike]:
    finite = [r for r in records if math.isfinite(r.loss)]
    if len(finite) < TREND_SPAN + 1:
        return []
    points = [(r.step, r.loss) for r in finite]
    fitted = trend(points)
    residuals = [y - t for (_, y), t in zip(points, fitted, strict=True) if t is not None]
    sigma = max(1.4826 * statistics.median(abs(r) for r in residuals),
                NOISE_FLOOR * statistics.median(y for _, y in points))
    jumps = _grad_jumps(records)
    previous = {r.step: finite[i - 1] for i, r in enumerate(finite) if i > 0}
    out = []
    for record, t in zip(finite, fitted, strict=True):
        if t is None or t <= 0:
            continue
        confirmed = record.step in jumps
        bar = 0.5 if confirmed else 1.0
        if record.loss - t > bar * SPIKE_SIGMAS * sigma and record.loss > (1 + bar * SPIKE_RISE) * t:
            out.append(_classify(record, t, confirmed, previous.get(record.step)))
    return out


def _classify(record: StepRecord, t: float, confirmed: bool, before: StepRecord | None) -> Spike:
    spike = Spike(record.step, record.loss, t, confirmed, None, None)
    if record.recheck_loss is None or before is None or before.step != record.step - 1 or before.loss <= 0:
        return spike
    spike.recheck_rise = record.recheck_loss / before.loss - 1
    spike.kind = "instability" if spike.recheck_rise > spike.rise / 2 else "hard batch"
    return spike


def suspect(losses: list[float], loss: float) -> bool:
    """Whether the loop should re-evaluate the previous batch for this step (`losses`: the steps before it)."""
    recent = [x for x in losses[-3:] if math.isfinite(x)]
    return bool(recent) and math.isfinite(loss) and loss > (1 + SUSPECT_RISE) * min(recent)
