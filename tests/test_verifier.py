"""extension/verifier.py: p(Yes) is exact for hand-set logits, the adaptive loop stops after
the first round when scores agree and runs to K_max when they disagree, and one end-to-end
scoring with the real model."""
import math
from types import SimpleNamespace

import pytest
import torch

from conftest import EMBEDDED_MODEL
from extension.verifier import adaptive_verify, compute_verifier_scores, p_yes


class FixedLogits(torch.nn.Module):
    """A "model" whose next-token logits are set by hand: `values[token] = logit` everywhere."""

    def __init__(self, vocab: int, values: dict):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.zeros(vocab), requires_grad=False)
        for token, value in values.items():
            self.logits.data[token] = value

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.logits.expand(*input_ids.shape, -1))


def test_p_yes_is_exact_for_hand_set_logits(tokenizer):
    """The bundled tokenizer writes " Yes" as " ", "Y", "es" and " No" as " ", "No": the
    answers part at "Y" vs "No". Logits 2 and -1 there: r = e^2 / (e^2 + e^-1) = sigmoid(3)."""
    y, n = tokenizer.convert_tokens_to_ids("Y"), tokenizer.convert_tokens_to_ids("No")
    model = FixedLogits(len(tokenizer), {y: 2.0, n: -1.0, 5: 7.0})     # token 5's mass must not matter
    text = "Step 1: 2 + 3 = 5. This is correct.\nVerification: Is the answer correct (Yes/No)?"
    assert p_yes(model, tokenizer, [text, text + " "])[0] == pytest.approx(1 / (1 + math.exp(-3)), rel=1e-6)
    assert p_yes(model, tokenizer, [text], yes="Yes", no="No")[0] == pytest.approx(1 / (1 + math.exp(-3)), rel=1e-6)


def test_adaptive_stops_after_one_round_when_scores_agree():
    calls = []

    def agree(n):
        calls.append(n)
        return [0.9] * n
    result = adaptive_verify(agree, k_min=8, k_max=32, step=8, tau=0.05)
    assert calls == [8] and result.k == 8 and result.variance == pytest.approx(0.0, abs=1e-12)
    assert result.score == pytest.approx(0.9)


def test_adaptive_goes_to_k_max_when_scores_disagree():
    calls = []

    def disagree(n):
        calls.append(n)
        return [float(i % 2) for i in range(n)]                        # 0, 1, 0, 1: variance 0.25
    result = adaptive_verify(disagree, k_min=8, k_max=32, step=8, tau=0.05)
    assert calls == [8, 8, 8, 8] and result.k == 32 and result.variance == pytest.approx(0.25)
    assert result.score == pytest.approx(0.5)
    assert adaptive_verify(disagree, k_min=8, k_max=20, step=8).k == 20   # the last round is cut to fit
    with pytest.raises(ValueError):
        adaptive_verify(disagree, k_min=0)


def test_scores_with_the_real_model(tokenizer):
    from models import load_causal_lm
    model = load_causal_lm(str(EMBEDDED_MODEL))
    question, solution = "Tom has 5 apples and eats 2. How many are left?", "5 - 2 = 3. The answer is 3."
    scores = compute_verifier_scores(model, tokenizer, question, solution, k=3, max_new_tokens=24, seed=0)
    assert len(scores) == 3 and all(0.0 < s < 1.0 for s in scores)
    assert scores == compute_verifier_scores(model, tokenizer, question, solution, k=3, max_new_tokens=24, seed=0)
    direct = compute_verifier_scores(model, tokenizer, question, solution, mode="direct")
    assert len(direct) == 1 and 0.0 < direct[0] < 1.0
    result = adaptive_verify(lambda n: compute_verifier_scores(model, tokenizer, question, solution, k=n,
                                                               max_new_tokens=16), k_min=2, k_max=4, step=2, tau=0.0)
    assert result.k == 4 and len(result.scores) == 4


def test_validation_scoring_shows_a_progress_bar(monkeypatch, capsys):
    """The step-0 scoring of --verifier-eval-rows rows (minutes on a 135M model) draws a bar with
    the row count on stderr (rank 0 only); the sums are those of the rows' scores: Yes rows 0.75, No row 0.25
    and 0.75 (wrong side of 0.5), so [0.75, 1, 1.0, 2, 2]. With the bar's 2-second delay set to 0."""
    import generation
    from extension import verifier
    monkeypatch.setattr(generation, "PROGRESS_DELAY_S", 0.0)
    scores = {"a": [0.5, 1.0], "b": [0.25], "c": [0.75]}
    monkeypatch.setattr(verifier, "score_verification", lambda model, tok, prompt, k, **kw: scores[prompt])
    rows = [("a", "Yes"), ("b", "No"), ("c", "No")]
    assert verifier.verifier_metrics_sums(None, None, rows, range(3), k=2) == [0.75, 1, 1.0, 2, 2]
    err = capsys.readouterr().err
    assert "verifier scoring" in err and "/3" in err and "row" in err
    # Other DDP ranks score their share silently: one bar, rank 0's.
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    assert verifier.verifier_metrics_sums(None, None, rows, range(3), k=2) == [0.75, 1, 1.0, 2, 2]
    assert capsys.readouterr().err == ""
