"""losses/length_penalty.py: seed 003's eq. 3 term as a REINFORCE surrogate."""
import pytest
import torch

from losses.length_penalty import length_penalty_surrogate


def test_hand_worked():
    """lambda 0.001; samples of 30, 10 and 25 tokens against references of 20, 20 and 20:
    penalties 0.001 * [10^2, 0, 5^2] = [0.1, 0, 0.025];
    leave-one-out baselines [(0 + 0.025) / 2, (0.1 + 0.025) / 2, (0.1 + 0) / 2] = [0.0125, 0.0625, 0.05];
    so the surrogate's weights on log pi(y_hat) are [0.0875, -0.0625, -0.025]."""
    logps = torch.tensor([-3.0, -2.0, -1.0], requires_grad=True)
    out = length_penalty_surrogate(logps, torch.tensor([30.0, 10.0, 25.0]), torch.tensor([20.0, 20.0, 20.0]), 0.001)
    torch.testing.assert_close(out.penalties, torch.tensor([0.1, 0.0, 0.025]))
    out.surrogate.sum().backward()
    torch.testing.assert_close(logps.grad, torch.tensor([0.0875, -0.0625, -0.025]))
    assert out.surrogate.sum().item() == pytest.approx(0.0875 * -3 + 0.0625 * 2 + 0.025 * 1)


def test_matches_a_naive_loop_and_one_row_has_no_baseline():
    g = torch.Generator().manual_seed(0)
    logps = -torch.rand(6, generator=g) * 10
    sample = torch.randint(1, 60, (6,), generator=g).float()
    ref = torch.randint(1, 60, (6,), generator=g).float()
    out = length_penalty_surrogate(logps, sample, ref, 0.01)
    pen = [0.01 * max(0.0, s - r) ** 2 for s, r in zip(sample.tolist(), ref.tolist())]
    want = [(p - (sum(pen) - p) / 5) * lp for p, lp in zip(pen, logps.tolist())]
    torch.testing.assert_close(out.surrogate, torch.tensor(want))
    one = length_penalty_surrogate(torch.tensor([-2.0]), torch.tensor([12.0]), torch.tensor([10.0]), 0.5)
    assert one.surrogate.item() == pytest.approx(0.5 * 4 * -2.0)
