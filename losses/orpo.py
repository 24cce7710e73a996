"""ORPO: Monolithic Preference Optimization without Reference Model (Hong et al. 2024,
arXiv:2403.07691), per pair:

    L_ORPO = L_SFT + lambda * L_OR
    L_SFT  = -log P(y_w|x)                                            (eq. 2: the NLL of the chosen reply)
    L_OR   = -log sigma( log odds(y_w|x) - log odds(y_l|x) )          (eq. 7)
    log odds(y|x) = log P(y|x) - log(1 - P(y|x)),   log P(y|x) = (1/|y|) sum_t log p(y_t|x, y_<t)   (eq. 1, 4)

P(y|x) is length-normalised (the mean of the reply's token log-probs, |y| its completion
tokens: the reply and its end-of-turn token), so log P <= 0 and the odds are finite. No
reference model: the odds ratio compares the policy with itself. lambda is --orpo-lambda (default 0.1,
the paper's; TRL 1.16's ORPOConfig calls it beta, also 0.1).

Where TRL 1.16 (trl.experimental.orpo.ORPOTrainer) differs: its NLL term is one token-mean
cross-entropy over the whole batch of chosen sequences, prompt tokens included; here it is each
pair's own length-normalised NLL of the completion, -log P(y_w|x) as eq. 1 defines it, so every
pair weighs the same and the prompt is never supervised (as in every other training type here).
The odds-ratio term and the rewards are TRL's (odds_ratio_loss, its log1mexp), which
tests/test_loss_orpo_kto.py holds to 1e-5.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# log P(y|x) is capped just below 0: a reply the policy is certain of (every token log-prob
# 0.0 in float32) would have infinite odds and make the log-odds difference inf - inf = NaN.
MAX_MEAN_LOGP = -1e-6


@dataclass
class ORPOLossOutput:
    """Every field (B,): losses (nll + lambda * odds_ratio, the per-pair loss), nll (L_SFT),
    odds_ratio (L_OR), log_odds (log odds(y_w) - log odds(y_l), detached), and the detached
    rewards lambda * log P(y|x) of the chosen and rejected replies (TRL's)."""
    losses: torch.Tensor
    nll: torch.Tensor
    odds_ratio: torch.Tensor
    log_odds: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0 without cancellation (Maechler 2012; TRL's log1mexp): log1p(-e^x)
    below -log 2, log(-expm1(x)) above."""
    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
              chosen_tokens: torch.Tensor, rejected_tokens: torch.Tensor, orpo_lambda: float) -> ORPOLossOutput:
    """Per-pair ORPO loss (module docstring).

    Args:
        policy_chosen_logps, policy_rejected_logps: (B,) SUMMED completion log-probs under the policy.
        chosen_tokens, rejected_tokens: (B,) long completion token counts (at least 1 for a real pair).
        orpo_lambda: the weight of the odds-ratio term.
    """
    chosen = (policy_chosen_logps.float() / chosen_tokens.clamp(min=1)).clamp(max=MAX_MEAN_LOGP)       # (B,) log P
    rejected = (policy_rejected_logps.float() / rejected_tokens.clamp(min=1)).clamp(max=MAX_MEAN_LOGP)
    log_odds = (chosen - rejected) - (log1mexp(chosen) - log1mexp(rejected))                          # (B,)
    odds_ratio = F.softplus(-log_odds)                                    # -log sigma(z), finite for any z
    nll = -chosen
    return ORPOLossOutput(nll + orpo_lambda * odds_ratio, nll, odds_ratio, log_odds.detach(),
                          orpo_lambda * chosen.detach(), orpo_lambda * rejected.detach())
