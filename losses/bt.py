"""Bradley-Terry reward-model loss (the seed's eq. 4; Ouyang et al. 2022, arXiv:2203.02155).

    L_BT = -E_(x, y_w, y_l) [ log sigma( r(x, y_w) - r(x, y_l) ) ]
           + c * E_(x, y_w, y_l) [ (r(x, y_w) + r(x, y_l))^2 ]

r(x, y) is the scalar score of the reward model for the whole conversation (prompt + reply),
read at the reply's end-of-turn token (reward_model.sequence_rewards). The second term is
optional reward centering (Eisenstein et al. 2023, arXiv:2312.09244; c = --center-rewards-coefficient,
default 0 = off): the BT loss only sees differences, so without it rewards drift freely; the
term pulls the mean reward towards 0. The loss is returned per pair; the caller divides the
sum by the pairs of the whole optimizer step, as for DPO.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class BTLossOutput:
    """losses: (B,) per-pair loss. margins: (B,) detached r_w - r_l."""
    losses: torch.Tensor
    margins: torch.Tensor


def bt_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor,
            center_coefficient: float = 0.0) -> BTLossOutput:
    """Per-pair Bradley-Terry loss. chosen_rewards, rejected_rewards: (B,) scalar rewards."""
    margins = chosen_rewards - rejected_rewards                    # (B,)
    losses = F.softplus(-margins)                                  # -log sigma(m), finite for any m
    if center_coefficient:
        losses = losses + center_coefficient * (chosen_rewards + rejected_rewards) ** 2
    return BTLossOutput(losses, margins.detach())
