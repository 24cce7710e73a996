"""Online policy-gradient losses: GRPO (Shao et al. 2024, DeepSeekMath, arXiv:2402.03300) and
RLOO (Ahmadian et al. 2024, arXiv:2402.14740; the seed's eq. 6), with Dr. GRPO's unscaled
advantages (Liu et al. 2025, arXiv:2503.20783).

For each prompt x, k completions y_1..y_k are sampled from the current policy and scored
with rewards R_1..R_k. Advantages (`group_advantages`, one group = the k completions of a prompt):

    rloo:    A_i = R_i - (1 / (k - 1)) * sum_{j != i} R_j          (leave-one-out baseline)
    grpo:    A_i = (R_i - mean(R)) / (std(R) + eps)                (std with Bessel's correction)
    drgrpo:  A_i =  R_i - mean(R)                                  (no division by the std)

Per completion token t of y_i (`grpo_loss`), with rho = pi(y_i,t | .) / pi_old(y_i,t | .):

    loss_i,t = -min(rho * A_i, clip(rho, 1 - eps, 1 + eps) * A_i) + beta * KL_i,t
    KL_i,t   = exp(ref - logp) - (ref - logp) - 1                  (k3 estimator, >= 0)

where logp = log pi(y_i,t | x, y_i,<t), ref the same under the frozen reference. With one
update per batch pi_old is the current policy detached, so rho = 1 and the gradient is
exactly the seed's REINFORCE form -A_i * grad log pi(y_i|x); with several updates
(--num-iterations) rho moves and the clip takes effect. Prompt tokens never count (mask).

Aggregation is the caller's (module.py), over the completion tokens of the whole optimizer
step (all micro-batches and DDP workers), chosen by --loss-aggregation:
    token:    sum of loss_i,t over all completion tokens / number of completion tokens
    sequence: sum over each completion's tokens, mean over completions (the seed's summed
              log pi(y|x); longer completions weigh more)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

ADVANTAGES = ("grpo", "rloo", "drgrpo")


def group_advantages(rewards: torch.Tensor, kind: str = "grpo", eps: float = 1e-4) -> torch.Tensor:
    """(P, k) rewards of k completions for each of P prompts -> (P, k) advantages."""
    if kind not in ADVANTAGES:
        raise ValueError(f"unknown advantage {kind!r} (expected one of {', '.join(ADVANTAGES)})")
    k = rewards.shape[-1]
    if kind == "rloo":
        if k < 2:
            raise ValueError("leave-one-out advantages need at least 2 completions per prompt")
        return rewards - (rewards.sum(dim=-1, keepdim=True) - rewards) / (k - 1)
    centred = rewards - rewards.mean(dim=-1, keepdim=True)
    if kind == "drgrpo":
        return centred
    std = rewards.std(dim=-1, keepdim=True) if k > 1 else torch.zeros_like(rewards)
    return centred / (std + eps)


@dataclass
class GRPOLossOutput:
    """per_token: (N, T) loss of each completion token (0 where mask is False).
    kl: (N, T) detached k3 KL per token (0 where masked or without a reference).
    clipped: (N, T) bool, tokens whose clipped term was the one taken (the update was clipped)."""
    per_token: torch.Tensor
    kl: torch.Tensor
    clipped: torch.Tensor


def grpo_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
              ref_logps: torch.Tensor | None = None, beta: float = 0.0, clip_eps: float = 0.2) -> GRPOLossOutput:
    """Clipped policy-gradient loss with a k3 KL penalty, per token.

    Args:
        logps: (N, T) log pi of each completion token under the policy (with gradient).
        old_logps: (N, T) the same under the policy that sampled (detached; equal to logps
            for one update per batch).
        advantages: (N,) one advantage per completion.
        mask: (N, T) bool, True on completion tokens.
        ref_logps: (N, T) under the frozen reference; None when beta == 0.
        beta: KL coefficient. clip_eps: clip range eps of rho.
    """
    ratio = torch.exp(logps - old_logps)
    adv = advantages.unsqueeze(-1)                                       # (N, 1)
    unclipped = ratio * adv
    clipped_term = torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv
    per_token = -torch.minimum(unclipped, clipped_term)
    kl = torch.zeros_like(logps)
    if ref_logps is not None and beta:
        delta = ref_logps - logps
        kl = torch.exp(delta) - delta - 1
        per_token = per_token + beta * kl
    per_token = per_token * mask
    clipped = (clipped_term < unclipped) & mask
    return GRPOLossOutput(per_token, kl.detach() * mask, clipped)

