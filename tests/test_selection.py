"""extension/selection.py: best-of-N, majority vote, random pick and one sample on constructed
candidates, and the AUROC with ties, each against a hand computation."""
import math

import pytest

from extension.selection import auroc, majority_answer, selection_outcomes


def test_auroc_hand_worked_with_ties():
    """Positives 0.9, 0.4; negatives 0.4, 0.1: of the 4 (pos, neg) pairs 0.9 beats both, 0.4
    ties 0.4 (half) and beats 0.1: (1 + 1 + 0.5 + 1) / 4 = 0.875."""
    assert auroc([0.9, 0.4, 0.4, 0.1], [True, True, False, False]) == pytest.approx(0.875)
    assert auroc([0.1, 0.9], [True, False]) == 0.0
    assert auroc([0.5, 0.5, 0.5], [True, False, False]) == 0.5          # every pair a tie
    assert math.isnan(auroc([0.5], [True]))                             # no negatives


def test_majority_answer_skips_missing_answers_and_breaks_ties_by_first_seen():
    assert majority_answer([None, None, 3]) == 3
    assert majority_answer([5, 7, 7, 5]) == 5
    assert majority_answer([1, 2, 2]) == 2
    assert majority_answer([None, None]) is None


def test_selection_outcomes_hand_computed():
    rows = [
        # gold 12; answers 12, 9, 9, 12: two right of four; majority ties 12 vs 9 -> 12 (first seen);
        # the verifier's top score is candidate 1 (answer 9): wrong.
        {"answers": [12, 9, 9, 12], "gold": 12, "scores": [0.2, 0.9, 0.1, 0.3]},
        # gold 7; the first is wrong, the majority (4) is wrong, the verifier picks the lone 7.
        {"answers": [4, 4, 7, None], "gold": 7, "scores": [0.5, 0.4, 0.8, 0.7]},
        # gold 3; no answer read in two; the verifier ties 0.6/0.6 -> the first of them (index 0).
        {"answers": [None, 3, None, 3], "gold": 3, "scores": [0.6, 0.6, 0.1, 0.2]},
    ]
    out = selection_outcomes(rows)
    assert out["first"] == [1.0, 0.0, 0.0]
    assert out["random"] == [0.5, 0.25, 0.5]
    assert out["majority"] == [1.0, 0.0, 1.0]
    assert out["verifier"] == [0.0, 1.0, 0.0]


def test_selection_outcomes_names_the_row_whose_scores_do_not_match():
    with pytest.raises(ValueError, match="row 1: needs one verifier score per candidate answer"):
        selection_outcomes([{"answers": [1], "gold": 1, "scores": [0.5]},
                            {"answers": [1, 2], "gold": 1, "scores": [0.5]}])


def test_auroc_interval_brackets_the_auroc_and_matches_a_hand_bootstrap():
    from extension.selection import auroc_interval
    from win_stats import BOOTSTRAP_RESAMPLES
    scores, labels = [0.9, 0.8, 0.4, 0.7, 0.3, 0.1], [True, True, True, False, False, False]
    low, high = auroc_interval(scores, labels, seed=3)
    # A hand bootstrap: the same draws (positives then negatives, 200 at a time), one at a time.
    import numpy as np
    rng, pos, neg, values = np.random.default_rng(3), [0.9, 0.8, 0.4], [0.7, 0.3, 0.1], []
    for start in range(0, BOOTSTRAP_RESAMPLES, 200):
        n = min(200, BOOTSTRAP_RESAMPLES - start)
        ps, ns = rng.integers(0, 3, (n, 3)), rng.integers(0, 3, (n, 3))
        values += [auroc([pos[i] for i in a] + [neg[j] for j in b], [True] * 3 + [False] * 3) for a, b in zip(ps, ns)]
    assert (low, high) == pytest.approx((np.quantile(values, 0.025), np.quantile(values, 0.975)))
    assert auroc(scores, labels) == pytest.approx(8 / 9) and low <= 8 / 9 <= high and low < high
    # Perfectly separated scores stay at 1 in every draw; one class alone has no interval.
    assert auroc_interval([0.9, 0.8, 0.1], [True, True, False]) == (1.0, 1.0)
    assert all(np.isnan(auroc_interval([0.9, 0.8], [True, True])))


def test_auroc_ratio_interval_matches_a_hand_paired_bootstrap():
    """Two methods scored on the same 3 positives and 3 negatives: each draw resamples the items
    once and scores both on it (the same draws as auroc_interval's), the ratio's percentiles."""
    from extension.selection import auroc_ratio_interval
    from win_stats import BOOTSTRAP_RESAMPLES
    import numpy as np
    labels = [True, True, True, False, False, False]
    a, b = [0.9, 0.8, 0.4, 0.7, 0.3, 0.1], [0.9, 0.2, 0.6, 0.5, 0.3, 0.1]
    low, high = auroc_ratio_interval(a, b, labels, seed=5)
    rng, ratios = np.random.default_rng(5), []
    for start in range(0, BOOTSTRAP_RESAMPLES, 200):
        n = min(200, BOOTSTRAP_RESAMPLES - start)
        ps, ns = rng.integers(0, 3, (n, 3)), rng.integers(0, 3, (n, 3))
        for i, j in zip(ps, ns):
            items = [*i, *(3 + j)]
            ra, rb = (auroc([s[k] for k in items], labels) for s in (a, b))
            if rb > 0:
                ratios.append(ra / rb)
    assert (low, high) == pytest.approx((np.quantile(ratios, 0.025), np.quantile(ratios, 0.975)))
    assert low <= auroc(a, labels) / auroc(b, labels) <= high     # 8/9 against 7/9: 1.143
    # A method against itself is 1 in every draw; one class alone has no interval.
    assert auroc_ratio_interval(a, a, labels) == (1.0, 1.0)
    assert all(np.isnan(auroc_ratio_interval([0.9, 0.8], [0.1, 0.2], [True, True])))
