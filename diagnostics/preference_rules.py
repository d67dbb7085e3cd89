"""Findings for the failure modes of preference optimisation (DPO, ORPO), and their advice.

They read the per-step `PreferenceRecord`s (means over each step's pairs) with the same habits as
diagnostics.rules: medians over thirds of the run, conservative thresholds, a healthy run raises nothing.

* margins that explode: the implicit reward margin beta x (chosen - rejected log-ratio) large enough
  that the sigmoid saturates (-log sigmoid(3) = 0.049: the pairs stop teaching), or still doubling at the
  end of the run. DPO drives margins to infinity on pairs it can separate (Azar et al. 2023, "A General
  Theoretical Paradigm to Understand Learning from Human Preferences", Sec. 4.2): in a short run it means
  the learning rate is too high or beta too low;
* chosen log-probs that fall steadily while the rejected ones fall too: the policy widens the margin by
  making both answers less likely (Pal et al. 2024, "Smaug: Fixing Failure Modes of Preference
  Optimisation with DPO-Positive"; Razin et al. 2024, "Unintentional Unalignment: Likelihood Displacement
  in DPO"), which an SFT term on the chosen answers counters (LLaMA-Factory `pref_ftx`, TRL `rpo_alpha`);
* the policy drifting far from the reference, in nats per completion token, while the margin is not
  what moved: the implicit KL anchor (beta) is too weak for the learning rate;
* a DPO loss that stays at log 2 (the loss of a policy equal to its reference: nothing learnt), or
  that climbs well above it (the policy prefers the rejected answers).
"""

from __future__ import annotations

import math
import statistics

from diagnostics.lr_advice import lower_lr, raise_lr
from diagnostics.report import DiagnoseSettings, StepRecord
from planner.findings import Change, Finding

LOG2 = math.log(2.0)
MARGIN_LIMIT = 3.0  # reward margin past which -log sigmoid saturates (loss 0.049, gradient weight 0.047)
MARGIN_GROWTH = 2.0  # last-third median margin over the middle third's: still growing at the end...
MARGIN_GROWTH_FLOOR = 2.0  # ...and already this large
DISPLACEMENT = 0.1  # nats per token the chosen answers lost (DPO: against the reference)
DRIFT_LIMIT = 1.0  # nats per token the policy moved from the reference on either answer (e: 2.7x per token)
STUCK_TOLERANCE = 0.01  # |DPO loss - log 2| that counts as not having moved
STUCK_MARGIN = 0.02  # mean |margin| below which no pair has been separated (loss within 1% of log 2)
DIVERGE_FACTOR = 1.5  # a DPO loss this many times log 2 on the last steps: the rejected answers win


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _thirds(xs: list[float]) -> tuple[list[float], list[float], list[float]]:
    n = max(1, len(xs) // 3)
    return xs[:n], xs[n:len(xs) - n] or xs[n:], xs[-n:]


def _series(records: list[StepRecord], name: str) -> list[float]:
    return [v for r in records if r.preference is not None and (v := getattr(r.preference, name)) is not None
            and math.isfinite(v)]


def preference_findings(records: list[StepRecord], settings: DiagnoseSettings) -> list[Finding]:
    """The preference stage's own findings (the gradient findings come from diagnostics.rules)."""
    records = [r for r in records if r.preference is not None and math.isfinite(r.loss)]
    if len(records) < 6:  # thirds of fewer steps are single noisy batches
        return []
    dpo = settings.stage == "dpo"
    findings: list[Finding] = []
    beta = settings.beta

    margins = _series(records, "abs_margin")
    _, middle, last = _thirds(margins)
    end, mid = _median(last), _median(middle)
    growing = end > MARGIN_GROWTH_FLOOR and mid > 0 and end > MARGIN_GROWTH * mid
    if end > MARGIN_LIMIT or growing:
        losses = [r.loss for r in records]
        what = (f"the median |reward margin| over the last {len(last)} steps is {end:.3g}"
                + (f", {end / mid:.1f}x the middle of the run's ({mid:.3g}): still growing" if growing else
                   f", past {MARGIN_LIMIT:g} where -log sigmoid(margin) saturates"))
        findings.append(Finding(
            code="margin_explosion", severity="warning", message="Preference margins explode",
            evidence=f"{what}; the loss fell to {_median(losses[-len(last):]):.3g} and accuracy is "
                     f"{_median(_series(records, 'accuracy')[-len(last):]):.0%}: the pairs are separated far beyond "
                     "what the preference needs, so the policy is memorising them",
            data={"abs_margin": margins, "last_third": end, "middle_third": mid, "beta": beta},
            field="learning_rate",
            fix="lower learning_rate" + (f" or raise beta (now {beta:g}: a stronger pull to the reference)" if dpo
                                         else "") + "; with a small dataset, fewer epochs"))

    if dpo:
        chosen = _series(records, "chosen_token_logratio")
        rejected = _series(records, "rejected_token_logratio")
        c_first, _, c_last = _thirds(chosen)
        r_last = _thirds(rejected)[2]
        falling = chosen and _median(c_last) < -DISPLACEMENT and _median(c_last) < _median(c_first) \
            and _median(r_last) < 0
        label = "per-token log-prob against the reference"
    else:  # ORPO has no reference: its NLL term should make the chosen answers more likely, not less
        chosen = _series(records, "chosen_token_logp")
        rejected = _series(records, "rejected_token_logp")
        c_first, _, c_last = _thirds(chosen)
        r_first, _, r_last = _thirds(rejected)
        falling = chosen and _median(c_last) < _median(c_first) - DISPLACEMENT \
            and _median(r_last) < _median(r_first)
        label = "per-token log-prob"
    if falling:
        findings.append(Finding(
            code="chosen_logp_falling", severity="warning", message="Chosen answers become less likely",
            evidence=f"the chosen answers' {label} fell from a median {_median(c_first):.3g} to {_median(c_last):.3g} "
                     f"nats per token (the rejected answers': {_median(r_last):.3g}): the margin grows because "
                     "both answers lose probability, the rejected faster (likelihood displacement)",
            data={"chosen": chosen, "rejected": rejected}, field="learning_rate",
            fix=("add an SFT term on the chosen answers (LLaMA-Factory pref_ftx: 1.0, TRL rpo_alpha: 1.0), raise "
                 "beta, or lower learning_rate" if dpo else
                 "lower beta (the odds-ratio weight) or learning_rate: the NLL term should carry the chosen "
                 "answers up")))

    if dpo:
        drift = [max(abs(r.preference.chosen_token_logratio), abs(r.preference.rejected_token_logratio))
                 for r in records if r.preference.chosen_token_logratio is not None]
        far = _median(_thirds(drift)[2]) if drift else 0.0
        if far > DRIFT_LIMIT and not any(f.code == "chosen_logp_falling" for f in findings):
            findings.append(Finding(
                code="policy_drift", severity="warning", message="The policy moves far from its reference",
                evidence=f"over the last {len(_thirds(drift)[2])} steps the policy's log-probs differ from the "
                         f"reference's by a median {far:.3g} nats per token ({math.exp(far):.1f}x per token) on "
                         f"the chosen or rejected answers, past {DRIFT_LIMIT:g}: the implicit KL anchor (beta "
                         f"{beta:g}) does not hold the policy at this learning rate",
                data={"drift": drift, "last_third": far}, field="learning_rate",
                fix=f"lower learning_rate, or raise beta (now {beta:g})"))

        losses = [r.loss for r in records]
        half = losses[len(losses) // 2:]
        tail = _median(losses[-5:])
        settled_margin = _median(_series(records, "abs_margin")[len(records) // 2:])
        if tail > DIVERGE_FACTOR * LOG2:
            findings.append(Finding(
                code="loss_divergence", severity="error", message="The DPO loss climbs above log 2",
                evidence=f"the median loss of the last 5 steps is {tail:.3g}, above {DIVERGE_FACTOR:g} x log 2 "
                         f"(the loss of the untrained policy, {LOG2:.3f}); accuracy "
                         f"{_median(_series(records, 'accuracy')[-5:]):.0%}: the policy now prefers the rejected "
                         "answers",
                data={"last": tail}, field="learning_rate", fix="lower learning_rate (see advice) and add warmup"))
        elif all(abs(v - LOG2) < STUCK_TOLERANCE for v in half) and settled_margin < STUCK_MARGIN:
            findings.append(Finding(
                code="preference_not_learning", severity="info", message="The DPO loss stays at log 2",
                evidence=f"over the last {len(half)} steps the loss stayed within {STUCK_TOLERANCE:g} of log 2 "
                         f"({LOG2:.3f}) with a median |reward margin| of "
                         f"{settled_margin:.2g}: the policy has not "
                         "moved from its reference",
                data={"losses": half}, field="learning_rate",
                fix="a learning rate too low for this run (see the update ratios), or pairs whose chosen and "
                    "rejected answers barely differ"))
    return findings


def _change(title: str, field: str, value, current, reason: str) -> Change:
    return Change(title=title, changes={field: value}, current={field: current}, reason=reason)


def preference_advice(records: list[StepRecord], findings: list[Finding], settings: DiagnoseSettings,
                      already: set[str]) -> list[Change]:
    """Changes for the findings above; `already` holds the fields diagnostics.rules advises on."""
    codes = {f.code for f in findings}
    beta = settings.beta
    out: list[Change] = []
    too_fast = codes & {"margin_explosion", "policy_drift", "chosen_logp_falling"}
    if too_fast and "learning_rate" not in already:
        out.append(lower_lr(settings, "the policy outruns the preference signal ("
                            + ", ".join(sorted(too_fast)).replace("_", " ") + ")"))
    if settings.stage == "dpo" and too_fast:
        new = float(f"{max(2 * beta, 0.25):.2g}")
        out.append(_change(f"Raise beta to {new:g}", "beta", new, beta,
                           "beta scales the implicit KL penalty: a larger one keeps the policy nearer the "
                           "reference and the margins smaller for the same loss"))
    if settings.stage == "orpo" and "chosen_logp_falling" in codes:
        new = float(f"{beta / 2:.2g}")
        out.append(_change(f"Lower the odds-ratio weight (beta) to {new:g}", "beta", new, beta,
                           "the odds-ratio term outweighs the NLL term that keeps the chosen answers likely"))
    if "preference_not_learning" in codes and "learning_rate" not in already:
        ratios = [statistics.median(r.update_ratio.values()) for r in records if r.update_ratio]
        if ratios and statistics.median(ratios) < 1e-4:
            change = raise_lr(settings, f"the DPO loss has not left log 2 and the median update is "
                                        f"{statistics.median(ratios):.1e} of the weights")
            out += [change] if change is not None else []
    return out

