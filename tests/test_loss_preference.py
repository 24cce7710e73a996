"""losses/preference.py (--dpo-loss): hand-worked numbers for each loss on two pairs, parity
with TRL 1.16's own loss code to 1e-5 (bench/trl_losses.py runs it), the registry against the
flags, the module's wiring (token counts of both replies, no reference for simpo), and a
one-step run of every loss through train.py."""
import inspect
import math
from dataclasses import fields

import pytest
import torch

import flags
import train
from collate_functions import PreferenceCollator
from config import DPOArgs
from conftest import EMBEDDED_MODEL, read_scalars
from losses.dpo import sequence_logps_from_logits
from losses.labels import IGNORE_INDEX
from losses.preference import LOSS_PARAMS, PREFERENCE_LOSSES, PairLogps, preference_loss


def pairs(pc, pr, rc, rr, nc=(1, 1), nr=(1, 1)) -> PairLogps:
    t = torch.tensor
    return PairLogps(t(pc), t(pr), None if rc is None else t(rc), None if rr is None else t(rr), t(nc), t(nr))


def softplus(x: float) -> float:
    return math.log(1 + math.exp(x))


def test_cdpo_hand_worked():
    """beta = 0.5, e = 0.1; (1 - e) softplus(-z) + e softplus(z) = softplus(-z) + e z, z = beta h.
    Pair 1: policy (-1, -3), reference (-2, -2): ratios +1, -1, h = 2, z = 1:
    L = log(1 + e^-1) + 0.1 = 0.313262 + 0.1 = 0.413262.
    Pair 2: policy (-2, -2), reference (-1, -1): h = 0, z = 0: L = log 2 = 0.693147 (as sigmoid DPO).
    Rewards beta * ratio: (0.5, -0.5) and (-0.5, -0.5)."""
    out = preference_loss(pairs([-1.0, -2.0], [-3.0, -2.0], [-2.0, -1.0], [-2.0, -1.0]), "cdpo", 0.5,
                          label_smoothing=0.1)
    torch.testing.assert_close(out.losses, torch.tensor([softplus(-1) + 0.1, math.log(2)]))
    torch.testing.assert_close(out.chosen_rewards, torch.tensor([0.5, -0.5]))
    torch.testing.assert_close(out.rejected_rewards, torch.tensor([-0.5, -0.5]))
    # Its minimum is at z = log((1 - e) / e) = log 9, where sigmoid DPO would keep pushing.
    z = torch.tensor([math.log(9.0)], requires_grad=True)
    preference_loss(PairLogps(z, torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.ones(1), torch.ones(1)),
                    "cdpo", 1.0, label_smoothing=0.1).losses.sum().backward()
    assert abs(z.grad.item()) < 1e-6


def test_hinge_hand_worked():
    """beta = 0.5, L = max(0, 1 - beta h).
    Pair 1: policy (-3, -2), reference (-2, -2): ratios -1, 0, h = -1: L = 1 + 0.5 = 1.5.
    Pair 2: policy (-1, -5), reference (-2, -2): ratios +1, -3, h = 4: 1 - 2 < 0, L = 0.
    Rewards: (-0.5, 0) and (0.5, -1.5)."""
    out = preference_loss(pairs([-3.0, -1.0], [-2.0, -5.0], [-2.0, -2.0], [-2.0, -2.0]), "hinge", 0.5)
    torch.testing.assert_close(out.losses, torch.tensor([1.5, 0.0]))
    torch.testing.assert_close(out.chosen_rewards, torch.tensor([-0.5, 0.5]))
    torch.testing.assert_close(out.rejected_rewards, torch.tensor([0.0, -1.5]))


def test_ipo_hand_worked():
    """tau = beta = 0.5: the target 1 / (2 tau) = 1; each log-ratio is divided by its reply's tokens.
    Pair 1: chosen -4 vs reference -6 over 2 tokens: +2 / 2 = +1; rejected -9 vs -6 over 3 tokens:
    -3 / 3 = -1; h = 2, L = (2 - 1)^2 = 1.
    Pair 2: chosen -7 vs -8 over 4 tokens: 1 / 4; rejected -5 vs -6 over 2 tokens: 1 / 2;
    h = -0.25, L = (-1.25)^2 = 1.5625 (summed, h would be 0 and L 1: the normalisation counts).
    Rewards are beta * the summed ratios, as TRL logs them: (1, -1.5) and (0.5, 0.5)."""
    out = preference_loss(pairs([-4.0, -7.0], [-9.0, -5.0], [-6.0, -8.0], [-6.0, -6.0], nc=(2, 4), nr=(3, 2)),
                          "ipo", 0.5)
    torch.testing.assert_close(out.losses, torch.tensor([1.0, 1.5625]))
    torch.testing.assert_close(out.chosen_rewards, torch.tensor([1.0, 0.5]))
    torch.testing.assert_close(out.rejected_rewards, torch.tensor([-1.5, 0.5]))


def test_simpo_hand_worked():
    """beta = 2, gamma = 0.5; no reference (ref_* None). Rewards beta * logp / |y|.
    Pair 1: chosen -6 over 3 tokens: 2 * -2 = -4; rejected -12 over 4: 2 * -3 = -6;
    z = -4 + 6 - 0.5 = 1.5, L = log(1 + e^-1.5) = 0.201413.
    Pair 2: chosen -10 over 5: -4; rejected -4 over 2: -4; z = -0.5, L = log(1 + e^0.5) = 0.974077."""
    out = preference_loss(pairs([-6.0, -10.0], [-12.0, -4.0], None, None, nc=(3, 5), nr=(4, 2)), "simpo", 2.0,
                          simpo_gamma=0.5)
    torch.testing.assert_close(out.losses, torch.tensor([softplus(-1.5), softplus(0.5)]))
    torch.testing.assert_close(out.chosen_rewards, torch.tensor([-4.0, -4.0]))
    torch.testing.assert_close(out.rejected_rewards, torch.tensor([-6.0, -4.0]))


def test_sigmoid_is_losses_dpo_with_its_rpo_term():
    from losses.dpo import dpo_loss
    g = torch.Generator().manual_seed(3)
    pc, pr, rc, rr = (torch.randn(6, generator=g) * 5 - 20 for _ in range(4))
    nc, nr = torch.randint(1, 30, (6,), generator=g), torch.randint(1, 30, (6,), generator=g)
    ours = preference_loss(PairLogps(pc, pr, rc, rr, nc, nr), "sigmoid", 0.3, rpo_alpha=0.5)
    torch.testing.assert_close(ours.losses, dpo_loss(pc, pr, rc, rr, 0.3, 0.5, nc).losses)


def test_extreme_log_ratios_stay_finite():
    p = pairs([-1e4, 0.0], [0.0, -1e4], [0.0, 0.0], [0.0, 0.0], nc=(1, 1), nr=(1, 1))
    for name, spec in PREFERENCE_LOSSES.items():
        params = {k: 0.1 for k in spec.params}
        assert torch.isfinite(preference_loss(p, name, 10.0, **params).losses).all(), name


@pytest.mark.parametrize("loss", list(PREFERENCE_LOSSES))
@pytest.mark.parametrize("seed", [0, 1])
def test_parity_with_trl(loss, seed):
    """Our losses and rewards equal TRL 1.16's (its DPOTrainer._compute_loss for sigmoid, hinge, ipo;
    CPOTrainer.cpo_loss for cdpo and simpo, see bench/trl_losses.py) to 1e-5 on 8 pairs."""
    pytest.importorskip("trl", reason="TRL (bench/requirements.txt) is the reference implementation")
    from bench.trl_losses import compare, parity_batch
    result = compare(loss, parity_batch(seed))
    for ours, theirs in zip(result["ours"], result["trl"]):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    assert result["ours"][0].std() > 0.01         # pairs that differ, not one repeated value


def test_registry_matches_the_flags_and_the_config():
    """flags.DPO_LOSSES (torch-free, for --dpo-loss's choices) names the registry's losses in its
    order; each loss's own hyper-parameters are config.dpo fields and its function's keywords."""
    assert tuple(PREFERENCE_LOSSES) == flags.DPO_LOSSES
    dpo_fields = {f.name for f in fields(DPOArgs)}
    assert set(LOSS_PARAMS) <= dpo_fields and len(set(LOSS_PARAMS)) == len(LOSS_PARAMS)
    for name, spec in PREFERENCE_LOSSES.items():
        assert tuple(inspect.signature(spec.fn).parameters) == ("pairs", "beta", *spec.params), name
    assert [n for n, s in PREFERENCE_LOSSES.items() if s.reference_free] == ["simpo"]


def test_a_hyper_parameter_of_another_loss_is_refused_not_ignored():
    p = pairs([-1.0], [-2.0], [-1.0], [-1.0])
    with pytest.raises(TypeError, match="rpo_alpha"):
        preference_loss(p, "ipo", 0.1, rpo_alpha=1.0)
    with pytest.raises(TypeError, match="label_smoothing"):
        preference_loss(p, "simpo", 2.0, simpo_gamma=0.5, label_smoothing=0.1)


def config_for(loss: str, *extra: str):
    config, given = flags.parse_config(["--training-type", "dpo", "--train-dataset-length", "6",
                                        "--dpo-loss", loss, *extra])
    return flags.resolve(config)


@pytest.mark.parametrize("loss, extra", [("ipo", ()), ("simpo", ("--beta", "2.0", "--simpo-gamma", "0.5")),
                                         ("cdpo", ("--label-smoothing", "0.1")), ("hinge", ())])
def test_module_feeds_the_loss_both_replies_token_counts(tokenizer, loss, extra):
    """In the module (packed rows, as by default): the loss equals the pure function on
    sequence log-probs from full logits and token counts from the labels, chosen and rejected;
    simpo reads no reference, so none is loaded (the module's reference list stays empty)."""
    from models import load_causal_lm
    from module import PostTrainingModule
    config = config_for(loss, *extra)
    loaders, _, _, _ = train.build_data(config, tokenizer)
    rows = list(loaders["train"].dataset)
    packed = PreferenceCollator(tokenizer.pad_token_id, pack_capacity=config.data.max_length)(rows)
    padded = PreferenceCollator(tokenizer.pad_token_id)(rows)
    policy = load_causal_lm(str(EMBEDDED_MODEL))
    reference = load_causal_lm(str(EMBEDDED_MODEL))
    with torch.no_grad():                      # move the policy away from the reference
        for p in policy.parameters():
            p.add_(0.01 * torch.randn_like(p))
        module = PostTrainingModule(config, model=policy, reference=None if loss == "simpo" else reference)
        loss_value, sums = module.compute(packed)
        B = padded.count
        logps = sequence_logps_from_logits(policy(input_ids=padded.input_ids,
                                                  attention_mask=padded.attention_mask).logits, padded.labels)
        ref = sequence_logps_from_logits(reference(input_ids=padded.input_ids,
                                                   attention_mask=padded.attention_mask).logits, padded.labels)
        tokens = (padded.labels[:, 1:] != IGNORE_INDEX).sum(dim=-1)
    d = config.dpo
    expected = preference_loss(PairLogps(logps[:B], logps[B:], ref[:B], ref[B:], tokens[:B], tokens[B:]), loss,
                               d.beta, **{p: getattr(d, p) for p in PREFERENCE_LOSSES[loss].params})
    assert packed.input_ids.shape[0] < padded.input_ids.shape[0]          # the rows really were packed
    assert abs(loss_value.item() - expected.losses.mean().item()) < 1e-5
    assert abs(float(sums["rewards/chosen"]) - expected.chosen_rewards.sum().item()) < 1e-4
    assert len(set(tokens.tolist())) > 1                                  # counts that differ
    if loss == "simpo":
        assert module._reference == [] and "kl" not in sums
    else:
        assert "kl" in sums


def test_flags_that_do_not_apply_fail_with_one_sentence():
    from errors import ConfigError
    from flag_checks import validate
    cases = [
        (["--dpo-loss", "ipo"], "--dpo-loss only applies to --training-type dpo"),
        (["--training-type", "bt", "--label-smoothing", "0.1"],
         "--label-smoothing only applies to --training-type dpo"),
        (["--training-type", "dpo", "--label-smoothing", "0.1"], "--label-smoothing only applies to --dpo-loss cdpo "
                                                                 "(this run's is sigmoid)"),
        (["--training-type", "dpo", "--dpo-loss", "ipo", "--simpo-gamma", "1"], "--simpo-gamma only applies to "
                                                                                "--dpo-loss simpo"),
        (["--training-type", "dpo", "--dpo-loss", "hinge", "--rpo-alpha", "1"], "--rpo-alpha only applies to "
                                                                                "--dpo-loss sigmoid"),
        (["--training-type", "dpo", "--dpo-loss", "simpo", "--precompute-ref-log-probs"], "reference-free"),
        (["--training-type", "dpo", "--dpo-loss", "cdpo"], "--dpo-loss cdpo needs --label-smoothing above 0"),
        (["--training-type", "dpo", "--dpo-loss", "cdpo", "--label-smoothing", "0.5"], "must be in [0, 0.5)"),
        (["--training-type", "dpo", "--dpo-loss", "ipo", "--beta", "0"], "--beta must be positive"),
        (["--training-type", "dpo", "--dpo-loss", "simpo", "--simpo-gamma", "-1"],
         "--simpo-gamma must not be negative"),
    ]
    for argv, sentence in cases:
        config, given = flags.parse_config(argv)
        with pytest.raises(ConfigError) as e:
            validate(config, given)
        assert sentence in str(e.value) and len(str(e.value).splitlines()) == 1, (argv, str(e.value))
    for argv in (["--training-type", "dpo", "--dpo-loss", "cdpo", "--label-smoothing", "0.1"],
                 ["--training-type", "dpo", "--dpo-loss", "simpo", "--beta", "2", "--simpo-gamma", "1"],
                 ["--training-type", "dpo", "--rpo-alpha", "1"]):
        validate(*flags.parse_config(argv))


@pytest.mark.parametrize("loss, extra", [("sigmoid", ()), ("ipo", ()), ("cdpo", ("--label-smoothing", "0.1")),
                                         ("hinge", ()), ("simpo", ("--beta", "2.0"))])
def test_every_loss_trains_a_step_through_train_py(tmp_path, caplog, loss, extra):
    """train.py --dpo-loss X: two optimizer steps with finite losses and a validation pass; simpo
    writes no reference log-probs, logs no KL, and says that no reference is loaded."""
    import logging
    caplog.set_level(logging.INFO, logger="train")
    assert train.main(["--training-type", "dpo", "--dpo-loss", loss, *extra, "--storage-path", str(tmp_path),
                       "--name", "run", "--train-dataset-length", "8", "--test-dataset-length", "4",
                       "--batch-size", "4", "--max-steps", "2", "--lr", "1e-3", "--val-generations", "0",
                       "--num-sanity-val-steps", "0", "--log-every-n-steps", "1"]) == 0
    scalars = read_scalars(tmp_path / "run" / "tensorboard")
    losses = [v for _, v in scalars["train/loss"]]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert math.isfinite(scalars["val/loss"][-1][1]) and "train/rewards/margins" in scalars
    no_reference = "is reference-free: no reference model is loaded" in caplog.text
    assert no_reference == (loss == "simpo")
    assert (tmp_path / "run" / "reference_logps").exists() == (loss != "simpo")
    assert ("train/kl" in scalars) == (loss != "simpo")
