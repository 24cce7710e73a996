"""KTO: Model Alignment as Prospect Theoretic Optimization (Ethayarajh et al. 2024,
arXiv:2402.01306), on unpaired rows (x, y, desirable or not), eq. 7 in the form TRL 1.16's
KTOTrainer (loss_type="kto") computes it:

    r(x, y) = log pi(y|x) - log pi_ref(y|x)                          (summed completion log-probs)
    z0      = max(0, mean over the batch of r(x_i, y'_i)),  y'_i a completion of ANOTHER row
    L(x, y) = lambda_D * (1 - sigma(beta (r(x, y) - z0)))   if y is desirable
              lambda_U * (1 - sigma(beta (z0 - r(x, y))))   if y is undesirable

z0 is the reference point, an estimate of KL(pi || pi_ref): the log-ratio of mismatched
(prompt, completion) pairs, which TRL forms by shifting the completions by one within the batch
((x_1, y_n), (x_2, y_1), ..., (x_n, y_{n-1})), averaged over the batch (and over DDP workers,
as TRL's gather does), clamped at 0 and not differentiated (TRL scores them under no_grad; the
paper: "we do not back-propagate through z0"). lambda_D, lambda_U are --kto-desirable-weight and
--kto-undesirable-weight (TRL's desirable_weight, undesirable_weight, default 1.0; the paper
advises lambda_D n_D / (lambda_U n_U) in [1, 4/3] for n_D desirable and n_U undesirable rows).

The caller reduces: TRL takes the mean of these per-row losses over the batch (desirable and
undesirable rows alike); the module divides their sum by the rows of the whole step. Rewards
(rewards/chosen over the desirable rows, rewards/rejected over the undesirable) are TRL's:
beta * r(x, y).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class KTOLossOutput:
    """losses: (B,) per-row weighted loss. rewards: (B,) detached beta * r(x, y). kl: () the z0 used
    (clamped, detached)."""
    losses: torch.Tensor
    rewards: torch.Tensor
    kl: torch.Tensor


def kto_loss(policy_logps: torch.Tensor, ref_logps: torch.Tensor, desirable: torch.Tensor,
             mismatched_log_ratio: torch.Tensor, beta: float, desirable_weight: float = 1.0,
             undesirable_weight: float = 1.0) -> KTOLossOutput:
    """Per-row KTO loss (module docstring).

    Args:
        policy_logps, ref_logps: (B,) summed completion log-probs of the rows' own (x, y).
        desirable: (B,) bool, the rows' labels.
        mismatched_log_ratio: () mean of log pi(y'|x) - log pi_ref(y'|x) over the mismatched pairs
            (of the batch, on every worker); clamped at 0 and detached here, giving z0.
        beta, desirable_weight, undesirable_weight: as above.
    """
    z0 = mismatched_log_ratio.detach().clamp(min=0)
    ratio = policy_logps - ref_logps                                                     # (B,)
    desirable_losses = desirable_weight * (1 - torch.sigmoid(beta * (ratio - z0)))
    undesirable_losses = undesirable_weight * (1 - torch.sigmoid(beta * (z0 - ratio)))
    losses = torch.where(desirable, desirable_losses, undesirable_losses)
    return KTOLossOutput(losses, beta * ratio.detach(), z0)
