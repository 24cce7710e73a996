"""Verifier scores of a GenRM-CoT model (the seed's eqs. 9-10) and adaptive-compute verification.

    scores = compute_verifier_scores(model, tokenizer, question, solution, k=8)        # eq. 9, K rationales
    score = sum(scores) / len(scores)                                                  # eq. 10
    result = adaptive_verify(lambda n: compute_verifier_scores(..., k=n), k_min=8, k_max=32, step=8, tau=0.05)

Eq. 9: sample a rationale v ~ p(. | x, y, "Let's verify step by step."), append the question
I = "Verification: Is the answer correct (Yes/No)?" and read r = p(Yes) / (p(Yes) + p(No))
from the next-token distribution. The answers are taken as the data writes them (" Yes" /
" No" after the question in a critique; "Yes" / "No" opening the reply in direct mode), and
the two are compared at their first differing token, so a tokenizer that splits " Yes" into
several pieces (the bundled one: " ", "Y", "es") is scored at "Y" against "No". With logits
l_yes and l_no there, r = sigmoid(l_yes - l_no): exact and stable.

Adaptive compute (the seed's modification): sample rationales in rounds (one batched
generation of `step` rationales a round) from K_min up to K_max; after each round stop when
the population variance of the scores so far is below tau. Agreeing rationales stop early;
uncertain ones get more samples.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from tokenization import render
from extension.critiques import QUESTION, direct_prompt, verification_prompt
from generation import generate_completions, generate_replies, progress_bar
from logprobs import last_logits

def _first_difference(tokenizer, text: str, yes: str, no: str) -> tuple[list[int], int, int]:
    """Token ids of `text` up to where its "yes" and "no" continuations part, and the
    diverging token of each."""
    a = tokenizer(text + yes, add_special_tokens=False)["input_ids"]
    b = tokenizer(text + no, add_special_tokens=False)["input_ids"]
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    if n == min(len(a), len(b)):
        raise ValueError(f"the tokenizer cannot tell {yes!r} from {no!r} after this text")
    return a[:n], a[n], b[n]


@torch.no_grad()
def p_yes(model, tokenizer, texts: list[str], yes: str = " Yes", no: str = " No") -> list[float]:
    """r = p(yes) / (p(yes) + p(no)) for the answer that follows each text."""
    parts = [_first_difference(tokenizer, t, yes, no) for t in texts]
    rows = last_logits(model, [ids for ids, _, _ in parts], tokenizer.pad_token_id)   # (N, V)
    device = rows.device
    yes_ids = torch.tensor([y for _, y, _ in parts], device=device)
    no_ids = torch.tensor([n for _, _, n in parts], device=device)
    margin = rows.gather(1, yes_ids[:, None])[:, 0] - rows.gather(1, no_ids[:, None])[:, 0]
    return torch.sigmoid(margin).tolist()


def score_verification(model, tokenizer, prompt: str, k: int = 8, *, temperature: float = 0.7, top_p: float = 0.95,
                       max_new_tokens: int = 256, seed: int | None = None) -> list[float]:
    """Scores of one verify row's user turn: one direct score when it ends with the Yes/No
    question, else eq. 9 for each of k sampled rationales."""
    user = [{"role": "user", "content": prompt}]
    head = render(tokenizer, user, add_generation_prompt=True)
    if prompt.rstrip().endswith(QUESTION):
        return p_yes(model, tokenizer, [head], yes="Yes", no="No")
    rationales = generate_replies(model, tokenizer, [user] * k, max_new_tokens=max_new_tokens, batch_size=k,
                                  temperature=temperature, top_p=top_p, seed=seed)
    return p_yes(model, tokenizer, [asked(head, r) for r in rationales])


def asked(head: str, rationale: str) -> str:
    """The text eq. 9 reads p(Yes) after: the prompt, the rationale and the question. The
    model writes the question itself at the end of its critique: cut there and ask it anew."""
    kept = rationale.split(QUESTION)[0].rstrip()
    return head + (kept + "\n" if kept else "") + QUESTION


def verifier_metrics_sums(model, tokenizer, rows: list[tuple[str, str]], indices, k: int, *,
                          max_new_tokens: int = 256, seed: int = 0) -> list[float]:
    """Sums over the verify rows `rows[i]` for i in `indices` ((user prompt, "Yes"/"No") pairs):
    [score on Yes rows, Yes rows, score on No rows, No rows, rows right], a row's score the
    mean of k eq. 9 scores (eq. 10), rationales sampled with seed + i. Sums, so that workers
    can add theirs before verifier_metrics turns them into means. A progress bar counts the rows."""
    sums = [0.0] * 5
    for i in progress_bar(indices, desc="verifier scoring", unit="row"):
        prompt, label = rows[i]
        scores = score_verification(model, tokenizer, prompt, k, max_new_tokens=max_new_tokens, seed=seed + i)
        score, yes = sum(scores) / len(scores), label == "Yes"
        sums[0 if yes else 2] += score
        sums[1 if yes else 3] += 1
        sums[4] += (score > 0.5) == yes
    return sums


def verifier_metrics(sums: list[float]) -> dict:
    """verifier_score = mean score on rows labelled Yes minus the mean on rows labelled No (the
    seed's "validation verifier score"; 0: it cannot tell them apart, 1: perfect);
    verifier_accuracy = share of rows with (score > 0.5) == (label Yes)."""
    yes_mean, no_mean = sums[0] / max(sums[1], 1), sums[2] / max(sums[3], 1)
    return {"verifier_score": yes_mean - no_mean, "verifier_accuracy": sums[4] / max(sums[1] + sums[3], 1)}


def compute_verifier_scores(model, tokenizer, question: str, solution: str, k: int = 8, mode: str = "cot",
                            **sampling) -> list[float]:
    """K scores of one solution: eq. 9 per sampled rationale ("cot"), or one direct score
    p(Yes) with no rationale ("direct", k ignored). `sampling`: see score_verification."""
    prompt = direct_prompt(question, solution) if mode == "direct" else verification_prompt(question, solution)
    return score_verification(model, tokenizer, prompt, k, **sampling)


def direct_scores(model, tokenizer, items: list[tuple[str, str]], batch_size: int = 16) -> list[float]:
    """Direct-mode p(Yes) of many (question, solution) pairs, batch_size a forward."""
    texts = [render(tokenizer, [{"role": "user", "content": direct_prompt(q, s)}], add_generation_prompt=True)
             for q, s in items]
    return [x for i in range(0, len(texts), batch_size)
            for x in p_yes(model, tokenizer, texts[i:i + batch_size], yes="Yes", no="No")]


def cot_pool(model, tokenizer, items: list[tuple[str, str]], k: int, *, rows: int = 32, temperature: float = 0.7,
             top_p: float = 0.95, max_new_tokens: int = 256, seed: int = 0,
             progress: str | None = None) -> tuple[list[list[float]], list[list[str]]]:
    """k eq. 9 scores of each (question, solution) pair and their rationales, generation batched
    across pairs (about `rows` rationales a generate call: rows // k pairs of k). The first n of a pair's k are n
    independent draws, so one pool serves fixed K = n and adaptive rounds alike (pool_study)."""
    users = [[{"role": "user", "content": verification_prompt(q, s)}] for q, s in items]
    groups = generate_completions(model, tokenizer, users, max_new_tokens=max_new_tokens, batch_size=max(1, rows // k),
                                  temperature=temperature, top_p=top_p, num_return_sequences=k, seed=seed,
                                  progress=progress)
    rationales = [[c.text for c in group] for group in groups]
    texts = [asked(render(tokenizer, u, add_generation_prompt=True), r) for u, rs in zip(users, rationales) for r in rs]
    flat = [x for i in range(0, len(texts), rows) for x in p_yes(model, tokenizer, texts[i:i + rows])]
    return [flat[i * k:(i + 1) * k] for i in range(len(items))], rationales


@dataclass
class AdaptiveResult:
    """score: mean of the K scores (eq. 10); k: rationales sampled; variance: population
    variance of the scores; scores: all of them, in sampling order."""
    score: float
    k: int
    variance: float
    scores: list


def _variance(xs: list[float]) -> float:
    mean = sum(xs) / len(xs)
    return sum((x - mean) ** 2 for x in xs) / len(xs)


def adaptive_verify(sample_scores: Callable[[int], list[float]], k_min: int = 8, k_max: int = 32, step: int = 8,
                    tau: float = 0.05) -> AdaptiveResult:
    """Rounds of `step` scores from k_min up to k_max, stopping once Var(scores) < tau.
    `sample_scores(n)` returns n new scores (one batched generation)."""
    if not 1 <= k_min <= k_max or step < 1:
        raise ValueError(f"need 1 <= k_min <= k_max and step >= 1 (got {k_min}, {k_max}, {step})")
    scores = list(sample_scores(k_min))
    while len(scores) < k_max and _variance(scores) >= tau:
        scores += list(sample_scores(min(step, k_max - len(scores))))
    return AdaptiveResult(sum(scores) / len(scores), len(scores), _variance(scores), scores)


def pool_study(pool: list[list[float]], labels: list[bool], ks: tuple[int, ...], taus: tuple[float, ...], *,
               k_min: int, step: int) -> list[dict]:
    """Fixed K against adaptive compute on a pool of scores (cot_pool): fixed K = n scores each
    solution by its first n; adaptive (adaptive_verify, up to the pool's size) takes rounds from
    the pool in order. One row a method: mean rationales, AUROC, accuracy (score > 0.5) and each
    solution's score."""
    from extension.selection import auroc

    def row(method, results):
        scores = [r.score for r in results]
        return {"method": method, "mean_k": sum(r.k for r in results) / len(results), "auroc": auroc(scores, labels),
                "accuracy": sum((x > 0.5) == y for x, y in zip(scores, labels)) / len(labels), "scores": scores}

    def drawn(scores):
        it = iter(scores)
        return lambda n: [next(it) for _ in range(n)]

    k_max = min(len(p) for p in pool)
    rows = [row(f"fixed K={n}", [adaptive_verify(drawn(p), k_min=n, k_max=n, step=1, tau=-1.0) for p in pool])
            for n in ks if n <= k_max]
    rows += [{**row(f"adaptive tau={tau}", [adaptive_verify(drawn(p), k_min=k_min, k_max=k_max, step=step, tau=tau)
                                            for p in pool]), "tau": tau} for tau in taus]
    return rows

