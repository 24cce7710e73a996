"""losses/sft_verifier.py (GenRM eq. 7): hand-worked numbers, parity with two separate SFT
losses, lambda = 0, and the step-wide normalisers."""
import math

import torch

from losses.sft import sft_loss
from losses.sft_verifier import sft_verifier_loss


def test_hand_worked():
    """V = 2, logits all 0, so every supervised token costs log 2. Row 0 (verify) supervises 2
    tokens, row 1 (generate) 1 token: L_verify = 2 log 2 / 2 = log 2, L_correct = log 2 / 1,
    L = log 2 + 0.1 * log 2 = 0.762462."""
    logits = torch.zeros(2, 3, 2)
    labels = torch.tensor([[-100, 0, 1], [-100, -100, 1]])
    out = sft_verifier_loss(logits, labels, torch.tensor([False, True]), lam=0.1)
    assert math.isclose(out.loss.item(), 1.1 * math.log(2), rel_tol=1e-6)
    assert (out.tokens_verify.item(), out.tokens_correct.item()) == (2, 1)
    assert math.isclose(out.nll_verify.item(), 2 * math.log(2), rel_tol=1e-6)
    # Step-wide normalisers (4 verify and 2 generate tokens in the whole step) halve both terms.
    half = sft_verifier_loss(logits, labels, torch.tensor([False, True]), lam=0.1, normalizers=torch.tensor([4, 2]))
    assert math.isclose(half.loss.item(), 0.55 * math.log(2), rel_tol=1e-6)


def test_terms_equal_sft_on_each_subset_and_lambda_zero_keeps_only_verify():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 9, 11, generator=g)
    labels = torch.randint(0, 11, (6, 9), generator=g)
    labels[:, :3] = -100
    labels[2, 5:] = -100
    is_generate = torch.tensor([False, True, False, True, True, False])
    out = sft_verifier_loss(logits, labels, is_generate, lam=0.3)
    verify = sft_loss(logits[~is_generate], labels[~is_generate]).loss
    correct = sft_loss(logits[is_generate], labels[is_generate]).loss
    torch.testing.assert_close(out.loss, verify + 0.3 * correct)
    only_verify = sft_verifier_loss(logits, labels, is_generate, lam=0.0)
    torch.testing.assert_close(only_verify.loss, verify)
    # lambda = 0: the generation rows get no gradient at all.
    leaf = logits.clone().requires_grad_(True)
    sft_verifier_loss(leaf, labels, is_generate, lam=0.0).loss.backward()
    assert leaf.grad[is_generate].abs().sum() == 0 and leaf.grad[~is_generate].abs().sum() > 0


def test_a_batch_without_generation_rows_is_finite():
    logits, labels = torch.zeros(1, 3, 2), torch.tensor([[-100, 0, 1]])
    out = sft_verifier_loss(logits, labels, torch.tensor([False]), lam=0.1)
    assert torch.isfinite(out.loss) and out.tokens_correct.item() == 0
