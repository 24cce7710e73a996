"""GenRM loss: verification and generation as next-token prediction (the seed's eq. 7;
Zhang et al. 2024, "Generative Verifiers", arXiv:2408.15240).

    L_GenRM = L_SFT(D_verify) + lambda * L_SFT(D_correct)

D_verify: (problem + solution + "Let's verify step by step.", critique ending in
"Verification: Is the answer correct (Yes/No)? Yes|No") rows; D_correct: (problem, correct
solution) rows. lambda is --lambda (the seed tried 0.1 and 0.01 and kept 0.1).

Normalisation when a batch mixes both tasks: each term is a per-token mean over ITS OWN
rows' supervised tokens in the whole optimizer step (all micro-batches and DDP workers), so
the weight of a term does not depend on how many rows of each task a batch happens to
draw; a step with no row of a task contributes 0 for that term. The caller passes the
step's two token counts as `normalizers`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from losses.sft import token_nll


@dataclass
class SFTVerifierLossOutput:
    """loss: scalar, verify term + lambda * generate term (each over its normalizer).
    nll_verify, nll_correct: detached sums of token NLL of each task's rows.
    tokens_verify, tokens_correct: supervised tokens of each task in this batch."""
    loss: torch.Tensor
    nll_verify: torch.Tensor
    nll_correct: torch.Tensor
    tokens_verify: torch.Tensor
    tokens_correct: torch.Tensor


def sft_verifier_loss(logits: torch.Tensor, labels: torch.Tensor, is_generate: torch.Tensor, lam: float,
                      normalizers: torch.Tensor | None = None) -> SFTVerifierLossOutput:
    """Args:
        logits: (B, T, V); labels: (B, T) with -100 on unsupervised positions (shifted here).
        is_generate: (B,) bool, True for D_correct (generation) rows, False for D_verify rows.
        lam: weight of the generation term.
        normalizers: (2,) token counts (verify, generate) of the whole step; defaults to this
            batch's own counts.
    """
    nll, mask = token_nll(logits, labels)                              # (B, T-1) each
    return sft_verifier_loss_from_nll(nll, mask, is_generate[:, None].to(mask.device) & mask, lam, normalizers)


def sft_verifier_loss_from_nll(nll: torch.Tensor, mask: torch.Tensor, generate: torch.Tensor, lam: float,
                               normalizers: torch.Tensor | None = None) -> SFTVerifierLossOutput:
    """The same loss from per-token NLL (logprobs.token_logps, negated): nll (B, T-1), 0 where
    mask (B, T-1) bool is False; generate (B, T-1) bool marks the supervised tokens of
    generation rows (per token, so packed rows may mix both tasks)."""
    generate = generate & mask
    verify = ~generate & mask
    sums = torch.stack([(nll * verify).sum(), (nll * generate).sum()])  # (2,)
    counts = torch.stack([verify.sum(), generate.sum()])               # (2,)
    denom = counts if normalizers is None else torch.as_tensor(normalizers, device=sums.device)
    terms = sums / denom.to(sums.dtype).clamp(min=1)
    return SFTVerifierLossOutput(terms[0] + lam * terms[1], sums[0].detach(), sums[1].detach(), counts[0], counts[1])
