"""Win rate: the standalone win_rate.py and --calculate-win-rate during training, on a DPO run
that starts from an SFT run folder (--model-name <run>): held-out rewards/accuracies rise;
the correctness judge's win rate against the SFT model starts at exactly 0.5 and is written
per prompt. (It does not rise on this task: offline DPO ranks the pairs but does not make
greedy solutions more often right; see the README's DPO section.)"""
import json
import math

import pytest

import train
import win_rate
from conftest import EMBEDDED_MODEL, read_scalars


def scalars(run_dir):
    return read_scalars(run_dir / "tensorboard")


def test_a_model_against_itself_ties_everywhere(tmp_path, capsys):
    out = tmp_path / "wr.jsonl"
    assert win_rate.main(["--model", str(EMBEDDED_MODEL), "--reference-model", str(EMBEDDED_MODEL),
                          "--judge", "length", "--num-prompts", "6", "--max-new-tokens", "16",
                          "--temperature", "0.8", "--top-p", "0.9", "--output", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["win_rate"] == 0.5 and summary["ties"] == summary["n"] == 6
    assert summary["ci95"] == [0.5, 0.5]            # every prompt a tie: no spread to resample
    records = [json.loads(line) for line in out.read_text().splitlines()]
    # Same seed and settings: sampled replies are identical, so every pair ties.
    assert len(records) == 6 and all(r["policy_reply"] == r["reference_reply"] for r in records)
    assert records[0]["prompt"][-1]["role"] == "user" and "The answer is" in records[0]["reference"]


def test_a_causal_lm_is_refused_as_a_judge(capsys):
    assert win_rate.main(["--model", str(EMBEDDED_MODEL), "--reference-model", str(EMBEDDED_MODEL),
                          "--judge", str(EMBEDDED_MODEL), "--num-prompts", "2"]) == 2
    err = capsys.readouterr().err
    assert "is a generative model; a reward model (a bt run or export) is needed here" in err
    assert len(err.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def sft_then_dpo(tmp_path_factory):
    storage = tmp_path_factory.mktemp("runs")
    assert train.main(["--storage-path", str(storage), "--name", "sft", *SFT_FLAGS]) == 0
    assert train.main(["--training-type", "dpo", "--model-name", str(storage / "sft"), "--storage-path", str(storage),
                       "--name", "dpo", "--calculate-win-rate", "--judge", "correctness", *DPO_FLAGS]) == 0
    return storage / "dpo"


SFT_FLAGS = ["--validate-before-training", "--lr", "1e-3", "--train-dataset-length", "1500", "--test-dataset-length", "64",
             "--val-generations", "0", "--num-sanity-val-steps", "0"]
DPO_FLAGS = ["--validate-before-training", "--beta", "1.0", "--lr", "1e-4", "--train-dataset-length", "512", "--val-generations", "0",
             "--num-sanity-val-steps", "0", "--win-rate-prompts", "64", "--val-max-new-tokens", "80"]


def test_dpo_from_an_sft_run_with_win_rate_against_it(sft_then_dpo):
    s = scalars(sft_then_dpo)
    (step0, start), (_, end) = s["val/win_rate"][0], s["val/win_rate"][-1]
    # Step 0: the policy is the SFT model, greedy replies are identical: every prompt ties.
    assert step0 == 0 and start == 0.5
    assert s["val/rewards/accuracies"][0][1] == 0.0 and s["val/rewards/accuracies"][-1][1] > 0.6
    assert s["val/loss"][0][1] == pytest.approx(math.log(2), abs=1e-6)
    files = sorted(p.name for p in (sft_then_dpo / "win_rate").iterdir())
    assert files[0] == "val-step-0000000.jsonl" and len(files) == 2
    records = [json.loads(line) for line in (sft_then_dpo / "win_rate" / files[-1]).read_text().splitlines()]
    assert [r["index"] for r in records] == list(range(64))
    wins = sum(r["outcome"] == "win" for r in records) + 0.5 * sum(r["outcome"] == "tie" for r in records)
    assert wins / 64 == pytest.approx(end, abs=1e-6)
    assert {r["policy_score"] for r in records} <= {0.0, 1.0}

