"""losses/dpo.py: hand-worked numbers, parity with a naive reference, masking, log 2 at start;
the same two for the RPO (DPO + NLL) term."""
import math

import torch

from losses.dpo import dpo_loss, sequence_logps_from_logits


def test_hand_worked():
    """beta = 0.5. Pair 1: policy (-1, -3), reference (-2, -2): ratios +1 and -1, so
    z = 0.5 * (1 - (-1)) = 1 and loss = -log sigma(1) = log(1 + e^-1) = 0.313262.
    Pair 2: policy (-2, -2), reference (-1, -1): ratios -1, -1, z = 0: loss = log 2."""
    out = dpo_loss(torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -2.0]),
                   torch.tensor([-2.0, -1.0]), torch.tensor([-2.0, -1.0]), beta=0.5)
    torch.testing.assert_close(out.losses, torch.tensor([math.log(1 + math.exp(-1)), math.log(2)]))
    torch.testing.assert_close(out.chosen_rewards, torch.tensor([0.5, -0.5]))
    torch.testing.assert_close(out.rejected_rewards, torch.tensor([-0.5, -0.5]))


def test_parity_with_naive_reference():
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(16, generator=g) * 20 for _ in range(4))
    beta = 2.0
    out = dpo_loss(pc, pr, rc, rr, beta)
    naive = [-math.log(1 / (1 + math.exp(-beta * ((a - c) - (b - d))))) if beta * ((a - c) - (b - d)) > -30
             else -beta * ((a - c) - (b - d)) for a, b, c, d in zip(pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist())]
    torch.testing.assert_close(out.losses.double(), torch.tensor(naive, dtype=torch.float64), rtol=1e-5, atol=1e-5)
    assert torch.isfinite(dpo_loss(torch.tensor([-1e4]), torch.tensor([0.0]), torch.tensor([0.0]),
                                   torch.tensor([0.0]), 10.0).losses).all()


def test_sequence_logps_counts_only_labelled_tokens():
    """T=3, V=2, logits all 0 (p = 1/2): one supervised token -> log 1/2; two -> 2 log 1/2.
    Changing a logit that scores an unsupervised (prompt) position changes nothing."""
    logits = torch.zeros(2, 3, 2)
    labels = torch.tensor([[-100, -100, 1], [-100, 0, 1]])
    torch.testing.assert_close(sequence_logps_from_logits(logits, labels),
                               torch.tensor([-math.log(2), -2 * math.log(2)]))
    prompt_changed = logits.clone()
    prompt_changed[0, 0] = torch.tensor([3.0, -3.0])              # scores label[0, 1] = -100
    torch.testing.assert_close(sequence_logps_from_logits(prompt_changed, labels),
                               sequence_logps_from_logits(logits, labels))
    completion_changed = logits.clone()
    completion_changed[0, 1] = torch.tensor([3.0, -3.0])          # scores label[0, 2] = 1
    assert sequence_logps_from_logits(completion_changed, labels)[0] < -math.log(2) - 1


def test_policy_equal_to_reference_gives_log_2():
    logps = torch.randn(5)
    out = dpo_loss(logps, logps - 1, logps, logps - 1, beta=0.1)
    torch.testing.assert_close(out.losses, torch.full((5,), math.log(2)))


def test_rpo_term_hand_worked():
    """beta = 0.5, alpha = 2. Pair: policy (-6, -8), reference (-6, -6): z = 0.5 * (0 - (-2)) = 1,
    L_DPO = log(1 + e^-1) = 0.313262; the chosen reply has 3 tokens, NLL/|y_w| = 6 / 3 = 2, so
    L = 0.313262 + 2 * 2 = 4.313262. Rewards are the DPO ones, untouched by the NLL term."""
    out = dpo_loss(torch.tensor([-6.0]), torch.tensor([-8.0]), torch.tensor([-6.0]), torch.tensor([-6.0]),
                   beta=0.5, rpo_alpha=2.0, chosen_tokens=torch.tensor([3]))
    torch.testing.assert_close(out.losses, torch.tensor([math.log(1 + math.exp(-1)) + 4.0]))
    torch.testing.assert_close(out.chosen_rewards, torch.tensor([0.0]))
    torch.testing.assert_close(out.rejected_rewards, torch.tensor([-1.0]))


def test_rpo_parity_with_naive_reference():
    g = torch.Generator().manual_seed(1)
    pc, pr, rc, rr = (torch.randn(8, generator=g) * 10 - 20 for _ in range(4))
    tokens = torch.randint(1, 30, (8,), generator=g)
    out = dpo_loss(pc, pr, rc, rr, 0.1, rpo_alpha=0.7, chosen_tokens=tokens)
    naive = [math.log(1 + math.exp(-0.1 * ((a - c) - (b - d)))) + 0.7 * (-a / n)
             for a, b, c, d, n in zip(pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist(), tokens.tolist())]
    torch.testing.assert_close(out.losses.double(), torch.tensor(naive, dtype=torch.float64), rtol=1e-5, atol=1e-5)
    # alpha 0 is plain DPO whatever the token counts
    torch.testing.assert_close(dpo_loss(pc, pr, rc, rr, 0.1, 0.0, tokens).losses, dpo_loss(pc, pr, rc, rr, 0.1).losses)
