"""TRL 1.16's preference losses evaluated on given per-sequence log-probs, beside ours
(losses/preference.py, losses/orpo.py, losses/kto.py): the parity that tests/test_loss_preference.py
and tests/test_loss_orpo_kto.py assert to 1e-5, and the tables of docs/preference_losses.md.

    python bench/trl_losses.py          # prints the markdown table (TRL from bench/requirements.txt)
    python bench/trl_losses.py --seed 1 # another batch of pairs

TRL's own code runs, not a copy of it. sigmoid, hinge and ipo: DPOTrainer._compute_loss, on a
trainer made with object.__new__ (only the attributes that method reads) and a stand-in model
whose per-token log-probs sum to the given sequence log-probs over a completion mask of the
given token counts; run one pair at a time, since it returns the batch mean. cdpo:
DPOTrainer 1.16 has no label-smoothed sigmoid any more, so CPOTrainer.cpo_loss's sigmoid
branch (the same expression) on the log-ratios. simpo: CPOTrainer.cpo_loss(loss_type="simpo")
on the length-averaged log-probs, as CPOTrainer computes them (average_log_prob=True).
orpo: ORPOTrainer.odds_ratio_loss on the length-averaged log-probs (its NLL term is not compared:
ours is per pair and completion-only by design, docs/preference_losses.md). kto:
KTOTrainer._compute_loss on a stand-in model, as for DPO, with 8 unpaired rows and their 8
mismatched (KL) sequences; it returns the batch mean, so the per-row check is the gradient of
that mean with respect to each row's policy log-prob.
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


def trl_orpo(pc, pr, nc, nr, orpo_lambda: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TRL ORPOTrainer.odds_ratio_loss on (B,) summed log-probs and token counts: (lambda * L_OR,
    chosen rewards, rejected rewards), each (B,). TRL's `losses` is lambda * log sigma(log odds),
    which its loss subtracts, so its negation is our lambda * odds_ratio."""
    from trl.experimental.orpo.orpo_trainer import ORPOTrainer
    trainer = object.__new__(ORPOTrainer)
    trainer.__dict__.update(beta=orpo_lambda, accelerator=CPU)
    losses, chosen, rejected, _, _ = trainer.odds_ratio_loss(pc / nc, pr / nr)
    return -losses, chosen, rejected


def trl_kto(policy: torch.Tensor, ref: torch.Tensor, desirable: torch.Tensor, n: torch.Tensor,
            kl_policy: torch.Tensor, kl_ref: torch.Tensor, kl_n: torch.Tensor, beta: float,
            desirable_weight: float, undesirable_weight: float) -> dict:
    """TRL KTOTrainer._compute_loss (loss_type="kto", reference log-probs precomputed) on B rows:
    policy, ref (B,) summed log-probs of the rows' completions over n tokens; kl_policy, kl_ref
    the same of their mismatched sequences over kl_n tokens. Returns the loss, kl, the mean
    rewards, and d loss / d policy (B,)."""
    from trl.trainer.kto_trainer import KTOTrainer
    policy = policy.detach().clone().requires_grad_(True)
    B, length = len(policy), int(max(n.max(), kl_n.max())) + 1

    def mask_of(counts):
        mask = torch.zeros(B, length, dtype=torch.long)
        for i, k in enumerate(counts.tolist()):
            mask[i, 1:1 + k] = 1
        return mask

    class Model:
        training = True

        def __call__(self, input_ids, labels, **kwargs):
            # Built here, so that TRL's no_grad around the KL pass applies to it as to a real forward.
            kl = bool(input_ids[0, 0] == 1)                       # the KL sequences start with token 1
            sums, counts = (kl_policy, kl_n) if kl else (policy, n)
            mask = (labels[:, 1:] != -100).to(sums.dtype)
            per_token = mask * (sums / counts).unsqueeze(1)
            zeros = torch.zeros_like(per_token)
            return types.SimpleNamespace(log_probs=per_token, entropy=zeros, mean_logits=zeros)

    trainer = object.__new__(KTOTrainer)
    trainer.__dict__.update(
        model=Model(), accelerator=CPU, aux_loss_enabled=False, precompute_ref_logps=True, calculate_KL=True,
        loss_type="kto", beta=beta, desirable_weight=desirable_weight, undesirable_weight=undesirable_weight,
        _total_train_tokens=0, _tp_size=1,
        _metrics={"train": collections.defaultdict(list), "eval": collections.defaultdict(list)})
    inputs = {"input_ids": torch.zeros(B, length, dtype=torch.long), "attention_mask": torch.ones(B, length),
              "completion_mask": mask_of(n), "KL_input_ids": torch.ones(B, length, dtype=torch.long),
              "KL_attention_mask": torch.ones(B, length), "KL_completion_mask": mask_of(kl_n),
              "label": desirable, "ref_logps": ref, "ref_KL_logps": kl_ref}
    loss = trainer._compute_loss(trainer.model, inputs, return_outputs=False)
    loss.backward()
    metrics = trainer._metrics["train"]
    return {"loss": loss.detach(), "kl": torch.tensor(metrics["kl"][0]),
            "rewards/chosen": torch.tensor(metrics["rewards/chosen"][0]),
            "rewards/rejected": torch.tensor(metrics["rewards/rejected"][0]), "grad": policy.grad}


# The batch of the table and of the parity test: 8 pairs of summed log-probs of realistic size.
SETTINGS = {"sigmoid": {"beta": 0.1}, "ipo": {"beta": 0.1}, "cdpo": {"beta": 0.1, "label_smoothing": 0.1},
            "hinge": {"beta": 0.1}, "simpo": {"beta": 2.0, "simpo_gamma": 0.5}}


def parity_batch(seed: int = 0, pairs: int = 8) -> dict:
    g = torch.Generator().manual_seed(seed)
    nc, nr = (torch.randint(3, 60, (pairs,), generator=g) for _ in range(2))
    pc, pr = -nc * (0.5 + torch.rand(pairs, generator=g)), -nr * (0.5 + torch.rand(pairs, generator=g))
    rc, rr = pc + 3 * torch.randn(pairs, generator=g), pr + 3 * torch.randn(pairs, generator=g)
    return {"pc": pc, "pr": pr, "rc": rc, "rr": rr, "nc": nc, "nr": nr}


TYPE_SETTINGS = {"orpo": {"orpo_lambda": 0.1},
                 "kto": {"beta": 0.1, "desirable_weight": 1.0, "undesirable_weight": 1.33}}


def kto_batch(seed: int = 0, rows: int = 8) -> dict:
    """8 unpaired rows, both labels present, and mismatched pairs whose mean log-ratio is above 0
    for seed 0 (z0 > 0) and below for seed 1 (z0 clamped to 0)."""
    g = torch.Generator().manual_seed(100 + seed)
    n, kl_n = torch.randint(3, 60, (rows,), generator=g), torch.randint(3, 60, (rows,), generator=g)
    policy = -n * (0.5 + torch.rand(rows, generator=g))
    kl_policy = -kl_n * (0.5 + torch.rand(rows, generator=g))
    shift = 1.5 if seed % 2 == 0 else -1.5
    return {"policy": policy, "ref": policy + 3 * torch.randn(rows, generator=g),
            "desirable": torch.arange(rows) % 3 != 1, "n": n, "kl_policy": kl_policy,
            "kl_ref": kl_policy - shift + torch.randn(rows, generator=g), "kl_n": kl_n}


def compare_type(training_type: str, seed: int = 0) -> dict:
    """Ours and TRL's values for --training-type orpo (per pair: lambda * L_OR and both rewards)
    or kto (batch loss, kl, mean rewards, and the per-row gradient), and the largest |difference|."""
    hp = TYPE_SETTINGS[training_type]
    if training_type == "orpo":
        from losses.orpo import orpo_loss
        b = parity_batch(seed)
        out = orpo_loss(b["pc"], b["pr"], b["nc"], b["nr"], **hp)
        ours = (hp["orpo_lambda"] * out.odds_ratio, out.chosen_rewards, out.rejected_rewards)
        theirs = trl_orpo(b["pc"], b["pr"], b["nc"], b["nr"], **hp)
        loss = (ours[0].mean(), theirs[0].mean())
    else:
        from losses.kto import kto_loss
        b = kto_batch(seed)
        policy = b["policy"].clone().requires_grad_(True)
        out = kto_loss(policy, b["ref"], b["desirable"], (b["kl_policy"] - b["kl_ref"]).mean(), hp["beta"],
                       hp["desirable_weight"], hp["undesirable_weight"])
        out.losses.mean().backward()
        d = b["desirable"]
        ours = (out.losses.mean().detach(), out.kl, out.rewards[d].mean(), out.rewards[~d].mean(), policy.grad)
        t = trl_kto(b["policy"], b["ref"], b["desirable"], b["n"], b["kl_policy"], b["kl_ref"], b["kl_n"], **hp)
        theirs = (t["loss"], t["kl"], t["rewards/chosen"], t["rewards/rejected"], t["grad"])
        loss = (ours[0], theirs[0])
    return {"ours": ours, "trl": theirs, "loss": tuple(float(x) for x in loss),
            "max_abs_diff": max(float((a - t).abs().max()) for a, t in zip(ours, theirs))}


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


def type_table(seed: int = 0) -> str:
    import trl
    lines = [f"| --training-type | settings | loss, ours | loss, TRL {trl.__version__} | compared | max abs difference |",
             "| --- | --- | --- | --- | --- | --- |"]
    compared = {"orpo": "lambda * L_OR and both rewards, 8 pairs (mean shown)",
                "kto": "batch loss, kl, mean rewards, d loss / d log pi of 8 rows"}
    for name in TYPE_SETTINGS:
        r = compare_type(name, seed)
        settings = ", ".join(f"{k} {v}" for k, v in TYPE_SETTINGS[name].items())
        lines.append(f"| {name} | {settings} | {r['loss'][0]:.6f} | {r['loss'][1]:.6f} | {compared[name]} "
                     f"| {r['max_abs_diff']:.1e} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse
    parser = argparse.ArgumentParser(description="Print the parity table of our --dpo-loss losses against TRL's.")
    parser.add_argument("--seed", type=int, default=0, help="seed of the 8 pairs of log-probs compared")
    seed = parser.parse_args().seed
    print(table(seed))
    print()
    print(type_table(seed))
