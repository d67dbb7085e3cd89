"""What one diagnostics micro-batch minimises: the SFT loss, or DPO's or ORPO's preference loss.

An objective maps (model, micro-batch, index) to (loss, metrics): the scalar to backpropagate, and for
the preference stages one 1-D tensor of per-step metrics (in the order of `names`) that stays on the
device until the step's single host sync (diagnostics.monitor).

Preference micro-batches hold 2B rows, the B chosen answers first, then the B rejected ones
(diagnostics.preference.PairBatches), so one forward scores both, as TRL's `DPOTrainer` and
LLaMA-Factory's `CustomDPOTrainer.concatenated_forward` do. A row's log-probability is the sum over its
completion tokens only (prompt and padding carry label -100).

The DPO reference is the policy before training: a frozen copy for full and freeze tuning (TRL
`create_model_from_path(..., dtype=model.dtype)`, LLaMA-Factory `create_ref_model`), and for LoRA / QLoRA
the policy itself with its adapter disabled (peft `disable_adapter()`, as both frameworks do when no
reference model is given). `precompute_ref_log_probs` scores every micro-batch the run will see before
the first step (TRL's `_precompute_ref_logps`) and drops the copy.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

from diagnostics.data import IGNORE
from planner.errors import FtplanError

SUPPORTED_STAGES = ("sft", "pt", "dpo", "orpo")
PREFERENCE_STAGES = ("dpo", "orpo")
LOG2 = math.log(2.0)  # the DPO loss when the policy equals the reference: -log sigmoid(0)

_PAIR = ("margin", "abs_margin", "chosen_reward", "rejected_reward", "accuracy", "chosen_logp", "rejected_logp",
         "chosen_token_logp", "rejected_token_logp")
DPO_METRICS = (*_PAIR, "chosen_token_logratio", "rejected_token_logratio")
ORPO_METRICS = (*_PAIR, "nll", "log_odds")


def check_stage(stage: str) -> None:
    if stage not in SUPPORTED_STAGES:
        raise FtplanError(f"diagnose runs the sft, pt, dpo and orpo stages, not {stage}; run {{stage}} dpo or "
                          "orpo for preference data, or ftplan estimate for this stage's memory", field="stage")


# ---------------------------------------------------------------- the formulas (pure tensor functions)


def completion_logps(logits, labels):
    """(sum of the completion tokens' log-probs per row, completion tokens per row).

    Position t predicts token t+1; labels -100 (prompt, padding) count nothing. The log-softmax runs in fp32,
    as LLaMA-Factory's `concatenated_forward` casts the logits (trainer_utils.get_batch_logps).
    """
    import torch.nn.functional as F

    targets = labels[:, 1:]
    scores = logits[:, :-1, :].float()
    nll = F.cross_entropy(scores.reshape(-1, scores.size(-1)), targets.reshape(-1), ignore_index=IGNORE,
                          reduction="none").view_as(targets)
    return -nll.sum(dim=1), (targets != IGNORE).sum(dim=1)


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float):
    """Per-pair sigmoid DPO loss and implicit rewards (Rafailov et al. 2023, eq. 7):

        loss = -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))
        reward_c = beta * (pi_c - ref_c),  reward_r = beta * (pi_r - ref_r)

    TRL trainer/dpo_trainer.py `_compute_loss` (loss_type "sigmoid", f_divergence "reverse_kl"), LLaMA-Factory
    train/dpo/trainer.py `dpo_loss` (pref_loss "sigmoid"); the rewards are detached, as both log them."""
    import torch.nn.functional as F

    chosen_logratio = policy_chosen - ref_chosen
    rejected_logratio = policy_rejected - ref_rejected
    losses = -F.logsigmoid(beta * (chosen_logratio - rejected_logratio))
    return losses, beta * chosen_logratio.detach(), beta * rejected_logratio.detach()


def orpo_loss(chosen_mean, rejected_mean, lam: float):
    """Per-pair ORPO loss from mean per-token log-probs (Hong et al. 2024, eqs. 4-7):

        log_odds = (c - r) - (log(1 - e^c) - log(1 - e^r))
        loss = -c + lam * -log sigmoid(log_odds)

    LLaMA-Factory train/dpo/trainer.py `odds_ratio_loss` (its NLL term is this -c), TRL
    experimental/orpo/orpo_trainer.py `odds_ratio_loss`. log(1 - e^x) is computed as log(-expm1(x)), exact
    near x = 0 where log1p(-exp(x)) loses every digit. Returns (losses, nll, log_odds)."""
    import torch
    import torch.nn.functional as F

    log_odds = (chosen_mean - rejected_mean) - (torch.log(-torch.expm1(chosen_mean))
                                                - torch.log(-torch.expm1(rejected_mean)))
    nll = -chosen_mean
    return nll - lam * F.logsigmoid(log_odds), nll, log_odds


def pair_metrics(chosen_reward, rejected_reward, chosen_logp, rejected_logp, chosen_tokens, rejected_tokens):
    """The means TRL's DPOTrainer logs (rewards/*, logps/*) plus |margin| and per-token log-probs, in `_PAIR`
    order; accuracy counts pairs whose chosen reward is strictly higher (a tie, as at step 1 of DPO, is not
    a win)."""
    margin = chosen_reward - rejected_reward
    return [margin.mean(), margin.abs().mean(), chosen_reward.mean(), rejected_reward.mean(),
            (margin > 0).float().mean(), chosen_logp.detach().mean(), rejected_logp.detach().mean(),
            (chosen_logp.detach() / chosen_tokens.clamp(min=1)).mean(),
            (rejected_logp.detach() / rejected_tokens.clamp(min=1)).mean()]


# ---------------------------------------------------------------- objectives


def _logits(model, batch):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    # peft's prompt and P-tuning prepend their virtual tokens' logits: the labels cover the real tokens only
    return logits[:, -batch["input_ids"].size(1):]


class SFT:
    """The causal-LM loss the model computes from its labels (mean over trained tokens)."""

    names: tuple[str, ...] = ()

    def __call__(self, model, batch, index: int):
        return model(**batch).loss, None


Reference = Callable[[dict, int], object]  # (micro-batch, index) -> completion log-prob sums, 2B rows


class DPO:
    names = DPO_METRICS

    def __init__(self, beta: float, reference: Reference):
        self.beta, self.reference = beta, reference

    def __call__(self, model, batch, index: int):
        import torch

        logps, tokens = completion_logps(_logits(model, batch), batch["labels"])
        ref = self.reference(batch, index)
        pc, pr = logps.chunk(2)
        rc, rr = ref.chunk(2)
        losses, chosen_reward, rejected_reward = dpo_loss(pc, pr, rc, rr, self.beta)
        tc, tr = tokens.chunk(2)
        metrics = pair_metrics(chosen_reward, rejected_reward, pc, pr, tc, tr)
        # the rewards carry the summed log-ratios; per token they compare across batches and lengths
        metrics += [((pc - rc).detach() / tc.clamp(min=1)).mean(), ((pr - rr).detach() / tr.clamp(min=1)).mean()]
        return losses.mean(), torch.stack(metrics)


class ORPO:
    """Reference-free: the NLL of the chosen answers plus lambda (`beta`) times the odds-ratio loss."""

    names = ORPO_METRICS

    def __init__(self, lam: float):
        self.lam = lam

    def __call__(self, model, batch, index: int):
        import torch

        logps, tokens = completion_logps(_logits(model, batch), batch["labels"])
        mean = logps / tokens.clamp(min=1)  # ORPO works on mean per-token log-probs (both frameworks)
        c, r = mean.chunk(2)
        losses, nll, log_odds = orpo_loss(c, r, self.lam)
        pc, pr = logps.chunk(2)
        tc, tr = tokens.chunk(2)
        # LLaMA-Factory logs ORPO's rewards as beta x the mean per-token log-probs (compute_preference_loss)
        metrics = pair_metrics(self.lam * c.detach(), self.lam * r.detach(), pc, pr, tc, tr)
        metrics += [nll.detach().mean(), log_odds.detach().mean()]
        return losses.mean(), torch.stack(metrics)


# ---------------------------------------------------------------- the DPO reference


def frozen_copy(model, compute_dtype):
    """A reference for full / freeze tuning: the policy's weights before training, frozen, in the compute dtype
    (mixed precision keeps the policy's trainable weights in fp32; the reference copy does not need them)."""
    ref = copy.deepcopy(model)
    ref.requires_grad_(False)
    ref.eval()  # TRL and LLaMA-Factory put the reference in eval mode: no dropout
    for p in ref.parameters():
        if p.is_floating_point() and p.dtype != compute_dtype:
            p.data = p.data.to(compute_dtype)
    return lambda batch, index: _no_grad_logps(ref, batch)


def adapter_off(peft_model):
    """A reference for LoRA / QLoRA: the same model with its adapter disabled (the base it started from)."""

    def logps(batch, index):
        with peft_model.disable_adapter():
            return _no_grad_logps(peft_model, batch)

    return logps


def _no_grad_logps(model, batch):
    import torch

    with torch.no_grad():
        return completion_logps(_logits(model, batch), batch["labels"])[0]


def precomputed(reference: Reference, micro_batch: Callable[[int], dict], count: int, autocast) -> Reference:
    """Score micro-batches 0..count-1 now (TRL's precompute_ref_log_probs); the result holds no model."""
    table = {}
    for index in range(count):
        with autocast():
            table[index] = reference(micro_batch(index), index)
    return lambda batch, index: table[index]


def make_objective(stage: str, beta: float, reference: Reference | None = None):
    check_stage(stage)
    if stage == "dpo":
        if reference is None:
            raise ValueError("DPO needs a reference")
        return DPO(beta, reference)
    if stage == "orpo":
        return ORPO(beta)
    return SFT()
