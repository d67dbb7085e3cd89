"""Gradient norms across depth: vanishing toward the input, and the reverse profile of a broken init.

Each block's gradient norm is reduced to its median over the steps, taken in log10 (orders of magnitude),
and read as a profile over block depth:

* the slope is the least-squares fit of log-norm on depth, reported per block;
* the gap compares the two ends of the network: the median log-norm of the top blocks minus that of the
  bottom blocks, a twelfth of the depth at each end (one block up to 23 blocks, two in a 24-layer model),
  so one odd block (the first often is) does not decide the verdict alone;
* consistency is Spearman's rank correlation of log-norm with depth: near +1 or -1 when the norms fall (or
  rise) block after block, whatever the curve's shape, low for noise and for a few isolated blocks.

Healthy pre-LN models (every decoder ftplan plans) keep their blocks within about one order of magnitude at
init and in fine-tuning: the residual stream hands every block the output gradient unattenuated (Xiong et al.
2020, "On Layer Normalization in the Transformer Architecture", Sec. 3), measured here at 0.3 orders over 24
blocks. Post-LN stacks attenuate toward the input (ibid.; 0.5 orders in a healthy 24-layer OPT post-LN).
Two orders at a rank correlation of 0.8 sits well clear of both, and a clean geometric decay of 2.7 orders
over 24 layers (the case that `VANISH_RATIO` against the median block missed) is well past it.

The reverse profile (the first blocks' gradients orders of magnitude above the last ones') is what weights
initialised far too large give: each block multiplies the backward signal on its way to the input (a 24-layer
Llama at init std 1.0 instead of 0.02: 3 orders, first loss 2.8 x ln V). It is an initialisation problem:
clipping would only hide it, so the advice is about the init, with the first loss against ln(vocab) (the loss
of uniform predictions, what a sane init starts from) as evidence.
"""

from __future__ import annotations

import math
import statistics

from diagnostics.report import StepRecord
from planner.findings import Finding

DEPTH_ORDERS = 2.0  # top-vs-bottom gap, in orders of magnitude, that counts as vanishing (or reversed)
DEPTH_CONSISTENCY = 0.8  # |Spearman rank correlation| of log-norm with depth: the norms move block after block
DEPTH_MIN_BLOCKS = 4  # fewer blocks have no slope to speak of: only the isolated-block check applies
VANISH_RATIO = 1e-3  # a single block this far below the median block is not learning, whatever the profile
# A first loss this many times ln(V) means logits far from uniform at the start: a too-large output scale
HIGH_INITIAL_LOSS = 1.5


def _finite_positive(xs) -> list[float]:
    return [x for x in xs if x is not None and math.isfinite(x) and x > 0]


def block_medians(records: list[StepRecord]) -> dict[int, float]:
    """Each block's median gradient norm over the steps (blocks with no positive norm left out)."""
    keys = {k for r in records for k in r.layer_norms if k.startswith("block.") and k.count(".") == 1}
    out = {}
    for key in keys:
        values = _finite_positive(r.layer_norms.get(key) for r in records)
        if values:
            out[int(key.split(".")[1])] = statistics.median(values)
    return dict(sorted(out.items()))


def _ranks(xs: list[float]) -> list[float]:
    order = sorted(range(len(xs)), key=xs.__getitem__)
    ranks = [0.0] * len(xs)
    i = 0
    while i < len(order):  # ties share their mean rank
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def _correlation(xs: list[float], ys: list[float]) -> float:
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else 0.0


def profile(medians: dict[int, float]) -> dict | None:
    """Slope (orders per block), gap (top minus bottom, orders) and consistency of a depth profile."""
    if len(medians) < DEPTH_MIN_BLOCKS:
        return None
    depth = [float(i) for i in medians]
    logs = [math.log10(v) for v in medians.values()]
    mx, my = statistics.fmean(depth), statistics.fmean(logs)
    slope = sum((x - mx) * (y - my) for x, y in zip(depth, logs, strict=True)) / sum((x - mx) ** 2 for x in depth)
    end = max(1, len(logs) // 12)
    gap = statistics.median(logs[-end:]) - statistics.median(logs[:end])
    return {"slope": slope, "gap": gap, "consistency": _correlation(_ranks(depth), _ranks(logs)), "end_blocks": end}


def depth_findings(records: list[StepRecord], *, first_loss: float | None = None,
                   vocab_size: int | None = None) -> list[Finding]:
    medians = block_medians(records)
    if len(medians) < 2:
        return []
    shape = profile(medians)
    reference = statistics.median(medians.values())
    low = [f"block.{i}" for i, v in medians.items() if v < VANISH_RATIO * reference]
    data = {"block_medians": {f"block.{i}": v for i, v in medians.items()}, "low_blocks": low, **(shape or {})}
    vanishing = shape is not None and shape["gap"] >= DEPTH_ORDERS and shape["consistency"] >= DEPTH_CONSISTENCY
    reversed_ = shape is not None and shape["gap"] <= -DEPTH_ORDERS and shape["consistency"] <= -DEPTH_CONSISTENCY
    first, last = next(iter(medians)), next(reversed(medians))
    out = []
    if vanishing or low:
        parts = []
        if vanishing:
            parts.append(f"the gradient norm falls {shape['gap']:.1f} orders of magnitude from the top blocks to "
                         f"block {first} ({10 ** shape['slope']:.2f}x per block toward the output, rank correlation "
                         f"with depth {shape['consistency']:.2f})")
        if low:
            parts.append(f"blocks {', '.join(b.split('.')[1] for b in low)} have median gradient norms below "
                         f"{VANISH_RATIO:g}x the median block ({reference:.3g})")
        out.append(Finding(
            code="vanishing_gradients", severity="warning", message="Vanishing gradients", evidence="; ".join(parts),
            data=data,
            fix="the early blocks barely learn: use pre-LN (norm before each sublayer) or a residual-friendly "
                "activation, check the normalisation and init of those blocks; if only some blocks are trainable, "
                "this may be intended"))
    if reversed_:
        evidence = (f"block {first}'s gradient norm is {medians[first] / medians[last]:.3g}x block {last}'s, rising "
                    f"{shape['gap'] * -1:.1f} orders of magnitude toward the input block after block (rank "
                    f"correlation with depth {shape['consistency']:.2f}): each block amplifies the backward signal")
        loss_part = _initial_loss(first_loss, vocab_size)
        out.append(Finding(
            code="reversed_depth_profile", severity="warning",
            message="Gradients grow toward the input: an initialisation problem",
            evidence=evidence + (f"; {loss_part}" if loss_part else ""),
            data={**data, "first_loss": first_loss, "ln_vocab": math.log(vocab_size) if vocab_size else None},
            fix="fix the initialisation, not the clip: initializer_range near 0.02 (about 1/sqrt(hidden_size)), "
                "residual output projections scaled by 1/sqrt(2 x layers) as GPT-2 does; with a checkpoint, check "
                "that every weight loaded (missing keys are initialised at random)"))
    return out


def _initial_loss(loss: float | None, vocab_size: int | None) -> str:
    if loss is None or not math.isfinite(loss) or not vocab_size or vocab_size < 2:
        return ""
    ln_v = math.log(vocab_size)
    if loss > HIGH_INITIAL_LOSS * ln_v:
        return (f"the first loss {loss:.3g} is {loss / ln_v:.1f}x ln(vocab) = {ln_v:.3g}, the loss of uniform "
                "predictions a sane init starts near: the logits are far too large from the start")
    return (f"the first loss {loss:.3g} is {loss / ln_v:.1f}x ln(vocab) = {ln_v:.3g}: the output scale is sane, "
            "the amplification is inside the blocks")
