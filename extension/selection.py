"""Choosing one of N sampled solutions, and scoring a verifier: the baselines a verifier must beat.

    acc = selection_outcomes(rows)     # rows: {"answers": [...], "gold": ..., "scores": [...]}
    acc["verifier"], acc["majority"], acc["random"], acc["first"]   # one value per row, 0..1
    auroc(scores, labels)

For a problem with candidates c_1..c_N, their final answers a_i and the gold answer g:
- first:    [a_1 = g], one sample, what the policy gives without selection;
- random:   (1/N) sum_i [a_i = g], the expected accuracy of a uniformly random pick;
- majority: [mode(a) = g], self-consistency (Wang et al., 2023), the mode over the answers
            that could be read (a missing answer never wins), ties to the answer seen first;
- verifier: [a_j = g] for j = argmax_i score_i, ties to the first candidate (best-of-N).

The per-row values are what a bootstrap interval resamples (win_stats.bootstrap_interval).
"""
from __future__ import annotations

from collections import Counter

METHODS = ("first", "random", "majority", "verifier")


def majority_answer(answers: list):
    """The most frequent answer that is not None, ties to the one that appears first; None if none."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    top = max(counts.values())
    return next(a for a in answers if a is not None and counts[a] == top)


def best_index(scores: list[float]) -> int:
    """The best-of-N pick: the highest score, ties to the first candidate."""
    return max(range(len(scores)), key=lambda j: (scores[j], -j))


def selection_outcomes(rows: list[dict]) -> dict[str, list[float]]:
    """{method: one 0..1 value a row} for METHODS; each row holds "answers" (one per candidate,
    None where no answer was found), "gold" and "scores" (the verifier's, one per candidate)."""
    out = {m: [] for m in METHODS}
    for i, row in enumerate(rows):
        answers, scores, gold = row["answers"], row["scores"], row["gold"]
        if not answers or len(answers) != len(scores):
            raise ValueError(f"row {i}: needs one verifier score per candidate answer "
                             f"({len(answers)} answers, {len(scores)} scores).")
        right = [float(a is not None and a == gold) for a in answers]
        pick = best_index(scores)
        majority = majority_answer(answers)
        out["first"].append(right[0])
        out["random"].append(sum(right) / len(right))
        out["majority"].append(float(majority is not None and majority == gold))
        out["verifier"].append(right[pick])
    return out


def auroc(scores: list[float], labels: list[bool]) -> float:
    """Mann-Whitney estimate of P(score of a positive > score of a negative), ties counted half;
    nan without both a positive and a negative."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return float("nan")
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def _bootstrap_aurocs(columns: list[list[float]], labels: list[bool], seed: int):
    """(methods, BOOTSTRAP_RESAMPLES) AUROCs of each column of scores on the same stratified
    bootstrap draws (positives and negatives resampled each on their own, so every draw holds
    both), 200 draws at a time: a (methods, 200, P, N) comparison. None without both classes."""
    import numpy as np

    from win_stats import BOOTSTRAP_RESAMPLES
    scores = np.asarray(columns, dtype=np.float64)                        # (methods, items)
    y = np.asarray(labels, dtype=bool)
    pos, neg = scores[:, y], scores[:, ~y]
    if not pos.shape[1] or not neg.shape[1]:
        return None
    rng = np.random.default_rng(seed)
    values = []
    for start in range(0, BOOTSTRAP_RESAMPLES, 200):
        n = min(200, BOOTSTRAP_RESAMPLES - start)
        p = pos[:, rng.integers(0, pos.shape[1], (n, pos.shape[1]))][..., :, None]    # (methods, n, P, 1)
        q = neg[:, rng.integers(0, neg.shape[1], (n, neg.shape[1]))][..., None, :]    # (methods, n, 1, N)
        values.append(((p > q) + 0.5 * (p == q)).mean(axis=(2, 3)))
    return np.concatenate(values, axis=1)


def _percentiles(values) -> tuple[float, float]:
    import numpy as np

    from win_stats import CONFIDENCE
    tail = (1.0 - CONFIDENCE) / 2
    return float(np.quantile(values, tail)), float(np.quantile(values, 1.0 - tail))


def auroc_interval(scores: list[float], labels: list[bool], *, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap 95% interval of auroc: positives and negatives are resampled each on
    their own (a stratified bootstrap, so every draw holds both), as win_stats resamples a mean;
    (nan, nan) without both a positive and a negative."""
    values = _bootstrap_aurocs([scores], labels, seed)
    return (float("nan"), float("nan")) if values is None else _percentiles(values[0])


def auroc_ratio_interval(scores: list[float], reference: list[float], labels: list[bool], *,
                         seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap 95% interval of auroc(scores) / auroc(reference) on the same items:
    each draw resamples the positives and the negatives (stratified, as auroc_interval) and scores
    both methods on the same draw, so what the two share cancels. A draw whose reference AUROC is
    0 is skipped; (nan, nan) without both a positive and a negative."""
    values = _bootstrap_aurocs([scores, reference], labels, seed)
    if values is None:
        return float("nan"), float("nan")
    kept = values[1] > 0
    return _percentiles(values[0][kept] / values[1][kept])
