"""The pairwise preference losses of --training-type dpo (--dpo-loss), one pure function each,
and their registry.

    pairs = PairLogps(policy_chosen, policy_rejected, ref_chosen, ref_rejected, chosen_tokens, rejected_tokens)
    out = preference_loss(pairs, "ipo", beta=0.1)        # DPOLossOutput: (B,) losses and rewards

Every input is (B,): log pi(y|x) is the SUM of the completion tokens' log-probabilities (reply
and end-of-turn token, never the prompt), and |y| (chosen_tokens, rejected_tokens) counts those
tokens. With h the log-ratio difference

    h = (log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x)),

    sigmoid  -log sigma(beta h)                                  DPO (losses/dpo.py), + --rpo-alpha
    cdpo     (1 - e) (-log sigma(beta h)) + e (-log sigma(-beta h))        conservative DPO
    hinge    max(0, 1 - beta h)                                  SLiC
    ipo      (h_avg - 1 / (2 tau))^2, tau = beta, each log-ratio of h over its |y|   IPO
    simpo    -log sigma(beta log pi(y_w|x) / |y_w| - beta log pi(y_l|x) / |y_l| - gamma)   SimPO

Each function's docstring gives its paper and where it follows TRL 1.16 instead
(tests/test_loss_preference.py holds each to TRL to 1e-5; docs/preference_losses.md has the
table). The rewards logged (rewards/chosen, rewards/rejected, and the margins and accuracies
made of them) are TRL's: beta * (log pi - log pi_ref) of the summed log-probs for every loss
with a reference, beta * log pi(y|x) / |y| for the reference-free SimPO.

The caller reduces: it divides the sum of the per-pair losses by the pairs of the whole step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from losses.dpo import DPOLossOutput, dpo_loss


@dataclass
class PairLogps:
    """One micro-batch's B pairs, every field (B,): summed completion log-probs under the policy
    and the reference (ref_*: None for a reference-free loss), and the completion token counts
    (long; at least 1 for any real pair)."""
    policy_chosen: torch.Tensor
    policy_rejected: torch.Tensor
    ref_chosen: torch.Tensor | None
    ref_rejected: torch.Tensor | None
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor

    def log_ratios(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) log pi(y_w|x) - log pi_ref(y_w|x) and the same for y_l."""
        return self.policy_chosen - self.ref_chosen, self.policy_rejected - self.ref_rejected


def sigmoid_loss(pairs: PairLogps, beta: float, rpo_alpha: float = 0.0) -> DPOLossOutput:
    """DPO, Rafailov et al. 2023 (arXiv:2305.18290), and its RPO term: losses/dpo.py's dpo_loss."""
    return dpo_loss(pairs.policy_chosen, pairs.policy_rejected, pairs.ref_chosen, pairs.ref_rejected, beta,
                    rpo_alpha, pairs.chosen_tokens)


def cdpo_loss(pairs: PairLogps, beta: float, label_smoothing: float) -> DPOLossOutput:
    """Conservative DPO (Mitchell 2023, "A note on DPO with noisy preferences & relationship to
    IPO"): the preference label is taken as flipped with probability e = label_smoothing, so the
    target is a smoothed label and the loss a binary cross-entropy against it,

        L = (1 - e) * (-log sigma(beta h)) + e * (-log sigma(-beta h)),   0 <= e < 1/2.

    Unlike sigmoid DPO its minimum is finite: the margin stops at beta h = log((1 - e) / e).
    TRL's DPOTrainer applied it as label_smoothing on loss_type="sigmoid" until its 1.x rewrite;
    in 1.16 the same expression is CPOTrainer.cpo_loss's sigmoid branch (what the tests compare
    with, on log-ratios). Not the "robust" loss of Chowdhury et al. 2024, which divides by 1 - 2e
    and subtracts the flipped term. -log sigma(z) is written softplus(-z): finite for any z.
    """
    chosen_ratio, rejected_ratio = pairs.log_ratios()
    z = beta * (chosen_ratio - rejected_ratio)                                    # (B,)
    losses = (1 - label_smoothing) * F.softplus(-z) + label_smoothing * F.softplus(z)
    return DPOLossOutput(losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach())


def hinge_loss(pairs: PairLogps, beta: float) -> DPOLossOutput:
    """The hinge loss of SLiC (Zhao et al. 2023, "SLiC-HF", arXiv:2305.10425), on DPO's log-ratio
    difference as TRL's loss_type="hinge" (and DPO's paper, Appendix) writes it,

        L = max(0, 1 - beta h),

    so 1 / beta is the margin (SLiC's delta): pairs ranked by more than it give no gradient.
    """
    chosen_ratio, rejected_ratio = pairs.log_ratios()
    losses = torch.relu(1 - beta * (chosen_ratio - rejected_ratio))                # (B,)
    return DPOLossOutput(losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach())


def ipo_loss(pairs: PairLogps, beta: float) -> DPOLossOutput:
    """IPO, Azar et al. 2023 ("A General Theoretical Paradigm to Understand Learning from Human
    Preferences", arXiv:2310.12036), eq. 17 as TRL cites it: a squared loss that regresses the log-ratio
    difference onto 1 / (2 tau) instead of pushing it to infinity,

        L = (h_avg - 1 / (2 tau))^2,
        h_avg = (log pi(y_w|x) - log pi_ref(y_w|x)) / |y_w| - (log pi(y_l|x) - log pi_ref(y_l|x)) / |y_l|.

    As in TRL 1.16 (loss_type="ipo"), tau is --beta, and each log-ratio is divided by its
    completion's token count: the paper writes sequence log-probs, TRL normalises per token
    (confirmed with the IPO authors, says its source), so the target 1 / (2 tau) does not scale
    with length. With the default tau = 0.1 the target is 5 nats per token.
    """
    chosen_ratio, rejected_ratio = pairs.log_ratios()
    h = chosen_ratio / pairs.chosen_tokens.clamp(min=1) - rejected_ratio / pairs.rejected_tokens.clamp(min=1)
    losses = (h - 1 / (2 * beta)) ** 2                                             # (B,)
    return DPOLossOutput(losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach())


def simpo_loss(pairs: PairLogps, beta: float, simpo_gamma: float) -> DPOLossOutput:
    """SimPO, Meng et al. 2024 ("SimPO: Simple Preference Optimization with a Reference-Free
    Reward", arXiv:2405.14734): the reward is the policy's length-normalised log-prob,
    with no reference model, and a target margin gamma,

        L = -log sigma(beta / |y_w| * log pi(y_w|x) - beta / |y_l| * log pi(y_l|x) - gamma).

    The paper trains with beta 2.0 to 2.5 and gamma / beta around 0.5 (gamma 1.0 to 1.25); TRL
    1.16's CPOTrainer(loss_type="simpo") is the same with gamma = simpo_gamma (default 0.5), the
    margin itself, not a ratio. Without TRL's default cpo_alpha NLL term (the paper has none).
    Rewards: beta * log pi(y|x) / |y|, as TRL logs them. ref_* are not read.
    """
    chosen = beta * pairs.policy_chosen / pairs.chosen_tokens.clamp(min=1)         # (B,)
    rejected = beta * pairs.policy_rejected / pairs.rejected_tokens.clamp(min=1)
    losses = F.softplus(-(chosen - rejected - simpo_gamma))
    return DPOLossOutput(losses, chosen.detach(), rejected.detach())


@dataclass(frozen=True)
class PreferenceLoss:
    """A --dpo-loss: its function, the hyper-parameters it takes besides beta (config.dpo
    fields, flag dests: any other of them is refused by flag_checks.py), and whether it needs a
    reference model (a reference-free loss loads none and precomputes nothing)."""
    fn: Callable[..., DPOLossOutput]
    params: tuple[str, ...] = ()
    reference_free: bool = False


# --dpo-loss -> its loss; flags.DPO_LOSSES lists the same names, in this order (tested).
PREFERENCE_LOSSES = {
    "sigmoid": PreferenceLoss(sigmoid_loss, ("rpo_alpha",)),
    "ipo": PreferenceLoss(ipo_loss),
    "cdpo": PreferenceLoss(cdpo_loss, ("label_smoothing",)),
    "hinge": PreferenceLoss(hinge_loss),
    "simpo": PreferenceLoss(simpo_loss, ("simpo_gamma",), reference_free=True),
}
# Every loss-specific hyper-parameter, each belonging to one loss.
LOSS_PARAMS = tuple(p for spec in PREFERENCE_LOSSES.values() for p in spec.params)


def preference_loss(pairs: PairLogps, loss: str, beta: float, **params: float) -> DPOLossOutput:
    """PREFERENCE_LOSSES[loss] on the pairs, with its own hyper-parameters (PreferenceLoss.params)
    as keywords; one that belongs to another loss is a TypeError, not ignored."""
    return PREFERENCE_LOSSES[loss].fn(pairs, beta, **params)
