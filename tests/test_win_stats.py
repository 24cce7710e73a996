"""Win-rate statistics: the bootstrap interval against a hand-run bootstrap, the
length-controlled rate against the plain one and against a length-driven policy."""
import numpy as np
import pytest

from win_stats import bootstrap_interval, length_controlled_win_rate, outcome_scores


def test_outcome_scores_count_ties_half():
    records = [{"outcome": o} for o in ("win", "tie", "loss", "win")]
    assert outcome_scores(records) == [1.0, 0.5, 0.0, 1.0]


def test_bootstrap_interval_matches_a_hand_run_bootstrap():
    scores = [1.0] * 6 + [0.5] * 2 + [0.0] * 4          # 12 judgments, win rate 7 / 12
    rng = np.random.default_rng(3)
    means = []
    for _ in range(500):                                  # the bootstrap, one resample at a time
        picks = rng.integers(0, len(scores), size=len(scores))
        means.append(sum(scores[i] for i in picks) / len(scores))
    means.sort()
    # numpy's default quantile interpolates linearly between order statistics: 2.5% of 499 gaps.
    low = means[12] + 0.475 * (means[13] - means[12])
    high = means[486] + 0.525 * (means[487] - means[486])
    assert bootstrap_interval(scores, resamples=500, seed=3) == pytest.approx((low, high), abs=1e-12)
    assert low < 7 / 12 < high


def test_bootstrap_interval_of_a_constant_is_that_constant():
    assert bootstrap_interval([1.0] * 10) == (1.0, 1.0)
    with pytest.raises(ValueError, match="at least one value"):
        bootstrap_interval([])


def test_length_controlled_rate_equals_the_plain_rate_at_equal_lengths():
    scores = [1.0, 0.0, 0.5, 1.0, 1.0, 0.0, 0.5]
    lengths = [10, 20, 30, 40, 50, 60, 70]
    assert length_controlled_win_rate(scores, lengths, lengths) == pytest.approx(sum(scores) / len(scores), abs=1e-9)
    assert length_controlled_win_rate([1.0, 1.0], [5, 9], [3, 3]) == 1.0      # all wins: no fit needed


def test_length_controlled_rate_discounts_wins_bought_with_length():
    # The policy wins exactly where its reply is longer and loses where it is shorter.
    diffs = [-30, -20, -10, 10, 20, 30, 40, 50]
    scores = [0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    plain = sum(scores) / len(scores)
    lc = length_controlled_win_rate(scores, [100 + d for d in diffs], [100] * len(diffs))
    assert lc < plain - 0.05
    # Wins where the reply is shorter, at the same mean length difference, are credited more.
    shorter_wins = [1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0]
    assert length_controlled_win_rate(shorter_wins, [100 + d for d in diffs], [100] * len(diffs)) > plain
