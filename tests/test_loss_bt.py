"""losses/bt.py: hand-worked numbers, parity with a naive reference, the centering term."""
import math

import torch

from losses.bt import bt_loss


def test_hand_worked():
    """Pair 1: r_w = 2, r_l = 1: margin 1, loss = -log sigma(1) = log(1 + e^-1) = 0.313262.
    Pair 2: r_w = 0, r_l = 0: margin 0, loss = log 2 = 0.693147.
    Pair 3: r_w = -1, r_l = 1: margin -2, loss = log(1 + e^2) = 2.126928.
    Centering with c = 0.5 adds 0.5 * (r_w + r_l)^2 = 4.5, 0 and 0."""
    chosen, rejected = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([1.0, 0.0, 1.0])
    out = bt_loss(chosen, rejected)
    torch.testing.assert_close(out.losses, torch.tensor([0.313262, 0.693147, 2.126928]), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.margins, torch.tensor([1.0, 0.0, -2.0]))
    centered = bt_loss(chosen, rejected, center_coefficient=0.5)
    torch.testing.assert_close(centered.losses, torch.tensor([4.813262, 0.693147, 2.126928]), atol=1e-6, rtol=0)


def test_parity_with_naive_reference():
    g = torch.Generator().manual_seed(0)
    chosen, rejected = torch.randn(32, generator=g) * 10, torch.randn(32, generator=g) * 10
    c = 0.01
    naive = [math.log1p(math.exp(-(a - b))) if a - b > -30 else -(a - b) for a, b in zip(chosen.tolist(), rejected.tolist())]
    naive = [n + c * (a + b) ** 2 for n, a, b in zip(naive, chosen.tolist(), rejected.tolist())]
    torch.testing.assert_close(bt_loss(chosen, rejected, c).losses.double(), torch.tensor(naive, dtype=torch.float64),
                               rtol=1e-5, atol=1e-5)
    assert torch.isfinite(bt_loss(torch.tensor([-1e4]), torch.tensor([1e4])).losses).all()


def test_gradient_pushes_chosen_up_and_rejected_down():
    chosen, rejected = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    bt_loss(chosen, rejected).losses.sum().backward()
    # d/dr_w softplus(-(r_w - r_l)) = -sigma(0) = -1/2 at equal rewards, +1/2 for r_l.
    assert chosen.grad.item() == -0.5 and rejected.grad.item() == 0.5
