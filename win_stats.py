"""Statistics of a head-to-head comparison: per-prompt scores, a bootstrap interval and a
length-controlled win rate.

    s = outcome_scores(records)                 # 1 win, 0.5 tie, 0 loss, one per prompt
    low, high = bootstrap_interval(s)           # 95% percentile interval of the mean
    lc = length_controlled_win_rate(s, policy_lengths, reference_lengths)

Bootstrap (Efron): draw n prompts with replacement B times, take each draw's mean; the
interval is the 2.5th and 97.5th percentile of those means. The draws come from
numpy.random.default_rng(seed), so the interval is reproducible.

Length control, after AlpacaEval's length-controlled win rate (Dubois et al., 2024): fit a
logistic model of the per-prompt score (ties as 0.5, a soft label) on the length difference,

    P(win | d) = sigmoid(a + b * tanh(d / sd(d))),     d = len(policy reply) - len(reference reply)

by maximum likelihood (Newton's method), and report sigmoid(a): the win rate the model
predicts for replies of equal length. A policy that wins only by writing longer replies
gets its win credited to b, not to a. With every d = 0 the length term is zero, the fit is
a = logit(mean score), and the length-controlled rate is the plain rate.
"""
from __future__ import annotations

import math

import numpy as np

SCORES = {"win": 1.0, "tie": 0.5, "loss": 0.0}
CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000


def outcome_scores(records: list[dict]) -> list[float]:
    """judges.judge_pairs records -> 1 for a win, 0.5 for a tie, 0 for a loss."""
    return [SCORES[r["outcome"]] for r in records]


def bootstrap_interval(values: list[float], *, resamples: int = BOOTSTRAP_RESAMPLES, confidence: float = CONFIDENCE,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values`."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("bootstrap_interval needs at least one value")
    draws = np.random.default_rng(seed).integers(0, x.size, size=(resamples, x.size))
    means = x[draws].mean(axis=1)
    tail = (1.0 - confidence) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1.0 - tail))


def length_controlled_win_rate(scores: list[float], policy_lengths: list[float], reference_lengths: list[float],
                               *, iterations: int = 100, ridge: float = 1e-6) -> float:
    """sigmoid(a) of the logistic fit in the module docstring (soft labels, a tiny ridge on b
    so that the fit is defined when every length difference is the same)."""
    y = np.asarray(scores, dtype=np.float64)
    d = np.asarray(policy_lengths, dtype=np.float64) - np.asarray(reference_lengths, dtype=np.float64)
    if not (y.size == d.size and y.size > 0):
        raise ValueError("length_controlled_win_rate needs one score and one length pair per prompt")
    mean = y.mean()
    if mean in (0.0, 1.0):          # all losses or all wins: the logit is infinite, the rate is not
        return float(mean)
    sd = d.std()
    x = np.stack([np.ones_like(d), np.tanh(d / sd) if sd > 0 else np.zeros_like(d)], axis=1)
    w = np.array([math.log(mean / (1 - mean)), 0.0])
    penalty = np.diag([0.0, ridge])
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-x @ w))
        gradient = x.T @ (y - p) - penalty @ w
        hessian = (x * (p * (1 - p))[:, None]).T @ x + penalty
        step = np.linalg.solve(hessian, gradient)
        w += step
        if np.abs(step).max() < 1e-12:
            break
    return float(1.0 / (1.0 + math.exp(-w[0])))
