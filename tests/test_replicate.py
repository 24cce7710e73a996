"""experiments/replicate.py --small: every stage trains and is evaluated with no manual step;
the table has every row and finite metrics, the figures and the stage commands are written,
and a second call reuses the finished stages and prints the same table."""
import json
import math

import pytest

from experiments import replicate


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("replication")
    assert replicate.main(["--small", "--out", str(out)]) == 0
    return out


def test_every_stage_ran_and_every_metric_is_finite(small):
    report = json.loads((small / "results.json").read_text())
    assert report["setting"] == "small"
    assert list(report["commands"]) == ["sft", "sft_lp", "dpo", "grpo", "genrm", "judge"]
    for stage, args in report["commands"].items():
        assert (small / stage / "checkpoints" / "last.ckpt").exists(), stage
        assert args[args.index("--name") + 1] == stage
    results = report["results"]
    assert set(results) == set(replicate.ROWS)
    for row in ("base", "sft", "sft_lp", "dpo", "grpo", "genrm"):
        for column in ("accuracy", "win_vs_base_rm", "win_vs_sft_rm", "win_vs_base_correct", "win_vs_sft_correct",
                       "bleu4", "ppl", "len"):
            value = results[row][column]
            assert math.isfinite(value), (row, column)
        assert 0 <= results[row]["accuracy"] <= 1 and results[row]["ppl"] >= 1
    # A model against itself: every prompt a tie.
    assert results["base"]["win_vs_base_rm"] == results["sft"]["win_vs_sft_correct"] == 0.5
    assert 0 <= results["genrm"]["verifier_acc"] <= 1 and 2 <= results["genrm"]["verifier_k"] <= 4
    best = results["genrm_best_of_n"]
    assert 0 <= best["accuracy"] <= 1 and 0 <= best["single_sample_accuracy"] <= 1
    # The dpo stage starts from sft, genrm from dpo, as in the seed's pipeline.
    dpo, genrm = report["commands"]["dpo"], report["commands"]["genrm"]
    assert dpo[dpo.index("--model-name") + 1] == str(small / "sft")
    assert genrm[genrm.index("--model-name") + 1] == str(small / "dpo")


def test_figures_table_and_commands_are_written(small):
    figures = {stage: sorted(p.name for p in (small / "figures" / stage).glob("*.png"))
               for stage in ("sft", "sft_lp", "dpo", "grpo", "genrm", "judge")}
    assert "train_loss.png" in figures["sft"] and "val_loss.png" in figures["judge"]
    assert {"val_win_rate.png", "rewards_margins.png"} <= set(figures["dpo"])
    assert {"val_win_rate.png", "reward.png"} <= set(figures["grpo"])
    assert "val_verifier_score.png" in figures["genrm"]
    table = (small / "results.md").read_text()
    assert "| model | accuracy | win_vs_base_rm |" in table
    assert all(f"| {row} |" in table for row in replicate.ROWS)
    assert "- grpo: `python train.py --training-type grpo" in table


def test_a_second_call_reuses_the_stages_and_gives_the_same_table(small, capsys):
    before = json.loads((small / "results.json").read_text())
    assert replicate.main(["--small", "--out", str(small)]) == 0
    assert "[sft] reusing the finished run" in capsys.readouterr().out
    after = json.loads((small / "results.json").read_text())
    assert after["results"] == before["results"]
