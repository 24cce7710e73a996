"""What --precision bf16-true does to the optimizer's updates, which Lightning does not check.

bf16-true keeps the weights themselves in bfloat16, whose 8-bit significand spaces neighbouring
values 1/256 to 1/128 of their magnitude apart: a weight w absorbs an update only where the
update is larger than half that, |w| / 512 to |w| / 256, and AdamW's update is about lr a step. On SmolLM2-135M (median
|w| 0.11), an update of 2e-5 (--lr's default) changes 4% of the weights, 1e-4 17% and 3e-4 57%
(docs/distributed.md): the rest is rounded away, step after step, and the run learns little
while its loss looks sane. bf16-mixed keeps float32 weights and has no such floor.
"""
from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

# Below this share of weights that one update can move, a bf16-true run is warned.
MIN_MOVED = 0.5
SAMPLE = 1 << 20       # weights looked at: a strided sample keeps the check instant on large models


def bf16_update_fraction(params, step: float) -> float:
    """The share of the trainable weights (a strided sample of at most SAMPLE) that an update
    of size `step` changes once the weights are stored in bfloat16: (w + step) rounds to a
    different bf16 value than w."""
    weights = torch.cat([p.detach().flatten() for p in params if p.requires_grad])
    if weights.numel() == 0:
        return 1.0
    weights = weights[::max(1, weights.numel() // SAMPLE)].to(torch.bfloat16)
    return ((weights + step).to(torch.bfloat16) != weights).float().mean().item()


def check_bf16_true(model, lr: float) -> float:
    """Under --precision bf16-true: warn, in one sentence, when an update of size lr moves
    fewer than MIN_MOVED of the model's trainable weights; returns that share."""
    moved = bf16_update_fraction(model.parameters(), lr)
    if moved < MIN_MOVED:
        log.warning("--precision bf16-true stores the weights in bfloat16, where an update of --lr %g changes only "
                    "%.0f%% of this model's trainable weights (the rest round away every step); use bf16-mixed "
                    "(float32 weights) or a larger --lr.", lr, 100 * moved)
    return moved
