"""Masked next-token cross-entropy (supervised fine-tuning).

    L_SFT = - (1 / N) * sum_{b, t : m[b, t+1] = 1} log p_theta(y[b, t+1] | y[b, <= t])

where m marks supervised (assistant) tokens and N is the number of supervised tokens.
The reduction is a per-token mean over the supervised tokens of the whole optimizer step
(every micro-batch of a gradient-accumulation window, on every DDP worker), not a mean of
per-sequence or per-micro-batch means: the caller passes that step-wide N as
`normalizer`, so micro-batch 4 x accumulation 2 gives the same gradient as batch 8.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from losses.labels import IGNORE_INDEX


@dataclass
class SFTLossOutput:
    """loss: scalar, sum of token losses / normalizer. nll_sum: scalar, detached sum of
    token losses. num_tokens: scalar long, supervised tokens in this batch."""
    loss: torch.Tensor
    nll_sum: torch.Tensor
    num_tokens: torch.Tensor


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, V) logits, (B, T) labels -> (B, T-1) NLL of each next token (0 where ignored)
    and the (B, T-1) bool mask of supervised positions. logits[:, t] scores labels[:, t + 1]."""
    shift_logits = logits[:, :-1, :].float()                      # (B, T-1, V)
    shift_labels = labels[:, 1:]                                  # (B, T-1)
    nll = F.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
                          ignore_index=IGNORE_INDEX, reduction="none")   # 0 where ignored
    return nll.view(shift_labels.shape), shift_labels != IGNORE_INDEX


def sft_loss(logits: torch.Tensor, labels: torch.Tensor,
             normalizer: float | torch.Tensor | None = None) -> SFTLossOutput:
    """Masked next-token cross-entropy.

    Args:
        logits: (B, T, V) scores for the token after each position.
        labels: (B, T) target ids aligned with the inputs (labels[:, t] is token t);
            -100 marks unsupervised positions. The shift happens here: logits[:, t]
            is scored against labels[:, t + 1].
        normalizer: the token count to divide by; defaults to this batch's supervised
            token count (a plain per-token mean).
    Returns:
        SFTLossOutput. A batch with no supervised token gives loss 0 (never NaN).
    """
    return sft_loss_from_nll(*token_nll(logits, labels), normalizer)


def sft_loss_from_nll(nll: torch.Tensor, mask: torch.Tensor,
                      normalizer: float | torch.Tensor | None = None) -> SFTLossOutput:
    """The same loss from per-token NLL, as logprobs.token_logps gives it (negated) without
    the full logits: nll (B, T-1), 0 where mask (B, T-1) bool is False."""
    nll_sum = nll.sum()
    num_tokens = mask.sum()
    denom = num_tokens if normalizer is None else normalizer
    denom = torch.as_tensor(denom, dtype=nll_sum.dtype, device=nll_sum.device).clamp(min=1)
    return SFTLossOutput(loss=nll_sum / denom, nll_sum=nll_sum.detach(), num_tokens=num_tokens)
