"""SFT with a dynamic length penalty (seed 003, eq. 3):

    L = L_SFT + lambda_len * E_x[ max(0, len(y_hat) - len(y))^2 ],    y_hat ~ pi_theta(. | x)

where y is the reference reply of the row, y_hat a reply sampled from the current policy for
the same prompt, and len counts tokens (the end-of-turn token included). The seed applied the
term every 100 steps with lambda_len = 0.001 (--length-penalty-every, --length-penalty).

Sampling has no gradient, so the expectation is differentiated with the score function
(REINFORCE): grad E[P] = E[(P - b) * grad log pi(y_hat | x)], with P the penalty of a sample and
b a baseline that does not depend on it. Here b is the leave-one-out mean of the other rows'
penalties in the micro-batch (0 for a batch of one row), which keeps the estimate unbiased
and lowers its variance. The surrogate whose gradient that is,

    s_i = lambda_len * (P_i - b_i) * log pi(y_hat_i | x_i)       (P_i, b_i constants),

is added to the loss per sampled row; log pi(y_hat|x) is the SUM of y_hat's token log-probs,
so a long sample above the baseline has every one of its tokens made less likely,
including the choice not to end the turn. The surrogate's value means nothing; the logged
value is the penalty itself, lambda_len * mean(P).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LengthPenaltyOutput:
    """penalties: (B,) detached lambda_len * max(0, len(y_hat) - len(y))^2.
    surrogate: (B,) the REINFORCE surrogate per row (its gradient is the penalty's)."""
    penalties: torch.Tensor
    surrogate: torch.Tensor


def length_penalty_surrogate(sample_logps: torch.Tensor, sample_lengths: torch.Tensor, ref_lengths: torch.Tensor,
                             lam: float) -> LengthPenaltyOutput:
    """Args: sample_logps (B,) summed log pi(y_hat|x) with gradient; sample_lengths and
    ref_lengths (B,) token counts of y_hat and y; lam the weight lambda_len."""
    penalties = lam * torch.clamp(sample_lengths - ref_lengths, min=0) ** 2          # (B,)
    n = penalties.numel()
    baseline = (penalties.sum() - penalties) / (n - 1) if n > 1 else torch.zeros_like(penalties)
    return LengthPenaltyOutput(penalties.detach(), (penalties - baseline).detach() * sample_logps)
