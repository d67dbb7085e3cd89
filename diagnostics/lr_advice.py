"""Learning-rate advice that converges in one round: into the method's usual range, not a fixed fraction.

Cutting a diverging learning rate by a fixed x0.3 takes rounds (1 -> 0.3 still diverges, and so does 0.09):
a rate above the usual range for the method goes straight to the range's top; one already inside it that
still diverges is cut tenfold, since the range's top has then failed for this model and data. Raising a rate
never leaves the range. The ranges are the planner's (planner.configs.checks.HIGH_LR, the usual top of each
method's range, which the static config check also warns about).
"""

from __future__ import annotations

from diagnostics.report import DiagnoseSettings
from planner.configs.checks import HIGH_LR
from planner.findings import Change

# Preference optimisation runs far lower than SFT: LLaMA-Factory's examples use 1e-4 for SFT LoRA and 5e-6 for
# DPO LoRA (examples/train_lora/llama3_lora_{sft,dpo}.yaml), Zephyr's full DPO 5e-7 against full SFT's 2e-5
# (Tunstall et al. 2023): about a twentieth
PREFERENCE_SCALE = 1 / 20
INDICATIVE = ("indicative only: measured on random weights; a pretrained model's gradients and losses differ, "
              "diagnose with the real weights to confirm")


def usual_top(settings: DiagnoseSettings) -> float | None:
    """The top of the usual learning-rate range for the run's method and stage (None: no known range)."""
    top = HIGH_LR.get(settings.plan.method)
    if top is None:
        return None
    return top * PREFERENCE_SCALE if settings.preference else top


def _round(x: float) -> float:
    return float(f"{x:.2g}")


def _change(new: float, current: float, reason: str, verb: str) -> Change:
    return Change(title=f"{verb} the learning rate to {new:g}", changes={"learning_rate": new},
                  current={"learning_rate": current}, reason=reason)


def lower_lr(settings: DiagnoseSettings, why: str) -> Change:
    """`why`: what the run did (diverged, went non-finite, ...)."""
    lr, top = settings.learning_rate, usual_top(settings)
    what = f"{settings.plan.method}{' ' + settings.stage if settings.preference else ''}"
    if top is not None and lr > top:
        return _change(_round(top), lr, f"{why}; {lr:g} is above the usual range for {what} (up to {top:g}): "
                                        "its top, at once rather than by repeated cuts", "Lower")
    inside = f" inside the usual range for {what} (up to {top:g})" if top is not None else ""
    return _change(_round(lr / 10), lr, f"{why} at {lr:g}{inside}: a tenth of it", "Lower")


def raise_lr(settings: DiagnoseSettings, why: str) -> Change | None:
    """Three times higher, capped at the usual top (None when already there)."""
    lr, top = settings.learning_rate, usual_top(settings)
    new = _round(min(3 * lr, top) if top is not None else 3 * lr)
    if new <= lr:
        return None
    capped = top is not None and new < _round(3 * lr)
    return _change(new, lr, f"{why}: " + (f"the top of the usual range ({top:g})" if capped
                                          else "a learning rate about 3x higher"), "Raise")
