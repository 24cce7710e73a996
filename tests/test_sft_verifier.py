"""--training-type sft_verifier end to end: the bundled problems become verify rows (with a
rule-based step-by-step critique) and generate rows; the two loss terms are logged apart;
the prepared genrm-critiques folder trains too."""
import json

import pytest
import torch

import train
from collate_functions import SFTCollator
from tokenization import tokenize_sft_rows
from conftest import SHARED_DATA, read_scalars
from custom_dataset import CustomDataset, DataError


def test_problems_become_verify_and_generate_rows(tmp_path, tokenizer):
    row = {"question_id": 7, "question": "Tom has 5 apples and eats 2. How many are left?", "answer": 3,
           "correct_solution": "Tom starts with 5 apples. After eating 2 he has 5 - 2 = 3. The answer is 3.",
           "incorrect_solution": "Tom starts with 5 apples. After eating 2 he has 5 - 2 = 4. The answer is 4."}
    path = tmp_path / "problems.jsonl"
    path.write_text(json.dumps(row) + "\n" + json.dumps({**row, "question_id": 8}) + "\n")
    rows = CustomDataset(str(path), "train", "sft_verifier", length=1).rows
    assert [r["task"] for r in rows] == ["verify", "verify", "generate"] and {r["row"] for r in rows} == {0}
    good, bad, generate = rows
    assert good["messages"][0]["content"].endswith("5 - 2 = 3. The answer is 3.\nVerification: Let's verify step by step.")
    assert good["messages"][1]["content"] == ("Step 1: 5 - 2 gives 3; the solution wrote 3. This is correct.\n"
                                              "Verification: Is the answer correct (Yes/No)? Yes")
    assert bad["messages"][1]["content"] == ("Step 1: 5 - 2 gives 3; the solution wrote 4. This is wrong.\n"
                                             "Verification: Is the answer correct (Yes/No)? No")
    assert generate["messages"][1]["content"] == row["correct_solution"]
    tokenized, _ = tokenize_sft_rows(rows, tokenizer, 1024)
    batch = SFTCollator(tokenizer.pad_token_id)(tokenized)
    assert batch.is_generate.tolist() == [False, False, True]
    verify_tokens, generate_tokens = batch.count
    assert generate_tokens == sum(1 for x in tokenized[2]["labels"][1:] if x != -100) and verify_tokens > 0


def test_bad_verifier_rows_name_the_row(tmp_path):
    path = tmp_path / "bad.jsonl"
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "task": "verify"}
    path.write_text(json.dumps({**good, "task": "judge"}) + "\n" + json.dumps(good) + "\n")
    with pytest.raises(DataError, match=r"row 0, field task: expected 'verify' or 'generate'"):
        CustomDataset(str(path), "train", "sft_verifier")
    path.write_text(json.dumps({"question": "q", "correct_solution": "no steps", "incorrect_solution": "x"}) + "\n"
                    + json.dumps(good) + "\n")
    with pytest.raises(DataError, match=r"row 0, field correct_solution: solution: no 'a op b = c' step"):
        CustomDataset(str(path), "train", "sft_verifier")


def test_sft_verifier_run_logs_both_terms_and_learns_to_verify(tmp_path):
    assert train.main(["--training-type", "sft_verifier", "--storage-path", str(tmp_path), "--name", "genrm",
                       "--lr", "1e-3", "--lambda", "0.1", "--train-dataset-length", "300", "--test-dataset-length", "40",
                       "--val-generations", "0", "--num-sanity-val-steps", "0", "--log-every-n-steps", "5",
                       "--verifier-eval-rows", "8", "--verifier-k", "2", "--val-max-new-tokens", "64",
                       "--validate-before-training"]) == 0
    s = read_scalars(tmp_path / "genrm" / "tensorboard")
    # Validation scores the first 8 verify rows (4 correct and 4 incorrect solutions) with 2 rationales each.
    assert [step for step, _ in s["val/verifier_accuracy"]] == [0, 112]
    assert all(-1 <= v <= 1 for _, v in s["val/verifier_score"])
    assert all(v * 8 == round(v * 8) and 0 <= v <= 1 for _, v in s["val/verifier_accuracy"])
    for stage in ("train", "val"):
        for name in ("loss", "loss_verify", "loss_correct"):
            assert f"{stage}/{name}" in s, f"{stage}/{name}"
    (_, verify0), (_, verify1) = s["val/loss_verify"][0], s["val/loss_verify"][-1]
    assert verify1 < 0.5 * verify0
    for (_, loss), (_, v), (_, c) in zip(s["val/loss"], s["val/loss_verify"], s["val/loss_correct"]):
        assert loss == pytest.approx(v + 0.1 * c, rel=1e-5)
    assert s["data/train_rows"][0][1] == 900            # 300 problems -> 2 verify + 1 generate rows each
    ckpt = torch.load(tmp_path / "genrm" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["lambda_"] == 0.1


def test_prepared_genrm_critiques_train(tmp_path):
    from extension import data_preparation
    out = tmp_path / "genrm"
    assert data_preparation.main(["--path", str(SHARED_DATA / "genrm-critiques" / "critiques"),
                                  "--output-dir", str(out)]) == 0
    assert train.main(["--training-type", "sft_verifier", "--dataset-name", str(out), "--storage-path",
                       str(tmp_path), "--name", "real", "--max-steps", "3", "--batch-size", "2",
                       "--train-dataset-length", "40", "--test-dataset-length", "8", "--max-length", "512",
                       "--val-generations", "0", "--num-sanity-val-steps", "0", "--log-every-n-steps", "1",
                       "--validate-before-training"]) == 0
    s = read_scalars(tmp_path / "real" / "tensorboard")
    assert [step for step, _ in s["train/loss"]] == [0, 1, 2] and s["val/loss_verify"][-1][1] > 0


def test_the_verdict_first_critique_style_is_kept_for_comparison_and_an_unknown_style_is_refused():
    from extension.critiques import rule_based_critique
    critique, label = rule_based_critique("He has 5 - 2 = 4, then 4 + 1 = 5. The answer is 5.", "verdict_first")
    assert label == "No" and critique == ("Step 1: 5 - 2 = 4. This is wrong: 5 - 2 = 3.\n"
                                          "Step 2: 4 + 1 = 5. This is correct.\n"
                                          "Verification: Is the answer correct (Yes/No)? No")
    with pytest.raises(ValueError, match="style: expected one of check, verdict_first"):
        rule_based_critique("1 + 1 = 2", "loose")


def test_the_inverse_critique_undoes_each_sum_from_the_written_result():
    from extension.critiques import rule_based_critique
    critique, label = rule_based_critique("He has 5 - 2 = 4, then 4 + 1 = 5, so 5 * 2 = 10. The answer is 10.", "inverse")
    assert label == "No" and critique == ("Step 1: 4 + 2 gives 6; it should give 5. This is wrong.\n"
                                          "Step 2: 5 - 1 gives 4; it should give 4. This is correct.\n"
                                          "Step 3: 5 * 2 gives 10; the solution wrote 10. This is correct.\n"
                                          "Verification: Is the answer correct (Yes/No)? No")
    assert rule_based_critique("3 + 4 = 7, 7 - 5 = 2", "inverse")[1] == "Yes"


def test_checked_line_reads_back_every_step_the_check_and_inverse_critiques_write():
    from extension.critiques import CHECKED_LINE, rule_based_critique
    solution = "25 + 44 = 70. 70 - 44 = 26. The answer is 26."
    assert CHECKED_LINE.findall(rule_based_critique(solution, "check")[0]) == [
        ("25", "+", "44", "69", "70", "wrong"), ("70", "-", "44", "26", "26", "correct")]
    assert CHECKED_LINE.findall(rule_based_critique(solution, "inverse")[0]) == [
        ("70", "-", "44", "26", "25", "wrong"), ("26", "+", "44", "70", "70", "correct")]
