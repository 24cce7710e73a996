"""losses/grpo.py: group advantages and the clipped policy-gradient loss with a k3 KL."""
import math

import pytest
import torch

from losses.grpo import group_advantages, grpo_loss


def test_advantages_hand_worked():
    """Seed 003's example: rewards [1, 0, 0, 0] have mean 0.25.
    mean-centred (drgrpo): [0.75, -0.25, -0.25, -0.25].
    leave-one-out (rloo): 1 - 0/3 = 1 and 0 - 1/3 = -1/3 for the others.
    grpo: std with Bessel's correction = sqrt((0.5625 + 3 * 0.0625) / 3) = sqrt(0.25) = 0.5,
          so (R - 0.25) / 0.5 = [1.5, -0.5, -0.5, -0.5] (eps 0 here).
    A group with equal rewards gets 0 everywhere in every form."""
    r = torch.tensor([[1.0, 0.0, 0.0, 0.0], [2.0, 2.0, 2.0, 2.0]])
    torch.testing.assert_close(group_advantages(r, "drgrpo")[0], torch.tensor([0.75, -0.25, -0.25, -0.25]))
    torch.testing.assert_close(group_advantages(r, "rloo")[0], torch.tensor([1.0, -1 / 3, -1 / 3, -1 / 3]))
    torch.testing.assert_close(group_advantages(r, "grpo", eps=0.0)[0], torch.tensor([1.5, -0.5, -0.5, -0.5]))
    for kind in ("grpo", "rloo", "drgrpo"):
        assert group_advantages(r, kind)[1].abs().max() == 0


def test_advantages_match_a_naive_loop():
    g = torch.Generator().manual_seed(0)
    r = torch.rand(5, 6, generator=g)
    for kind in ("grpo", "rloo", "drgrpo"):
        got = group_advantages(r, kind, eps=1e-4)
        for p in range(5):
            row = r[p].tolist()
            mean = sum(row) / 6
            std = math.sqrt(sum((x - mean) ** 2 for x in row) / 5)
            for i, x in enumerate(row):
                others = (sum(row) - x) / 5
                want = {"grpo": (x - mean) / (std + 1e-4), "rloo": x - others, "drgrpo": x - mean}[kind]
                assert got[p, i].item() == pytest.approx(want, abs=1e-6)


def test_rloo_needs_two_completions_and_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="at least 2"):
        group_advantages(torch.ones(3, 1), "rloo")
    with pytest.raises(ValueError, match="unknown advantage"):
        group_advantages(torch.ones(3, 2), "ppo")


def test_loss_hand_worked():
    """One token, A = 2, clip eps 0.2, beta 0.5.
    logp = log 0.6, old = log 0.5: rho = 1.2 (inside [0.8, 1.2] up to rounding) -> -rho * A = -2.4.
    ref = log 0.3: delta = ref - logp = log 0.5; k3 = 0.5 - log 0.5 - 1 = 0.193147...
    loss = -2.4 + 0.5 * 0.193147 = -2.303426.
    With A = 2 and rho = 1.5 the clip binds: -min(3.0, 1.2 * 2) = -2.4, and the token counts as clipped.
    With A = -1 and rho = 1.5 the unclipped term is smaller: -min(-1.5, -1.2) = 1.5, not clipped."""
    mask = torch.ones(1, 1, dtype=torch.bool)
    out = grpo_loss(torch.log(torch.tensor([[0.6]])), torch.log(torch.tensor([[0.5]])), torch.tensor([2.0]), mask,
                    torch.log(torch.tensor([[0.3]])), beta=0.5, clip_eps=0.2)
    assert out.per_token.item() == pytest.approx(-2.4 + 0.5 * (0.5 - math.log(0.5) - 1), abs=1e-5)
    assert out.kl.item() == pytest.approx(0.5 - math.log(0.5) - 1, abs=1e-6)
    high = torch.log(torch.tensor([[1.5]]))
    out = grpo_loss(high, torch.zeros(1, 1), torch.tensor([2.0]), mask, clip_eps=0.2)
    assert out.per_token.item() == pytest.approx(-2.4, abs=1e-6) and out.clipped.item()
    out = grpo_loss(high, torch.zeros(1, 1), torch.tensor([-1.0]), mask, clip_eps=0.2)
    assert out.per_token.item() == pytest.approx(1.5, abs=1e-6) and not out.clipped.item()


def naive_grpo(logps, old, adv, mask, ref, beta, eps):
    out = [[0.0] * len(logps[0]) for _ in logps]
    for n in range(len(logps)):
        for t in range(len(logps[0])):
            if not mask[n][t]:
                continue
            rho = math.exp(logps[n][t] - old[n][t])
            term = min(rho * adv[n], min(max(rho, 1 - eps), 1 + eps) * adv[n])
            d = ref[n][t] - logps[n][t]
            out[n][t] = -term + beta * (math.exp(d) - d - 1)
    return torch.tensor(out)


def test_loss_matches_a_naive_loop():
    g = torch.Generator().manual_seed(1)
    logps = -torch.rand(4, 7, generator=g) * 3
    old = logps + 0.3 * torch.randn(4, 7, generator=g)
    ref = logps + 0.5 * torch.randn(4, 7, generator=g)
    adv = torch.randn(4, generator=g)
    mask = torch.rand(4, 7, generator=g) > 0.3
    got = grpo_loss(logps, old, adv, mask, ref, beta=0.04, clip_eps=0.2).per_token
    torch.testing.assert_close(got, naive_grpo(logps.tolist(), old.tolist(), adv.tolist(), mask.tolist(),
                                               ref.tolist(), 0.04, 0.2))


def test_kl_is_zero_when_policy_is_reference_and_ratio_one_is_plain_reinforce():
    """At rho = 1 the clipped loss equals the unclipped -A * logp in value and gradient: the
    seed's REINFORCE form. k3 KL is 0 (and so is its gradient) when policy == reference."""
    logps = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    mask = torch.tensor([[False, True, True]])         # the first position is a prompt token
    adv = torch.tensor([0.7])
    out = grpo_loss(logps, logps.detach(), adv, mask, logps.detach().clone(), beta=1.0, clip_eps=0.2)
    assert out.kl.abs().max().item() == 0
    out.per_token.sum().backward()
    torch.testing.assert_close(logps.grad, torch.tensor([[0.0, -0.7, -0.7]]))
    assert out.per_token[0, 0].item() == 0 and not out.clipped.any()

