"""losses/orpo.py and losses/kto.py: hand-worked numbers on two pairs (four KTO rows), parity with
TRL 1.16's own loss code to 1e-5 (bench/trl_losses.py runs it), and the numerical edges."""
import math

import pytest
import torch

from losses import LOSSES
from losses.kto import kto_loss
from losses.orpo import orpo_loss

LN2, LN3, LN4 = math.log(2), math.log(3), math.log(4)


def test_orpo_hand_worked():
    """lambda = 0.5. log P is the mean token log-prob; log odds = log P - log(1 - P).
    Pair 1: chosen -2 ln 2 over 2 tokens: log P = -ln 2, P = 1/2, odds 1, log odds 0; rejected
    -3 ln 4 over 3 tokens: P = 1/4, odds 1/3, log odds -ln 3. Difference ln 3:
    L_OR = -log sigma(ln 3) = -log(3/4) = ln(4/3) = 0.287682; NLL = ln 2 = 0.693147;
    L = 0.693147 + 0.5 * 0.287682 = 0.836988.
    Pair 2, the replies' P swapped (chosen -4 ln 4 over 4 tokens, rejected -ln 2 over 1):
    difference -ln 3, L_OR = -log sigma(-ln 3) = -log(1/4) = ln 4; NLL = ln 4;
    L = ln 4 + 0.5 ln 4 = 2.079442.
    Rewards lambda * log P: (-0.5 ln 2, -0.5 ln 4) and (-0.5 ln 4, -0.5 ln 2)."""
    t = torch.tensor
    out = orpo_loss(t([-2 * LN2, -4 * LN4]), t([-3 * LN4, -LN2]), t([2, 4]), t([3, 1]), 0.5)
    torch.testing.assert_close(out.odds_ratio, t([math.log(4 / 3), LN4]))
    torch.testing.assert_close(out.nll, t([LN2, LN4]))
    torch.testing.assert_close(out.losses, t([LN2 + 0.5 * math.log(4 / 3), 1.5 * LN4]))
    torch.testing.assert_close(out.log_odds, t([LN3, -LN3]))
    torch.testing.assert_close(out.chosen_rewards, t([-0.5 * LN2, -0.5 * LN4]))
    torch.testing.assert_close(out.rejected_rewards, t([-0.5 * LN4, -0.5 * LN2]))
    assert LOSSES["orpo"] is orpo_loss


def test_orpo_is_finite_and_differentiable_at_the_edges():
    """A reply the policy is certain of (log P = 0) and one it never says (-1e4 a token)."""
    pc = torch.tensor([0.0, -1e4, -1e-9], requires_grad=True)
    pr = torch.tensor([-1e4, 0.0, 0.0], requires_grad=True)
    out = orpo_loss(pc, pr, torch.tensor([3, 3, 1]), torch.tensor([2, 2, 1]), 0.1)
    out.losses.sum().backward()
    assert torch.isfinite(out.losses).all() and torch.isfinite(pc.grad).all() and torch.isfinite(pr.grad).all()
    assert out.odds_ratio[0] < 1e-6 and out.odds_ratio[1] > 100      # right way round at both ends


def test_kto_hand_worked():
    """beta = 0.5, lambda_D = 1, lambda_U = 2. Mismatched log-ratios (1, 3, -1, 1): mean 1, z0 = 1.
    Rows (r = log pi - log pi_ref):
    1 desirable,   r = 1:          1 - sigma(0.5 (1 - 1)) = 1 - 1/2 = 0.5
    2 desirable,   r = 1 + 2 ln 3: 1 - sigma(ln 3) = 1 - 3/4 = 0.25
    3 undesirable, r = 1 - 2 ln 3: 2 (1 - sigma(0.5 (1 - r))) = 2 (1 - sigma(ln 3)) = 0.5
    4 undesirable, r = 1 + 2 ln 3: 2 (1 - sigma(-ln 3)) = 2 * 3/4 = 1.5
    Rewards beta r: 0.5, 0.5 + ln 3, 0.5 - ln 3, 0.5 + ln 3."""
    ref = torch.tensor([-10.0, -20.0, -5.0, -8.0])
    r = torch.tensor([1.0, 1 + 2 * LN3, 1 - 2 * LN3, 1 + 2 * LN3])
    desirable = torch.tensor([True, True, False, False])
    mismatched = torch.tensor([1.0, 3.0, -1.0, 1.0]).mean()
    out = kto_loss(ref + r, ref, desirable, mismatched, 0.5, 1.0, 2.0)
    torch.testing.assert_close(out.losses, torch.tensor([0.5, 0.25, 0.5, 1.5]))
    torch.testing.assert_close(out.rewards, torch.tensor([0.5, 0.5 + LN3, 0.5 - LN3, 0.5 + LN3]))
    assert out.kl.item() == pytest.approx(1.0)
    assert LOSSES["kto"] is kto_loss


def test_kto_reference_point_is_clamped_at_zero_and_not_differentiated():
    """Mismatched mean -1: z0 = max(0, -1) = 0, so a desirable row with r = 0 has loss 1 - 1/2 = 0.5
    (with z0 = -1 it would be 1 - sigma(0.5) = 0.3775). No gradient reaches the mismatched pairs."""
    mismatched = torch.tensor([-1.0], requires_grad=True)
    policy = torch.tensor([-4.0], requires_grad=True)
    out = kto_loss(policy, torch.tensor([-4.0]), torch.tensor([True]), mismatched.mean(), 0.5)
    assert out.kl.item() == 0.0 and out.losses.item() == pytest.approx(0.5)
    out.losses.sum().backward()
    assert mismatched.grad is None and policy.grad.item() == pytest.approx(-0.5 * 0.25)   # -beta sigma (1 - sigma)


@pytest.mark.parametrize("seed", [0, 1])
def test_orpo_parity_with_trl(seed):
    """lambda * L_OR and both rewards equal TRL 1.16's ORPOTrainer.odds_ratio_loss to 1e-5 on 8 pairs."""
    pytest.importorskip("trl", reason="TRL (bench/requirements.txt) is the reference implementation")
    from bench.trl_losses import compare_type
    result = compare_type("orpo", seed)
    for ours, theirs in zip(result["ours"], result["trl"]):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    assert result["ours"][0].std() > 0.01


@pytest.mark.parametrize("seed", [0, 1])
def test_kto_parity_with_trl(seed):
    """The batch loss, kl and mean rewards equal TRL 1.16's KTOTrainer._compute_loss to 1e-5 on 8
    rows, and so does the gradient of the loss with respect to every row's log-prob (to a relative
    1e-4: it is ~3e-3). Seed 0's mismatched pairs give z0 > 0, seed 1's are clamped to 0."""
    pytest.importorskip("trl", reason="TRL (bench/requirements.txt) is the reference implementation")
    from bench.trl_losses import compare_type
    result = compare_type("kto", seed)
    *values, grad = result["ours"]
    *trl_values, trl_grad = result["trl"]
    for ours, theirs in zip(values, trl_values):
        torch.testing.assert_close(ours.reshape(()), theirs.reshape(()).to(ours.dtype), atol=1e-5, rtol=0)
    torch.testing.assert_close(grad, trl_grad, rtol=1e-4, atol=1e-8)
    assert (values[1].item() > 0.5) == (seed == 0)          # the clamp is exercised by seed 1
    assert grad.abs().min() > 1e-4                           # every row has a gradient to compare
