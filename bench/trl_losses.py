"""TRL 1.16's preference losses evaluated on given per-sequence log-probs, beside ours
(losses/preference.py): the parity that tests/test_loss_preference.py asserts to 1e-5, and
the table of docs/preference_losses.md.

    python bench/trl_losses.py          # prints the markdown table (TRL from bench/requirements.txt)
    python bench/trl_losses.py --seed 1 # another batch of pairs

TRL's own code runs, not a copy of it. sigmoid, hinge and ipo: DPOTrainer._compute_loss, on a
trainer made with object.__new__ (only the attributes that method reads) and a stand-in model
whose per-token log-probs sum to the given sequence log-probs over a completion mask of the
given token counts; run one pair at a time, since it returns the batch mean. cdpo:
DPOTrainer 1.16 has no label-smoothed sigmoid any more, so CPOTrainer.cpo_loss's sigmoid
branch (the same expression) on the log-ratios. simpo: CPOTrainer.cpo_loss(loss_type="simpo")
on the length-averaged log-probs, as CPOTrainer computes them (average_log_prob=True).
"""
from __future__ import annotations

import collections
import os
import sys
import types

if __package__ in (None, ""):      # run as a script: the repository root on the path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

CPU = types.SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x, gather=lambda x: x)


def _dpo_trainer_one_pair(loss_type: str, logps: torch.Tensor, ref: torch.Tensor, counts: list[int],
                          beta: float) -> tuple[float, float, float]:
    """TRL DPOTrainer._compute_loss on one pair: logps, ref are (2,) [chosen, rejected] summed
    log-probs, counts their completion token counts. Returns (loss, rewards/chosen, rewards/rejected)."""
    from trl.trainer.dpo_trainer import DPOTrainer
    length = max(counts) + 1                          # position 0 is the prompt
    mask = torch.zeros(2, length, dtype=torch.long)
    for i, n in enumerate(counts):
        mask[i, 1:1 + n] = 1
    # (2, length - 1): each completion position holds logp / n, so the row sums to logp.
    per_token = mask[:, 1:].double() * (logps.double() / torch.tensor(counts, dtype=torch.float64)).unsqueeze(1)
    per_token = per_token.to(logps.dtype)

    class Policy:
        training = True

        def __call__(self, **kwargs):
            zeros = torch.zeros(2, length - 1)
            return types.SimpleNamespace(log_probs=per_token, entropy=zeros, mean_logits=zeros,
                                         is_top1=zeros.bool())

    trainer = object.__new__(DPOTrainer)
    trainer.__dict__.update(
        model=Policy(), accelerator=CPU, aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True,
        f_divergence_type="reverse_kl", loss_types=[loss_type], loss_weights=[1.0], beta=beta, label_smoothing=0.0,
        use_weighting=False, _total_train_tokens=0, _tp_size=1,
        _metrics={"train": collections.defaultdict(list), "eval": collections.defaultdict(list)})
    inputs = {"input_ids": torch.zeros(2, length, dtype=torch.long),
              "attention_mask": torch.ones(2, length, dtype=torch.long), "completion_mask": mask, "ref_chosen_logps": ref[:1], "ref_rejected_logps": ref[1:]}
    loss = trainer._compute_loss(trainer.model, inputs, return_outputs=False)
    metrics = trainer._metrics["train"]
    return float(loss), metrics["rewards/chosen"][0], metrics["rewards/rejected"][0]


def _cpo_trainer(loss_type: str, chosen: torch.Tensor, rejected: torch.Tensor, beta: float,
                 label_smoothing: float = 0.0, simpo_gamma: float = 0.0):
    """TRL CPOTrainer.cpo_loss: (losses, chosen_rewards, rejected_rewards), each (B,)."""
    from trl.experimental.cpo.cpo_trainer import CPOTrainer
    trainer = object.__new__(CPOTrainer)
    trainer.__dict__.update(alpha=0.0, accelerator=CPU, loss_type=loss_type, beta=beta,
                            label_smoothing=label_smoothing, simpo_gamma=simpo_gamma)
    return trainer.cpo_loss(chosen, rejected)


def trl_preference_loss(loss: str, pc, pr, rc, rr, nc, nr, beta: float, label_smoothing: float = 0.0,
                        simpo_gamma: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TRL's (losses, chosen_rewards, rejected_rewards), each (B,), for our --dpo-loss `loss`;
    inputs as losses.preference.PairLogps's fields (rc, rr unused for simpo)."""
    if loss in ("sigmoid", "hinge", "ipo"):
        rows = [_dpo_trainer_one_pair(loss, torch.stack([pc[i], pr[i]]), torch.stack([rc[i], rr[i]]),
                                      [int(nc[i]), int(nr[i])], beta) for i in range(len(pc))]
        return tuple(torch.tensor(column, dtype=pc.dtype) for column in zip(*rows))
    if loss == "cdpo":
        return _cpo_trainer("sigmoid", pc - rc, pr - rr, beta, label_smoothing=label_smoothing)
    if loss == "simpo":
        return _cpo_trainer("simpo", pc / nc, pr / nr, beta, simpo_gamma=simpo_gamma)
    raise ValueError(f"no TRL counterpart wired for {loss}")


# The batch of the table and of the parity test: 8 pairs of summed log-probs of realistic size.
SETTINGS = {"sigmoid": {"beta": 0.1}, "ipo": {"beta": 0.1}, "cdpo": {"beta": 0.1, "label_smoothing": 0.1},
            "hinge": {"beta": 0.1}, "simpo": {"beta": 2.0, "simpo_gamma": 0.5}}


def parity_batch(seed: int = 0, pairs: int = 8) -> dict:
    g = torch.Generator().manual_seed(seed)
    nc, nr = (torch.randint(3, 60, (pairs,), generator=g) for _ in range(2))
    pc, pr = -nc * (0.5 + torch.rand(pairs, generator=g)), -nr * (0.5 + torch.rand(pairs, generator=g))
    rc, rr = pc + 3 * torch.randn(pairs, generator=g), pr + 3 * torch.randn(pairs, generator=g)
    return {"pc": pc, "pr": pr, "rc": rc, "rr": rr, "nc": nc, "nr": nr}


def compare(loss: str, batch: dict) -> dict:
    """Ours and TRL's per-pair losses and rewards on `batch`, and the largest |difference|."""
    from losses.preference import PairLogps, preference_loss
    hp = SETTINGS[loss]
    b = batch
    ours = preference_loss(PairLogps(b["pc"], b["pr"], b["rc"], b["rr"], b["nc"], b["nr"]), loss, **hp)
    theirs = trl_preference_loss(loss, b["pc"], b["pr"], b["rc"], b["rr"], b["nc"], b["nr"], **hp)
    ours = (ours.losses, ours.chosen_rewards, ours.rejected_rewards)
    return {"ours": ours, "trl": theirs,
            "max_abs_diff": max(float((a - t).abs().max()) for a, t in zip(ours, theirs))}


def table(seed: int = 0) -> str:
    import trl
    batch = parity_batch(seed)
    lines = [f"| --dpo-loss | settings | mean loss, ours | mean loss, TRL {trl.__version__} | max abs difference "
             "(losses and rewards, 8 pairs) |", "| --- | --- | --- | --- | --- |"]
    for loss in SETTINGS:
        r = compare(loss, batch)
        settings = ", ".join(f"{k} {v}" for k, v in SETTINGS[loss].items())
        lines.append(f"| {loss} | {settings} | {float(r['ours'][0].mean()):.6f} | {float(r['trl'][0].mean()):.6f} "
                     f"| {r['max_abs_diff']:.1e} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse
    parser = argparse.ArgumentParser(description="Print the parity table of our --dpo-loss losses against TRL's.")
    parser.add_argument("--seed", type=int, default=0, help="seed of the 8 pairs of log-probs compared")
    print(table(parser.parse_args().seed))
