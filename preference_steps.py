"""The training steps of the preference types beside dpo: orpo (reference-free, on pairs) and kto
(unpaired rows, with a reference). module.py dispatches to them through STEPS; each takes the
LightningModule (its model, config, reference and reductions), one micro-batch and the step's
normaliser, and returns the micro-batch's share of the step's mean loss and additive statistics
(module.metrics divides each by "count", or by its own "_count/<name>" or "_rows/<name>").

    orpo: chosen and rejected in one forward -> summed completion log-probs and token counts ->
          losses/orpo.py (the NLL of the chosen reply and the odds-ratio term of the mean log-probs).
    kto:  the rows' completions in one forward; the mismatched (prompt, other row's completion)
          sequences under no_grad, and both under the reference (module.reference(): a frozen
          copy, or the policy with its LoRA adapters disabled) -> losses/kto.py.
"""
from __future__ import annotations

import torch

from collate_functions import KTOBatch, PreferenceBatch
from logprobs import preference_logps
from losses.labels import IGNORE_INDEX


def _share(losses: torch.Tensor, count: int, normalizer) -> torch.Tensor:
    """The micro-batch's part of the step's mean: its summed losses over the step's rows (pairs)."""
    denom = torch.as_tensor(count if normalizer is None else normalizer, dtype=torch.float32)
    return losses.sum() / denom.clamp(min=1)


def orpo_step(module, batch: PreferenceBatch, normalizer=None) -> tuple[torch.Tensor, dict]:
    logps = preference_logps(module.model, batch)                                    # (2B,) summed
    tokens = batch.per_sequence(batch.labels[:, 1:] != IGNORE_INDEX)                 # (2B,) completion tokens
    B = batch.count
    out = module.loss_fn(logps[:B], logps[B:], tokens[:B], tokens[B:], module.config.orpo.orpo_lambda)
    chosen, rejected = out.chosen_rewards, out.rejected_rewards
    # TRL's ORPO metrics: rewards of lambda * log P (mean token log-prob), nll_loss, log_odds_ratio
    # (log sigma of the log-odds difference, -L_OR) and log_odds_chosen (that difference); logps
    # are summed, as dpo's.
    return _share(out.losses, B, normalizer), {
        "loss": out.losses.detach().sum(), "count": B, "rewards/chosen": chosen.sum(),
        "rewards/rejected": rejected.sum(), "rewards/accuracies": (chosen > rejected).sum(),
        "rewards/margins": (chosen - rejected).sum(), "logps/chosen": logps[:B].detach().sum(),
        "logps/rejected": logps[B:].detach().sum(), "nll_loss": out.nll.detach().sum(),
        "log_odds_ratio": -out.odds_ratio.detach().sum(), "log_odds_chosen": out.log_odds.sum()}


def kto_step(module, batch: KTOBatch, normalizer=None) -> tuple[torch.Tensor, dict]:
    cfg = module.config
    logps = preference_logps(module.model, batch.completions)                       # (B,)
    with torch.no_grad():
        # z0 is a constant of the loss (TRL scores these under no_grad too): no activations kept.
        mismatched = preference_logps(module.model, batch.mismatched)                # (B,)
        with module.reference() as ref:
            ref_logps = preference_logps(ref, batch.completions)
            mismatched = mismatched - preference_logps(ref, batch.mismatched)        # (B,) log-ratios
    B = batch.count
    total = torch.stack([mismatched.sum(), torch.tensor(float(B), device=mismatched.device)])
    if module._trainer is not None:      # the mean over every worker's pairs, as TRL gathers it
        total = module.reduce_sum(total)
    desirable = batch.desirable.to(logps.device)
    out = module.loss_fn(logps, ref_logps, desirable, total[0] / total[1], cfg.dpo.beta,
                         cfg.kto.kto_desirable_weight, cfg.kto.kto_undesirable_weight)
    chosen, rejected = desirable, ~desirable
    # Means over the desirable rows (chosen) and the undesirable (rejected), as TRL logs them.
    return _share(out.losses, B, normalizer), {
        "loss": out.losses.detach().sum(), "count": B, "kl": out.kl, "_count/kl": 1,
        "rewards/chosen": out.rewards[chosen].sum(), "_rows/rewards/chosen": chosen.sum(),
        "rewards/rejected": out.rewards[rejected].sum(), "_rows/rewards/rejected": rejected.sum(),
        "logps/chosen": logps.detach()[chosen].sum(), "_rows/logps/chosen": chosen.sum(),
        "logps/rejected": logps.detach()[rejected].sum(), "_rows/logps/rejected": rejected.sum()}


STEPS = {"orpo": orpo_step, "kto": kto_step}
