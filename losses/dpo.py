"""Direct Preference Optimization (Rafailov et al. 2023, arXiv:2305.18290), sigmoid form.

    L_DPO = -E_(x, y_w, y_l) [ log sigma( beta * (log pi(y_w|x) - log pi_ref(y_w|x))
                                        - beta * (log pi(y_l|x) - log pi_ref(y_l|x)) ) ]

log pi(y|x) is the SUM of the log-probabilities of the completion tokens (the reply and its
end-of-turn token; prompt tokens never count). beta (--beta) scales the implicit reward
r(x, y) = beta * (log pi(y|x) - log pi_ref(y|x)); the default is 0.1, the seed used 1.0 and
2.0. The loss is returned per pair; the caller divides the sum by the pairs of the whole
optimizer step (all micro-batches and workers), so accumulation equals one large batch.

With --rpo-alpha a > 0, the DPO+NLL loss of Pang et al. (2024, "Iterative Reasoning
Preference Optimization", arXiv:2404.19733) adds a length-normalised negative log-likelihood
of the chosen reply to each pair's loss:

    L = L_DPO + a * E[ -log pi(y_w|x) / |y_w| ]

The paper puts its weight on the DPO term and normalises by the whole sequence |x + y_w|;
here, as in TRL's rpo_alpha, a weighs the NLL term and |y_w| counts the completion tokens only
(the prompt is never supervised), so a = 1 is the paper's setting. Offline DPO on pairs that
differ in a few tokens lowers log pi(y_w|x) along with log pi(y_l|x) (both fall, the
rejected faster); the NLL term holds the chosen replies up.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from losses.labels import IGNORE_INDEX


def sequence_logps_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of log p(token) over the supervised tokens of each sequence, from full logits: the
    definition of log pi(y|x) above, and the naive reference the tests hold
    logprobs.sequence_logps (the training path, no full logits) to.

    Args:
        logits: (N, T, V); logits[:, t] scores the token at t + 1.
        labels: (N, T) token ids, -100 where a position does not count.
    Returns:
        (N,) float32 sums (0 for a sequence without supervised tokens).
    """
    shift_logits = logits[:, :-1, :].float()                       # (N, T-1, V)
    shift_labels = labels[:, 1:]                                   # (N, T-1)
    mask = shift_labels != IGNORE_INDEX
    safe = shift_labels.masked_fill(~mask, 0)
    token_logps = torch.gather(F.log_softmax(shift_logits, dim=-1), 2, safe.unsqueeze(-1)).squeeze(-1)
    return (token_logps * mask).sum(dim=-1)                        # (N,)


@dataclass
class DPOLossOutput:
    """losses: (B,) per-pair loss. chosen_rewards, rejected_rewards: (B,) detached implicit
    rewards beta * (log pi - log pi_ref)."""
    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, beta: float,
             rpo_alpha: float = 0.0, chosen_tokens: torch.Tensor | None = None) -> DPOLossOutput:
    """Per-pair sigmoid DPO loss. All log-prob inputs are (B,) summed completion log-probs;
    chosen_tokens (B,) counts each chosen completion's tokens (needed when rpo_alpha > 0)."""
    chosen_ratio = policy_chosen_logps - ref_chosen_logps          # (B,)
    rejected_ratio = policy_rejected_logps - ref_rejected_logps    # (B,)
    # -log sigma(z) written as softplus(-z): finite for any z, where log(sigmoid(z)) underflows.
    losses = F.softplus(-beta * (chosen_ratio - rejected_ratio))
    if rpo_alpha:
        losses = losses + rpo_alpha * (-policy_chosen_logps / chosen_tokens.clamp(min=1))
    return DPOLossOutput(losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach())
