"""extension/verify.py: adaptive and fixed K, direct mode, best-of-N with a known answer, and
bad input named by row and field (the bundled base model stands in for a trained verifier)."""
import json

from conftest import EMBEDDED_MODEL, write_jsonl
from extension import verify

PAIR = {"question": "Tom has 5 apples and eats 2. How many are left?",
        "solution": "Tom starts with 5 apples. After eating 2 he has 5 - 2 = 3. The answer is 3."}
FAST = ["--model", str(EMBEDDED_MODEL), "--max-new-tokens", "12", "--k-min", "2", "--k-max", "4", "--step", "2"]


def run(capsys, *argv):
    code = verify.main([*FAST, *argv])
    captured = capsys.readouterr()
    return code, captured.out.strip().splitlines()[-1] if captured.out.strip() else "", captured.err


def test_adaptive_fixed_and_direct_scoring(tmp_path, capsys):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [PAIR, {**PAIR, "solution": PAIR["solution"].replace("= 3", "= 4")}])
    for extra, expected_k in ((["--tau", "1.0"], 2),       # any variance is below 1: stop after the first round
                              (["--tau", "0.0"], 4),       # no variance is below 0: go on to --k-max
                              (["--fixed-k", "3"], 3), (["--mode", "direct"], 1)):
        out = tmp_path / "scores.jsonl"
        code, summary, err = run(capsys, "--input", str(pairs), "--output", str(out), *extra)
        assert code == 0, err
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert [r["k"] for r in rows] == [expected_k, expected_k], extra
        assert all(0.0 < r["score"] < 1.0 and r["variance"] >= 0 for r in rows)
        assert rows[0]["solution"] == PAIR["solution"] and json.loads(summary)["mean_k"] == expected_k


def test_best_of_n_picks_the_highest_score_and_reports_accuracy(tmp_path, capsys):
    wrong = PAIR["solution"].replace("= 3. The answer is 3.", "= 4. The answer is 4.")
    rows = [{"question": PAIR["question"], "candidates": [wrong, PAIR["solution"]], "answer": 3}] * 2
    out = tmp_path / "picks.jsonl"
    code, summary, err = run(capsys, "--input", str(write_jsonl(tmp_path / "c.jsonl", rows)), "--output", str(out),
                             "--best-of-n", "--fixed-k", "2")
    assert code == 0, err
    picks = [json.loads(line) for line in out.read_text().splitlines()]
    for p in picks:
        assert p["pick"] == max(range(2), key=lambda j: p["scores"][j]) and p["ks"] == [2, 2]
        assert p["picked_correct"] == (p["pick"] == 1) and p["picked_solution"] == p["candidates"][p["pick"]]
    result = json.loads(summary)
    assert result["random_pick_accuracy"] == 0.5
    assert result["best_of_n_accuracy"] == sum(p["picked_correct"] for p in picks) / 2
    # One vote each for 4 and 3: the tie goes to the answer seen first, the wrong 4, as does the first sample.
    assert result["majority_vote_accuracy"] == 0.0 and result["first_sample_accuracy"] == 0.0


def test_bad_input_is_one_sentence(tmp_path, capsys):
    bad = write_jsonl(tmp_path / "bad.jsonl", [PAIR, {"question": "q", "candidates": []}])
    code, _, err = run(capsys, "--input", str(bad), "--output", str(tmp_path / "x.jsonl"), "--best-of-n")
    assert code == 2 and "row 0, field candidates: expected a non-empty list of strings" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "x.jsonl").exists()
    code, _, err = run(capsys, "--input", str(bad), "--output", str(tmp_path / "x.jsonl"), "--k-min", "5")
    assert code == 2 and "--k-min <= --k-max" in err
