"""`--lr-find`: the learning-rate range test (Smith 2017, "Cyclical Learning Rates for Training Neural Networks",
Sec. 3.3; the form fastai's lr_find runs).

The run's steps ramp the learning rate exponentially from `START` to `END`; the loss first falls faster as
the rate grows, then turns up once the rate is too high for the model and data. The loss is smoothed with an
exponential moving average (bias-corrected, as fastai does; a short ramp needs a shorter memory than fastai's
0.98 over 100 steps), the run stops once the smoothed loss passes `STOP_FACTOR` x its best, and the advice is a
tenth of the rate at the best smoothed loss: the rate there is already the edge (the next steps turn the loss
up), and a tenth of it is where the loss still falls steeply, fastai's `lr_min / 10`.
"""

from __future__ import annotations

import math

from diagnostics.report import DiagnoseSettings, StepRecord
from planner.findings import Change, Finding

START, END = 1e-7, 1.0  # the ramp, from a rate that does nothing to one that breaks any model
SMOOTHING = 0.6  # EMA weight of the past
STOP_FACTOR = 4.0  # fastai's stop_div: the smoothed loss at 4x its best has clearly diverged
TURNED_UP = 1.1  # the smoothed loss ended this much above its best: it turned up within the ramp


def ramp(optimizer, steps: int):
    """A scheduler that multiplies the optimizer's rate (set to START) up to END over `steps`."""
    from torch.optim.lr_scheduler import LambdaLR

    growth = (END / START) ** (1 / max(1, steps - 1))
    return LambdaLR(optimizer, lambda k: growth ** k)


def smoothed(records: list[StepRecord]) -> list[float]:
    out, avg = [], 0.0
    for k, r in enumerate(records, 1):
        if not math.isfinite(r.loss):
            out.append(math.inf)
            continue
        avg = SMOOTHING * avg + (1 - SMOOTHING) * r.loss
        out.append(avg / (1 - SMOOTHING ** k))
    return out


def diverged(records: list[StepRecord]) -> bool:
    losses = smoothed(records)
    return not math.isfinite(losses[-1]) or losses[-1] > STOP_FACTOR * min(losses)


def lr_find_result(records: list[StepRecord], settings: DiagnoseSettings) -> tuple[list[Finding], list[Change]]:
    losses = smoothed(records)
    if len(records) < 3:
        return [], []
    best = min(range(len(losses)), key=losses.__getitem__)
    edge = records[best].lr
    turned = not math.isfinite(losses[-1]) or losses[-1] > TURNED_UP * losses[best]
    data = {"lrs": [r.lr for r in records], "smoothed": losses, "edge_lr": edge, "turned_up": turned}
    if not turned:
        return [Finding(code="lr_find", severity="info", message="LR range test: the loss never turned up",
                        evidence=f"over {len(records)} steps from {records[0].lr:.2g} to {records[-1].lr:.2g} the "
                                 "smoothed loss kept falling", data=data,
                        fix="run more steps (--steps) so the ramp reaches a rate that is too high")], []
    new = float(f"{edge / 10:.2g}")
    finding = Finding(
        code="lr_find", severity="info", message="LR range test",
        evidence=f"the smoothed loss was lowest at learning rate {edge:.2g} (step {records[best].step}) and turned "
                 f"up after it; the ramp ran from {records[0].lr:.2g} to {records[-1].lr:.2g} over "
                 f"{len(records)} steps",
        data=data, field="learning_rate")
    change = Change(title=f"Set the learning rate to {new:g}", changes={"learning_rate": new},
                    current={"learning_rate": settings.learning_rate},
                    reason=f"a tenth of {edge:.2g}, the rate before the loss turned up in the LR range test "
                           "(Smith 2017): there the loss still falls steeply")
    finding.change = change
    return [finding], [change]
