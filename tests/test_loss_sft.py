"""losses/sft.py: hand-worked numbers and parity with a naive reference."""
import math

import torch

from losses.sft import sft_loss


def test_hand_worked():
    """B=1, T=3, V=2. labels = [-100, 1, 0]: logits[0] is scored on token 1, logits[1] on
    token 0, logits[2] predicts past the end and is unused.
      logits[0] = [0, 0]      -> p(1) = 1/2 -> nll = ln 2
      logits[1] = [ln 3, 0]   -> p(0) = 3/4 -> nll = ln 4/3
    mean over the 2 supervised tokens = (ln 2 + ln 4/3) / 2 = ln(8/3) / 2 = 0.490415...
    """
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0], [5.0, -5.0]]])
    labels = torch.tensor([[-100, 1, 0]])
    out = sft_loss(logits, labels)
    assert out.num_tokens.item() == 2
    assert abs(out.loss.item() - math.log(8 / 3) / 2) < 1e-6
    assert abs(out.nll_sum.item() - math.log(8 / 3)) < 1e-6
    # An explicit normalizer (the step's token count) replaces the batch's own count.
    assert abs(sft_loss(logits, labels, normalizer=4).loss.item() - math.log(8 / 3) / 4) < 1e-6


def test_no_supervised_token_gives_zero_not_nan():
    logits = torch.randn(2, 4, 5)
    out = sft_loss(logits, torch.full((2, 4), -100))
    assert out.loss.item() == 0.0 and out.num_tokens.item() == 0


def naive_sft_loss(logits, labels):
    total, count = 0.0, 0
    for b in range(logits.shape[0]):
        for t in range(logits.shape[1] - 1):
            target = int(labels[b, t + 1])
            if target == -100:
                continue
            row = logits[b, t].double()
            total += -(row[target] - torch.logsumexp(row, dim=0)).item()
            count += 1
    return total / count, count


def test_parity_with_naive_reference():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=g)
    labels = torch.randint(0, 11, (3, 7), generator=g)
    labels[torch.rand(3, 7, generator=g) < 0.4] = -100
    expected, count = naive_sft_loss(logits, labels)
    out = sft_loss(logits, labels)
    assert out.num_tokens.item() == count
    torch.testing.assert_close(out.loss.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=1e-6)
