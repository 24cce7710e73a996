"""evaluate.py: BLEU and edit distance agree with sacrebleu / rapidfuzz and with hand-worked
numbers; the loss is the token mean over reference tokens (a naive per-row loop agrees, under
padding) and perplexity is exp(loss); the table and the JSON list every model and metric."""
import json
import math
import shutil

import pytest
import torch

import evaluate
import text_metrics
from conftest import EMBEDDED_MODEL

HYPS = ["the cat sat", "a dog barked at the mailman today", "The answer is 7."]
REFS = ["the cat sat on the mat", "the dog barked at the mailman", "The answer is 7."]


def test_bleu_matches_sacrebleu_and_a_hand_worked_value():
    import sacrebleu
    for order in (1, 2, 4):
        direct = sacrebleu.metrics.BLEU(max_ngram_order=order).corpus_score(HYPS, [REFS]).score
        assert text_metrics.bleu(HYPS, REFS, order) == pytest.approx(direct, abs=1e-9)
    assert text_metrics.bleu(HYPS, REFS, 4) == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score, abs=1e-9)
    # "the cat sat" against "the cat sat on the mat": unigram precision 3/3 = 1, brevity
    # penalty exp(1 - 6/3) = e^-1, so BLEU-1 = 100 / e = 36.79.
    assert text_metrics.bleu(["the cat sat"], ["the cat sat on the mat"], 1) == pytest.approx(100 / math.e, abs=1e-6)
    assert text_metrics.bleu(["same words here"], ["same words here"], 2) == pytest.approx(100.0)


def test_edit_distance_matches_rapidfuzz_and_by_hand():
    from rapidfuzz.distance import Levenshtein
    assert text_metrics.edit_distance(HYPS, REFS) == pytest.approx(
        sum(Levenshtein.distance(a, b) for a, b in zip(HYPS, REFS)) / 3)
    # kitten -> sitting: k->s, e->i, +g = 3; flaw -> lawn: -f, +n = 2; mean 2.5.
    assert text_metrics.edit_distance(["kitten", "flaw"], ["sitting", "lawn"]) == 2.5


def test_loss_is_the_token_mean_over_references_and_perplexity_its_exp():
    from losses.labels import IGNORE_INDEX
    from tokenization import tokenize_conversation
    from models import load_trained
    model, tokenizer = load_trained(str(EMBEDDED_MODEL))
    prompts = [[{"role": "user", "content": "What is 2 + 3?"}],
               [{"role": "user", "content": "Tom has 12 apples and eats 5. How many are left?"}],
               [{"role": "user", "content": "Sam has 3."}, {"role": "assistant", "content": "Ok."},
                {"role": "user", "content": "He gets 4 more. How many?"}]]
    refs = ["2 + 3 = 5. The answer is 5.", "12 - 5 = 7. The answer is 7.", "3 + 4 = 7. The answer is 7."]
    # Naive: one row at a time, no padding, sum log p of each supervised token of the reply.
    nll, count = 0.0, 0
    for prompt, ref in zip(prompts, refs):
        ids, labels = tokenize_conversation(tokenizer, prompt + [{"role": "assistant", "content": ref}], 1024,
                                            last_turn_only=True)
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
        for t in range(1, len(ids)):
            if labels[t] != IGNORE_INDEX:
                nll, count = nll - logp[t - 1, labels[t]].item(), count + 1
    # Only the last reply counts (the earlier "Ok." is context), its end-of-turn token included.
    assert count == sum(len(tokenizer(r + "<|im_end|>", add_special_tokens=False)["input_ids"]) for r in refs)
    loss = text_metrics.reference_loss(model, tokenizer, prompts, refs, 1024, batch_size=2)   # padded batches
    assert loss == pytest.approx(nll / count, abs=1e-5)


@pytest.fixture(scope="module")
def verifier_copy(tmp_path_factory):
    """The embedded model with a model card that says sft_verifier, as upload_to_hub.py writes
    for a GenRM run: same weights, so its other metrics must equal the embedded model's."""
    folder = tmp_path_factory.mktemp("models") / "genrm"
    shutil.copytree(EMBEDDED_MODEL, folder)
    (folder / "README.md").write_text("---\nbase_model: embedded/model\ntags: [sft_verifier]\n---\n")
    return folder


def test_report_lists_every_model_and_metric(tmp_path, capsys, verifier_copy):
    out = tmp_path / "eval.json"
    models = [str(EMBEDDED_MODEL), str(verifier_copy)]
    assert evaluate.main(["--models", *models, "--num-prompts", "4", "--max-new-tokens", "16",
                          "--reference-model", str(EMBEDDED_MODEL), "--judge", "correctness",
                          "--verifier-rows", "2", "--verifier-k", "2", "--output", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["model", *evaluate.COLUMNS]
    assert [line.split()[0] for line in lines[1:3]] == models
    assert lines[1].split()[evaluate.COLUMNS.index("verifier") + 1] == "-"      # not a verifier
    report = json.loads(out.read_text())
    assert list(report["metrics"]) == models and report["num_prompts"] == 4 and len(report["references"]) == 4
    plain, genrm = (report["metrics"][m] for m in models)
    for row in (plain, genrm):
        assert set(row) == set(evaluate.COLUMNS)
        assert row["ppl"] == pytest.approx(math.exp(row["loss"]))
        assert row["win_rate"] == 0.5                # greedy replies equal the reference model's: all tie
        assert 0 <= row["bleu1"] <= 100 and row["len"] > 0
        assert row["bleu1"] == pytest.approx(text_metrics.bleu(report["replies"][models[0]], report["references"], 1))
    assert plain["verifier"] is None and -1 <= genrm["verifier"] <= 1
    assert {k: v for k, v in genrm.items() if k != "verifier"} == pytest.approx(
        {k: v for k, v in plain.items() if k != "verifier"})


@pytest.mark.parametrize("argv, expected", [
    (["--dataset-name", "/nonexistent/data.jsonl"], "Data set path /nonexistent/data.jsonl does not exist."),
    (["--judge", "correctness"], "win rate needs both --reference-model and --judge."),
    (["--models", str(EMBEDDED_MODEL)], "--models names a model twice"),
])
def test_bad_input_is_one_sentence(tmp_path, capsys, argv, expected):
    assert evaluate.main(["--models", str(EMBEDDED_MODEL), *argv, "--output", str(tmp_path / "e.json")]) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "e.json").exists()
